"""What ``Outbox.prepare`` stores for an email: the row's facts as they were dumped before it was made
cheaper, a bounce address that verifies and names the row, a Message-ID of its own."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from daemon.app import build
from daemon.cli import cli as cabinet_cli
from daemon.config import load_config
from daemon.models import OutboxMessage
from daemon.notices import Notice
from daemon.tokens import Purpose
from mailer.content import _tagged, load_content
from mailer.outbox import SQLITE_ROWS
from tests.conftest import FakeClock, write_config

AT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)

# The accept's two emails, then facts of every kind a notice carries, in both languages, with text a
# JSON dump must escape (quotes, backslashes, controls, U+2028) or keep as it is (accents, emoji, "</").
SAMPLES = [
    Notice(template="invitation_accepted", to="julie@roy.example", to_name="Julie Roy", locale="fr",
           timezone="America/Montreal", company_id=7, firm_id=3, audience="company_admin",
           context={"company": "Boulangerie Roy", "accountant_name": "Marc Tremblay", "firm": "Tremblay CPA",
                    "accountant_email": "marc@tremblay.example", "accepted_at": AT,
                    "manage_url": "https://cabinet.example/m/abc.def"}),
    Notice(template="client_added", to="marc@tremblay.example", to_name="Marc Tremblay", locale="en",
           timezone="Europe/Paris", company_id=7, firm_id=3, audience="firm_staff",
           context={"firm": "Tremblay CPA", "roster_url": "https://cabinet.example/", "company": "Boulangerie Roy",
                    "accepted_by": "Marc Tremblay", "accepted_by_email": "marc@tremblay.example", "accepted_at": AT}),
    Notice(template="client_added", to="lea@tremblay.example", to_name="Léa \"l'experte\" Côté \\ 🍞", locale="fr",
           timezone="America/Montreal", company_id=8, firm_id=3, audience="firm_staff", auto_submitted=False,
           context={"firm": "Tremblay CPA", "roster_url": "https://cabinet.example/", "company": "Café\u2028Crème </script>",
                    "accepted_by": "Zoé\tN\x7f", "accepted_by_email": "zoe@cafe.example", "accepted_at": AT,
                    "trial_ends": date(2026, 4, 1), "fee": Decimal("49.90"), "products": {"paie", "tenue"},
                    "count": 3, "ratio": 0.25, "none": None, "items": [1, "deux", AT + timedelta(days=1)]}),
    Notice(template="invitation", to="a@b.example", to_name="a@b.example", locale="en", timezone="UTC",
           invitation_id=11, company_id=9, context={"company": "Ω Holdings", "accept_url": "https://x/a",
                                                    "expires_at": AT, "firm": "Tremblay CPA"}),
]


def _before(notice: Notice, now: datetime) -> str:
    """The content column as ``Outbox.prepare`` dumped it before it kept one encoder (``json.dumps``)."""
    content = {
        "template": notice.template, "locale": notice.locale, "timezone": notice.timezone,
        "to_name": notice.to_name, "auto_submitted": notice.auto_submitted, "now": now, "context": notice.context,
    }
    return json.dumps(content, default=_tagged, ensure_ascii=False, separators=(",", ":"))


@pytest.fixture
def cabinet(tmp_path: Path) -> Any:
    env = write_config(tmp_path)
    result = CliRunner().invoke(cabinet_cli, ["--config", str(env.config_path), "init"])
    assert result.exit_code == 0, result.output
    built = build(load_config(env.config_path), clock=FakeClock())
    yield built
    built.close()


def test_prepared_rows_are_what_they_were_before(cabinet: Any) -> None:
    rows = [cabinet.outbox.prepare(notice) for notice in SAMPLES]
    for notice, row in zip(SAMPLES, rows):
        assert row["content"] == _before(notice, row["created_at"])
        assert load_content(row["content"])["context"] == {
            key: sorted(value) if isinstance(value, set) else value for key, value in notice.context.items()}
        assert (row["kind"], row["recipient"], row["state"], row["attempts"], row["raw"]) == (
            notice.template, notice.to, "pending", 0, None)
        assert row["created_at"] == row["queued_at"] == row["next_attempt_at"]
        assert (row["invitation_id"], row["company_id"], row["firm_id"], row["audience"]) == (
            notice.invitation_id, notice.company_id, notice.firm_id, notice.audience)
        assert "\n" not in row["subject"] and row["subject"].strip() == row["subject"] != ""
        # VERP: the bounce address is ours and names this very row.
        local, _, domain = row["envelope_from"].partition("@")
        assert domain == "cabinet.example" and local.startswith("bounce+")
        assert cabinet.signer.verify_address(Purpose.BOUNCE, local.removeprefix("bounce+")) == row["ref"]
        assert row["message_id"].startswith("<") and row["message_id"].endswith("@cabinet.example>")
    # Each email its own reference and Message-ID, fixed here, at queue time.
    again = [cabinet.outbox.prepare(notice) for notice in SAMPLES]
    assert len({row["ref"] for row in rows + again}) == len({row["message_id"] for row in rows + again}) == 8
    assert [row["subject"] for row in again] == [row["subject"] for row in rows]


def test_a_fact_that_cannot_be_stored_fails_the_prepare(cabinet: Any) -> None:
    notice = SAMPLES[1]
    bad = Notice(template=notice.template, to=notice.to, to_name=notice.to_name, locale="en", timezone="UTC",
                 context={**notice.context, "blob": object()})
    with pytest.raises(TypeError, match="cannot be queued"):
        cabinet.outbox.prepare(bad)


def test_a_fact_that_holds_itself_fails_the_prepare_as_json_dumps_does(cabinet: Any) -> None:
    notice = SAMPLES[1]
    looped: list[Any] = [1]
    looped.append(looped)
    bad = Notice(template=notice.template, to=notice.to, to_name=notice.to_name, locale="en", timezone="UTC",
                 context={**notice.context, "looped": looped})
    with pytest.raises(ValueError, match="Circular reference detected"):
        _before(bad, AT)
    with pytest.raises(ValueError, match="Circular reference detected"):
        cabinet.outbox.prepare(bad)
    # The next email after the refused one dumps as before (nothing of the failed dump is kept).
    assert load_content(cabinet.outbox.prepare(notice)["content"])["context"]["company"] == "Boulangerie Roy"


@pytest.mark.parametrize("count", [1, 2, SQLITE_ROWS, SQLITE_ROWS + 1, 2 * SQLITE_ROWS + 5])
def test_queued_prepared_rows_are_all_written_in_order_whatever_their_number(cabinet: Any, count: int) -> None:
    """``queue_prepared`` writes SQLite's rows in multi-row INSERTs of ``SQLITE_ROWS`` at most (a statement's
    binds are limited): every row, each as prepared, whatever their number; none for none."""
    # Nothing to refer to in a new database: the notices without their invitation, company and firm.
    unattached = [dataclasses.replace(notice, invitation_id=None, company_id=None, firm_id=None) for notice in SAMPLES]
    rows = [cabinet.outbox.prepare(unattached[n % len(unattached)]) for n in range(count)]
    columns = ["message_id", "ref", "kind", "recipient", "subject", "content", "state", "company_id", "audience"]
    with cabinet.engine.begin() as connection:
        cabinet.outbox.queue_prepared(connection, [])
        cabinet.outbox.queue_prepared(connection, rows)
        written = connection.execute(
            select(*(OutboxMessage.__table__.c[name] for name in columns), OutboxMessage.created_at)
            .order_by(OutboxMessage.id)).all()
    assert [tuple(row) for row in written] == [(*(r[name] for name in columns), r["created_at"]) for r in rows]
