"""Forgotten passwords: an emailed link, single use, one hour.

Asking for a link answers the same whether or not the address has an
account (no enumeration). The link is bound to ``User.password_stamp``, which
changes with the password: once used, or once the password changed another
way, every earlier link is spent. Setting the password ends every session of
the account. Links per address are limited (``RESETS_PER_HOUR``), counted from
the events table, so a stranger cannot fill someone's mailbox.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from daemon.db import rows_changed
from daemon.domain import DomainService, normalise_email
from daemon.errors import InvalidInput, LinkTampered
from daemon.models import Event, User, WebSession
from daemon.notices import Notice
from daemon.tokens import Purpose
from daemon.views import UserView

PASSWORD_RESET_TTL = timedelta(hours=1)
RESETS_PER_HOUR = 3
REQUESTED = "staff.password_reset_requested"


class PasswordResets(DomainService):
    def request(self, email: str, channel: str = "link") -> None:
        """Email a reset link if ``email`` is an active account's; otherwise do nothing. Never says which."""
        try:
            address = normalise_email(email)
        except InvalidInput:
            return
        now = self._now()
        with self._transaction() as s:
            user = s.scalar(select(User).where(User.email == address, User.disabled_at.is_(None)))
            if user is None:
                return
            recent = s.scalar(
                select(func.count(Event.id)).where(
                    Event.kind == REQUESTED, Event.actor == address, Event.at > now - timedelta(hours=1)
                )
            )
            if (recent or 0) >= RESETS_PER_HOUR:
                return
            token = self._signer.sign(Purpose.PASSWORD_RESET, [user.id, user.password_stamp])
            self._notifier.queue(
                s,
                Notice(
                    template="password_reset",
                    to=user.email,
                    to_name=user.name,
                    locale=user.locale,
                    timezone=user.timezone,
                    context={
                        "email": user.email, "url": self._links.password_reset(token),
                        "expires_at": now + PASSWORD_RESET_TTL,
                    },
                ),
            )
            self._event(s, REQUESTED, address, channel, email=address)

    def _user(self, s: Session, token: str) -> User:
        user = self._row_from_token(
            s, Purpose.PASSWORD_RESET, token, User, what="user", max_age=PASSWORD_RESET_TTL,
            bound="password_stamp", mismatch=lambda _row, _value: LinkTampered("link.used"),
        )
        if user.disabled_at is not None:
            raise LinkTampered("link.invalid")
        return user

    def open(self, token: str) -> UserView:
        """Whom the link is for, or ``LinkTampered``/``LinkExpired``. Reads only."""
        with self._sessions() as s:
            return self._user_view(s, self._user(s, token))

    def reset(self, token: str, password_hash: str, channel: str = "link") -> UserView:
        """Set the password (hashed by the caller, off the event loop) and end every session."""
        with self._transaction() as s:
            user = self._user(s, token)
            stamp = user.password_changed_at
            guard = User.password_changed_at.is_(None) if stamp is None else User.password_changed_at == stamp
            changed = update(User).where(User.id == user.id, guard, User.disabled_at.is_(None)).values(
                password_hash=password_hash, password_changed_at=self._now()
            )
            if not rows_changed(s, changed):
                raise LinkTampered("link.used")  # a second press of the same link lost the race
            s.execute(delete(WebSession).where(WebSession.user_id == user.id))
            s.refresh(user)
            self._event(s, "staff.password_reset", user.email, channel, email=user.email)
            return self._user_view(s, user)
