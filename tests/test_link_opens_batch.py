"""First openings written together (``LinkOpens.note`` / ``record_openings``): each still recorded once
on SQLite however many arrive at once, one that cannot be written fails alone, and a page whose opening
could not be noted is still shown (the failure logged)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from daemon.app import Cabinet
from daemon.link_opens import Opening, invitation_detail
from tests.conftest import Cli, Env, RunningServer, Seed, invitation_token, sent_invitation




def _opened(env: Env) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in env.sql(
        "SELECT actor, detail FROM events WHERE kind = 'link.opened' AND channel = 'link' ORDER BY id")]


def _ddl(env: Env, *statements: str) -> None:
    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def test_a_batch_records_each_first_opening_once_and_a_bad_one_fails_alone(
    cli: Cli, seed: Seed, env: Env, cabinet: Cabinet
) -> None:
    first = sent_invitation(cli, seed, env)
    company_id, firm_id = env.sql("SELECT company_id, firm_id FROM invitations WHERE id = :id", id=first)[0]
    opening = Opening(seed.accountant, firm_id, company_id, invitation_detail(first))
    other = Opening("someone@else.example", firm_id, company_id, {"purpose": "manage", "ref": company_id})
    # A company deleted since the page's read: the row's foreign key refuses it.
    gone = Opening("gone@else.example", None, 10**9, invitation_detail(10**9))
    outcomes = cabinet.link_opens.record_openings([opening, opening, gone, other, opening])
    assert [outcome is None for outcome in outcomes] == [True, True, False, True, True]
    assert isinstance(outcomes[2], IntegrityError)
    # The same link twice in one batch, and again in the next: one row.
    assert [actor for actor, _ in _opened(env)] == [seed.accountant, "someone@else.example"]
    assert cabinet.link_opens.record_openings([opening, other]) == [None, None]
    assert len(_opened(env)) == 2
    with pytest.raises(IntegrityError):  # one opening alone: its own error
        cabinet.link_opens.record_openings([gone])


def test_first_openings_at_once_leave_one_row_per_link(
    server: RunningServer, cli: Cli, seed: Seed, env: Env
) -> None:
    links = []
    for _ in range(2):  # the second invitation replaces the first, whose link still shows a page
        invitation_id = sent_invitation(cli, seed, env)
        links.append(f"/invitations/{invitation_token(server.cabinet, invitation_id)}")
    with httpx.Client(base_url=env.base_url, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda path: client.get(path).status_code, links * 16))
    assert statuses == [200] * 32
    recorded = _opened(env)
    if env.is_sqlite:  # the check is made again under the single writer: one row each
        assert len(recorded) == 2
    else:  # two first openings at the same instant may both be kept (daemon.link_opens)
        assert 2 <= len(recorded) <= 32
    assert {detail for _, detail in recorded} == {
        f'{{"invitation_id": {n}, "purpose": "invitation", "ref": {n}}}'
        for n in (row[0] for row in env.sql("SELECT id FROM invitations"))
    }


def test_a_page_whose_opening_cannot_be_noted_is_still_shown(
    server: RunningServer, cli: Cli, seed: Seed, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    invitation_id = sent_invitation(cli, seed, env)
    link = f"/invitations/{invitation_token(server.cabinet, invitation_id)}"
    if env.is_sqlite:
        _ddl(env, "CREATE TRIGGER refuse_openings BEFORE INSERT ON events WHEN NEW.kind = 'link.opened' "
                  "BEGIN SELECT RAISE(ABORT, 'openings refused'); END")
    else:
        _ddl(env, "CREATE FUNCTION refuse_openings() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.kind = 'link.opened' THEN RAISE EXCEPTION 'openings refused'; END IF; RETURN NEW; END $$",
             "CREATE TRIGGER refuse_openings BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_openings()")
    with caplog.at_level(logging.WARNING), httpx.Client(base_url=env.base_url, timeout=60) as client:
        page = client.get(link)
        assert page.status_code == 200 and seed.company in page.text
        assert any("could not record a link opening" in record.getMessage() for record in caplog.records)
        assert _opened(env) == []
        _ddl(env, "DROP TRIGGER refuse_openings" + ("" if env.is_sqlite else " ON events"))
        assert client.get(link).status_code == 200
        assert [actor for actor, _ in _opened(env)] == [seed.accountant]  # written before the page was answered
