"""Migration 0019: on PostgreSQL the duplicate first openings go (the earliest of each link's stays) and
the database then refuses another; on SQLite (one writer, no duplicates to begin with) nothing changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.exc import IntegrityError

from daemon import db
from daemon.models import UTCDateTime
from tests.conftest import fresh_database_url
from tests.test_client_counts import downgrade

AT = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
INVITATION_5 = '{"invitation_id": 5, "purpose": "invitation", "ref": 5}'
MANAGE = '{"purpose": "manage", "ref": 1}'

_COMPANY = text(
    "INSERT INTO companies (id, name, name_key, kind, admin_email, admin_name, admin_locale, admin_timezone, "
    "subscription, has_quickbooks_time, created_at) VALUES (:id, :name, :name, 'business', 'julie@roy.example', "
    "'Julie Roy', 'fr', 'America/Montreal', 'self-paid', false, :at)"
).bindparams(bindparam("at", type_=UTCDateTime()))
_EVENT = text(
    "INSERT INTO events (id, at, kind, actor, channel, company_id, detail) "
    "VALUES (:id, :at, :kind, :actor, 'link', :company_id, :detail)"
).bindparams(bindparam("at", type_=UTCDateTime()))


def _event(conn, id: int, minutes: int, actor: str, detail: str, kind: str = "link.opened",
           company_id: int | None = 1) -> None:
    conn.execute(_EVENT, {"id": id, "at": AT + timedelta(minutes=minutes), "kind": kind, "actor": actor,
                          "company_id": company_id, "detail": detail})


def _events(conn) -> list[tuple[int, str]]:
    return [(row.id, row.actor) for row in conn.execute(text("SELECT id, actor FROM events ORDER BY id"))]


def test_upgrade_keeps_each_links_earliest_opening_and_then_refuses_another(tmp_path: Path) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0018")
        with engine.begin() as conn:
            for company_id in (1, 2):
                conn.execute(_COMPANY, {"id": company_id, "name": f"c{company_id}", "at": AT})
            # Link 5 opened three times (two written at the same instant by two instances, the later id
            # first in time), company 1's manage link twice, the same detail once in another company,
            # and events of other kinds with the same detail (not openings: kept).
            _event(conn, 1, 2, "second@x.example", INVITATION_5)
            _event(conn, 2, 1, "first@x.example", INVITATION_5)
            _event(conn, 3, 1, "same-instant@x.example", INVITATION_5)
            _event(conn, 4, 0, "manage@x.example", MANAGE)
            _event(conn, 5, 3, "manage-again@x.example", MANAGE)
            _event(conn, 6, 4, "other-company@x.example", INVITATION_5, company_id=2)
            _event(conn, 7, 5, "accepted@x.example", INVITATION_5, kind="invitation.accepted")
            _event(conn, 8, 6, "accepted@x.example", INVITATION_5, kind="invitation.accepted")
            _event(conn, 9, 7, "no-company@x.example", INVITATION_5, company_id=None)
            _event(conn, 10, 8, "no-company@x.example", INVITATION_5, company_id=None)
            before = _events(conn)
        db.upgrade(engine)
        with engine.connect() as conn:
            after = _events(conn)
        postgresql = engine.dialect.name == "postgresql"
        if not postgresql:
            assert after == before  # SQLite: no index, nothing removed (its single writer wrote no copies)
            return
        # The earliest of each link's openings (by time, then id); every other event as it was.
        assert after == [(2, "first@x.example"), (4, "manage@x.example"), (6, "other-company@x.example"),
                         (7, "accepted@x.example"), (8, "accepted@x.example"),
                         (9, "no-company@x.example"), (10, "no-company@x.example")]
        with pytest.raises(IntegrityError, match="uq_events_link_opened"), engine.begin() as conn:
            _event(conn, 11, 9, "third@x.example", INVITATION_5)
        with engine.begin() as conn:  # another link of the company, or another kind: not the same opening
            _event(conn, 12, 9, "setup@x.example", '{"purpose": "setup", "ref": 5}')
            _event(conn, 13, 9, "accepted@x.example", INVITATION_5, kind="invitation.accepted")

        downgrade(engine, "0018")  # the index dropped: a copy is accepted again
        with engine.begin() as conn:
            _event(conn, 14, 10, "copy@x.example", INVITATION_5)
        db.upgrade(engine)  # and the upgrade removes it again
        with engine.connect() as conn:
            assert 14 not in [row_id for row_id, _ in _events(conn)]
    finally:
        engine.dispose()
