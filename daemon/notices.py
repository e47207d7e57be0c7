"""What the domain says when someone should hear about a change.

The domain describes a notice (who, which template, which facts); it never
renders or sends mail. The outbox (``mailer.outbox``) turns a notice into a
stored message inside the same database transaction (``queue``), or prepares it
before the transaction and only inserts it inside (``prepare``, ``queue_prepared``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.orm import Session


@dataclass(frozen=True, init=False)
class Notice:
    template: str  # e.g. "invitation", "invitation_accepted"
    to: str  # normalised address
    to_name: str
    locale: str
    timezone: str
    context: dict[str, Any] = field(default_factory=dict)
    # Notifications are machine-generated (RFC 3834); a person's request would not be.
    auto_submitted: bool = True
    # What the email is about: a bounce marks these, a reply is routed by them.
    invitation_id: int | None = None
    company_id: int | None = None
    firm_id: int | None = None
    # Who reads it: "company_admin" (the client side), "firm_staff" or "accountant" (the firm side).
    # Stored on the outbox row; a reply to this email is forwarded to the other side.
    audience: str | None = None

    def __init__(
        self, template: str, to: str, to_name: str, locale: str, timezone: str,
        context: dict[str, Any] | None = None, auto_submitted: bool = True, invitation_id: int | None = None,
        company_id: int | None = None, firm_id: int | None = None, audience: str | None = None,
    ) -> None:
        # The fields in one C call: the frozen dataclass's generated ``__init__`` sets each through
        # ``object.__setattr__`` (23k instructions a notice under callgrind, an accept makes two). Still frozen
        # (its ``__setattr__`` refuses), equal and hashed field by field (tests/test_notice.py).
        self.__dict__.update(
            template=template, to=to, to_name=to_name, locale=locale, timezone=timezone,
            context={} if context is None else context, auto_submitted=auto_submitted,
            invitation_id=invitation_id, company_id=company_id, firm_id=firm_id, audience=audience,
        )


class Notifier(Protocol):
    def queue(self, session: Session, notice: Notice) -> None:
        """Add the email for ``notice`` to the outbox, in ``session``'s transaction."""
        ...

    def prepare(self, notice: Notice) -> dict[str, Any]:
        """The stored email for ``notice`` (rendered what needs rendering), before any transaction: a
        change that knows its emails ahead prepares them outside the write lock."""
        ...

    def queue_prepared(self, connection: Connection, prepared: list[dict[str, Any]]) -> None:
        """Add prepared emails to the outbox, in ``connection``'s transaction (a Core write), in one statement."""
        ...
