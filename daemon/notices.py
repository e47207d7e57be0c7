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


@dataclass(frozen=True)
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
