"""Signed-in browser sessions for firm staff.

The cookie carries a random token; the table keeps only its SHA-256, so a
leaked database does not hand out live sessions. Signing out deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import write_transaction
from daemon.models import WebSession


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WebSessions:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, lifetime: timedelta) -> None:
        self._sessions = sessions
        self._clock = clock
        self._lifetime = lifetime

    def start(self, user_id: int) -> str:
        """A new session (never reuse one from before sign-in: that would allow fixation)."""
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        with write_transaction(self._sessions) as s:
            s.add(WebSession(id=_digest(token), user_id=user_id, created_at=now, expires_at=now + self._lifetime))
            # Sweep this user's stale sessions while we hold the write lock anyway.
            s.execute(delete(WebSession).where(WebSession.user_id == user_id, WebSession.expires_at <= now))
        return token

    def user_id(self, token: str | None) -> int | None:
        if not token:
            return None
        with self._sessions() as s:
            row = s.scalar(select(WebSession).where(WebSession.id == _digest(token)))
            if row is None or row.expires_at <= self._clock.now():
                return None
            return row.user_id

    def end(self, token: str | None) -> None:
        if not token:
            return
        with write_transaction(self._sessions) as s:
            s.execute(delete(WebSession).where(WebSession.id == _digest(token)))
