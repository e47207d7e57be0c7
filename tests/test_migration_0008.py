"""Migration 0008 keeps stored mail: bodies moved to the last column, duplicate digests made unique."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import bindparam, text

from daemon import db
from daemon.models import UTCDateTime
from tests.conftest import fresh_database_url

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_upgrade_keeps_bodies_and_resolves_duplicate_digests(tmp_path: Path) -> None:
    engine = db.make_engine(fresh_database_url(tmp_path))
    try:
        db.upgrade(engine, "0004")
        with engine.begin() as conn:
            insert_inbound = text(
                "INSERT INTO inbound (id, received_at, mail_from, recipients, raw, state, digest, attempts, next_attempt_at) "
                "VALUES (:id, :at, 'a@b.example', '[]', :raw, 'processed', :digest, 1, :at)"
            ).bindparams(bindparam("at", type_=UTCDateTime()))
            for row_id, raw in ((1, b"first copy"), (2, b"second copy"), (3, b"other")):
                digest = "d" * 64 if row_id < 3 else "e" * 64
                conn.execute(insert_inbound, {"id": row_id, "at": AT, "raw": raw, "digest": digest})
            conn.execute(
                text(
                    "INSERT INTO outbox (id, message_id, ref, kind, envelope_from, recipient, subject, raw, state, "
                    "attempts, created_at, next_attempt_at) VALUES (1, '<m@x>', 'r1', 'invitation', 'b@x', 'c@x', "
                    "'s', :raw, 'sent', 1, :at, :at)"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                {"raw": b"\x00binary\xff body", "at": AT},
            )
        db.upgrade(engine)
        with engine.connect() as conn:
            inbound = conn.execute(text("SELECT id, digest, raw FROM inbound ORDER BY id")).all()
            outbox = conn.execute(text("SELECT raw, audience FROM outbox")).all()
    finally:
        engine.dispose()
    assert [(r.id, bytes(r.raw)) for r in inbound] == [(1, b"first copy"), (2, b"second copy"), (3, b"other")]
    assert inbound[0].digest == "d" * 64 and inbound[1].digest != "d" * 64 and inbound[2].digest == "e" * 64
    assert [(bytes(r.raw), r.audience) for r in outbox] == [(b"\x00binary\xff body", None)]
