"""The link page's view and row typing take short cuts (daemon.views.InvitationView.of_link,
daemon.prepared._sqlite_utc): each gives exactly what the long way gives."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import processors

from daemon.app import build
from daemon.config import load_config
from daemon.errors import LinkTampered
from daemon.models import UTCDateTime
from daemon.prepared import _sqlite_utc
from daemon.tokens import Purpose
from daemon.views import InvitationView
from tests.conftest import Cli, Env, Seed

NOW = datetime(2026, 12, 1, 0, 59, 34, 917534, tzinfo=timezone.utc)


@pytest.mark.parametrize("decided", [None, NOW + timedelta(days=1)])
def test_of_link_is_the_dataclasss_own_instance(decided: datetime | None) -> None:
    values = dict(
        id=7, company="Érablière Roy", email="a@b.example", invited_by="c@d.example", state="pending",
        status="expired", created_at=NOW, expires_at=NOW + timedelta(days=30), decided_at=decided, firm=None,
        accepted_by=None, accepted_by_email=None, renewal_requested_at=NOW, invited_timezone="Europe/Paris",
        invited_by_name="Julie Roy",
    )
    ours, theirs = InvitationView.of_link(**values), InvitationView(**values)
    assert type(ours) is InvitationView
    assert ours == theirs and hash(ours) == hash(theirs)
    assert vars(ours) == vars(theirs)  # every field, the defaulted ones (url, delivery) too
    assert [getattr(ours, f.name) for f in fields(InvitationView)] == [getattr(theirs, f.name) for f in fields(InvitationView)]
    assert ours != InvitationView(**{**values, "status": "pending"})
    with pytest.raises(AttributeError):
        ours.status = "accepted"  # type: ignore[misc]  # still frozen


@pytest.mark.parametrize("text", [
    "2026-12-01 00:59:34.917534",
    "2026-12-01 00:59:34",
    "2026-02-28 23:00:00.000001",
    "2026-12-01T00:59:34",
    "2026-12-01 02:59:34.5+02:00",  # a text carrying its own offset: the long way
    "2026-12-01 00:59:34Z",
    "2026-12-01",
])
def test_sqlite_utc_reads_as_the_column_type_does(text: str) -> None:
    dialect = sqlite.dialect()
    expected = UTCDateTime().process_result_value(processors.str_to_datetime(text), dialect)
    got = _sqlite_utc(text)
    assert got == expected and got.tzinfo == timezone.utc and got.utcoffset() == timedelta(0)
    assert (got.year, got.hour, got.microsecond) == (expected.year, expected.hour, expected.microsecond)


def test_sqlite_utc_refuses_what_the_column_type_refuses() -> None:
    with pytest.raises(ValueError):
        processors.str_to_datetime("not a date")
    with pytest.raises(ValueError):
        _sqlite_utc("not a date")


@pytest.mark.parametrize("dialect_name", ["sqlite", "postgresql"])
def test_binds_reach_the_driver_as_the_processing_way_gives_them(dialect_name: str) -> None:
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, bindparam, literal, select
    from sqlalchemy.dialects import postgresql

    from daemon.prepared import Compiled

    dialect = sqlite.dialect() if dialect_name == "sqlite" else postgresql.psycopg.dialect()
    table = Table("t", MetaData(), Column("id", Integer), Column("kind", String), Column("at", DateTime))
    one = select(table.c.id).where(table.c.id == bindparam("id"))
    two = select(table.c.id, literal("k").label("fixed")).where(table.c.kind == bindparam("kind"), table.c.id == bindparam("id"))
    processed = select(table.c.id).where(table.c.at == bindparam("at", type_=UTCDateTime()), table.c.id == bindparam("id"))
    for statement, binds in [(one, {"id": 5}), (two, {"id": 5, "kind": "x"}), (processed, {"id": 5, "at": NOW})]:
        compiled = Compiled(statement.compile(dialect=dialect), dialect, list(statement.selected_columns))
        given = dict(binds)
        got = compiled.parameters(given)
        assert given == binds  # the caller's dict is left as it was
        # The long way: every bind through its processor, the statement's own values added.
        merged = {name: compiled.processors[name](value) if name in compiled.processors else value
                  for name, value in binds.items()} | compiled.fixed
        if compiled.names is None:
            assert dict(got) == merged
        else:
            assert list(got) == [merged[name] for name in compiled.names]
    assert compiled.processors  # the last statement took the processing way


def test_views_differing_in_any_field_are_not_equal() -> None:
    """The kept link page's key holds the view (daemon.web.context.page): a change in any field of the
    invitation must give another key, equal views one key (InvitationView's own ``__eq__``/``__hash__``)."""
    values = dict(
        id=7, company="Roy", email="a@b.example", invited_by="c@d.example", state="pending", status="pending",
        created_at=NOW, expires_at=NOW + timedelta(days=30), decided_at=None, firm=None, accepted_by=None,
        accepted_by_email=None, renewal_requested_at=None, invited_timezone=None,
    )
    view = InvitationView.of_link(**values)
    assert view == InvitationView(**values) and hash(view) == hash(InvitationView(**values))
    assert {view: 1}.get(InvitationView(**values)) == 1
    for f in fields(InvitationView):
        other = InvitationView(**{**values, "url": None, "delivery": None, f.name: "changed"})
        assert other != view and view != other, f.name
        assert {(view,): 1}.get((other,)) is None, f.name
    assert view != object() and view != tuple(vars(view).values())


def _token(sent: str) -> str:
    return sent.split("/invitations/")[1].split()[0]


def test_the_link_pages_read_gives_what_the_orms_long_way_gives(cli: Cli, seed: Seed, env: Env) -> None:
    """``Roster.open_invitation_link`` (one prepared statement: the id and nonce compared in it, the view
    built from the row) against the ORM's way for every field: ``_invitation_view`` on the invitation the
    link names, the invited address's zone, and ``LinkOpens.opening_of`` for the first opening."""
    cli("company", "add", "Érablière Roy", "--admin-email", "paul@erabliere.example", "--admin-name", "Paul Roy")
    cli("company", "add", "Fromagerie Côté", "--admin-email", "ana@cote.example", "--admin-name", "Ana Côté")
    accepted = _token(cli("invitation", "send", "--company", seed.company, "--email", seed.accountant).output)
    declined = _token(cli("invitation", "send", "--company", "Érablière Roy", "--email", seed.accountant).output)
    stranger = _token(cli("invitation", "send", "--company", "Fromagerie Côté", "--email", "nobody@elsewhere.example").output)
    cabinet = build(load_config(env.config_path))
    try:
        roster = cabinet.roster
        user_id = env.sql("SELECT id FROM users WHERE email = :e", e=seed.accountant)[0][0]
        roster.accept_invitation(accepted, user_id, None)
        roster.decline_invitation(declined, user_id)
        revoked = _token(cli("invitation", "send", "--company", "Fromagerie Côté", "--email", seed.accountant).output)
        opened = _token(cli("invitation", "send", "--company", seed.company, "--email", "other@elsewhere.example").output)
        roster.revoke_invitation(roster.open_invitation(revoked).id)
        opening = cabinet.link_opens.opening_of("/invitations/" + opened)
        assert opening is not None
        cabinet.link_opens.record_openings([opening])
        zones = dict(env.sql("SELECT email, timezone FROM users"))
        shown = set()
        for token in (accepted, declined, stranger, revoked, opened):
            view, first = roster.open_invitation_link(token)
            with roster._sessions() as s:
                invitation = roster._invitation_from_token(s, token)
                long_way = roster._invitation_view(s, invitation)
            assert vars(view) == {**vars(long_way), "invited_timezone": zones.get(invitation.email)}, token
            assert first == cabinet.link_opens.opening_of("/invitations/" + token)
            assert view.id == invitation.id and view.url is None and view.delivery is None
            shown.add((view.status, first is None))
        assert shown == {("accepted", False), ("declined", False), ("pending", False), ("revoked", False),
                         ("pending", True)}
        # Past its expiry date the page says so; the link's signature is not past its age, so its opening counts.
        later = NOW.replace(year=2030)
        view, first = roster.open_invitation_link(stranger, now=later)
        assert view.status == "expired" and first is not None
        # A link naming an invitation with another nonce, an unknown id, or a nonce never signed as text.
        stranger_id = roster.open_invitation(stranger).id
        for payload in ([stranger_id, "not-its-nonce"], [999_999, "x"], [stranger_id, 12345]):
            forged = roster._signer.sign(Purpose.INVITE, payload)
            with pytest.raises(LinkTampered):
                roster.open_invitation_link(forged)
            with pytest.raises(LinkTampered):
                with roster._sessions() as s:
                    roster._invitation_from_token(s, forged)
    finally:
        cabinet.close()
