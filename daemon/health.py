"""Readiness, honestly: the database takes a write, and the outbox is not stuck.

A ``SELECT 1`` answers on a full disk, a read-only file system or a PostgreSQL
server in recovery; only a write proves the instance can do its work. One row
(``heartbeat``) is rewritten on each check, a write as small as one can be.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock, as_utc
from daemon.db import dialect_insert, write_transaction
from daemon.faults import storage_fault
from daemon.models import Heartbeat, OutboxMessage

# An email due for longer than this means the worker is not sending (relay down, worker dead).
OUTBOX_MAX_DELAY = timedelta(minutes=15)


class Health:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, outbox_max_delay: timedelta = OUTBOX_MAX_DELAY) -> None:
        self._sessions = sessions
        self._clock = clock
        self._outbox_max_delay = outbox_max_delay

    def problems(self) -> list[str]:
        """What keeps this instance from being ready, one phrase each; empty when ready."""
        try:
            self._write_heartbeat()
        except Exception as first:
            # A pooled connection found dead (or opened read-only while the store was away) is
            # dropped with every connection as old as it; the next write proves the database itself.
            try:
                if not getattr(first, "connection_invalidated", False):
                    raise
                self._write_heartbeat()
            except Exception as exc:
                return [f"database does not accept writes: {storage_fault(exc) or type(exc).__name__}"]
        now = self._clock.now()
        with self._sessions() as s:
            oldest = s.scalar(
                select(OutboxMessage.next_attempt_at)
                .where(OutboxMessage.state == "pending", OutboxMessage.next_attempt_at <= now)
                .order_by(OutboxMessage.next_attempt_at)
                .limit(1)
            )
        if oldest is not None:
            late = now - as_utc(oldest)
            if late > self._outbox_max_delay:
                return [f"outbox: an email has been due for {int(late.total_seconds())} s "
                        f"(more than {int(self._outbox_max_delay.total_seconds())} s)"]
        return []

    def _write_heartbeat(self) -> None:
        now = self._clock.now()
        with write_transaction(self._sessions) as s:
            statement = dialect_insert(s)(Heartbeat).values(id=1, beat_at=now)
            s.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"beat_at": statement.excluded.beat_at}))
