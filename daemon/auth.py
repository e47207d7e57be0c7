"""Staff sign-in and signed-in browser sessions.

The session cookie carries a random token; the table keeps only its SHA-256,
so a leaked database does not hand out live sessions. Signing out deletes the
row. Signing in is throttled (``daemon.throttle``) and the password check runs
on the password pool, never on the threads the database calls use.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import timedelta
from functools import cached_property
from typing import Any, Callable, TypeVar

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import read_connections, write_transaction
from daemon.domain import normalise_email
from daemon.errors import AuthenticationFailed, InvalidInput
from daemon.models import Firm, Membership, User, WebSession
from daemon.passwords import Passwords
from daemon.prepared import PreparedRead
from daemon.roster import Roster, user_view_of
from daemon.throttle import SignInThrottle
from daemon.views import UserView

T = TypeVar("T")


def _session_user() -> Select[Any]:
    """A session's expiry with its user and their firms, as ``roster.user_view_of`` takes them (a row per
    firm in name order), unless the account is disabled (bind: ``id``, the token's digest). Every
    signed-in request asks: one statement, where a session then its user were two."""
    session, user, membership, firm = WebSession.__table__, User.__table__, Membership.__table__, Firm.__table__
    return (
        select(
            session.c.expires_at,
            user.c.id, user.c.email, user.c.name, user.c.locale, user.c.timezone, user.c.disabled_at,
            firm.c.id.label("firm_id"), firm.c.name.label("firm_name"), firm.c.email.label("firm_email"),
        )
        .select_from(session)
        .join(user, user.c.id == session.c.user_id)
        .outerjoin(membership, membership.c.user_id == user.c.id)
        .outerjoin(firm, firm.c.id == membership.c.firm_id)
        .where(session.c.id == bindparam("id"), user.c.disabled_at.is_(None))
        .order_by(firm.c.name_key)
    )


_SESSION_USER = _session_user()


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

    @cached_property
    def _session_user(self) -> PreparedRead:
        return PreparedRead(read_connections(self._sessions), _SESSION_USER)

    def warm(self) -> None:
        """Compile the signed-in user's read now (``cabinet serve``'s start), not on the first request."""
        self._session_user  # compiled on its first access

    def user(self, token: str | None) -> UserView | None:
        """The staff member signed in with ``token``; None for no, an expired or a disabled account's session."""
        if not token:
            return None
        # One statement of plain columns on a read connection (daemon.prepared): no Session, no BEGIN.
        rows = self._session_user.all(id=_digest(token))
        if not rows or rows[0].expires_at <= self._clock.now():
            return None
        return user_view_of(rows)

    def end_others(self, user_id: int, token: str | None) -> None:
        """After a password change: every other browser signed in as this user must sign in again."""
        with write_transaction(self._sessions) as s:
            s.execute(delete(WebSession).where(WebSession.user_id == user_id, WebSession.id != _digest(token or "")))

    def end(self, token: str | None) -> None:
        if not token:
            return
        with write_transaction(self._sessions) as s:
            s.execute(delete(WebSession).where(WebSession.id == _digest(token)))


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


class SignIn:
    """Email and password to a staff member, or a refusal that reads the same for every address."""

    def __init__(self, sessions: sessionmaker[Session], roster: Roster, passwords: Passwords, throttle: SignInThrottle) -> None:
        self._sessions = sessions
        self._roster = roster
        self._passwords = passwords
        self._throttle = throttle

    def _stored_hash(self, email: str) -> tuple[int | None, str | None]:
        try:
            address = normalise_email(email)
        except InvalidInput:
            return None, None
        with self._sessions() as s:
            # A disabled account reads as no account: the decoy is checked and the answer is the same.
            row = s.execute(
                select(User.id, User.password_hash).where(User.email == address, User.disabled_at.is_(None))
            ).first()
            return (row[0], row[1]) if row else (None, None)

    async def attempt(self, email: str, password: str, client_ip: str) -> UserView:
        """Raises ``LimitReached`` (throttled, password not checked), ``Busy`` (password pool full)
        or ``AuthenticationFailed`` (wrong address or password: one message for both)."""
        await _off_loop(self._throttle.check, email, client_ip)
        user_id, stored = await _off_loop(self._stored_hash, email)
        # Unknown addresses are verified against a decoy hash: same work, same time.
        ok = await self._passwords.verify_async(stored, password)
        if not ok or user_id is None:
            await _off_loop(self._throttle.record_failure, email, client_ip)
            raise AuthenticationFailed("auth.failed")
        await _off_loop(self._throttle.succeeded, email)
        return await _off_loop(self._roster.get_user, user_id)
