"""The outbox as an operator sees it: what was queued, sent, refused or given up, and requeueing.

It reads the database, whatever the transport: with an SMTP relay there is no
local copy, and the outbox row holds the exact bytes that were (or will be) sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Callable

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import write_transaction
from daemon.errors import InvalidInput, InvalidState, NotFound
from daemon.models import Invitation, InvitationState, OutboxMessage
from daemon.transitions import TransitionLost, transition

# The outbox stores "pending"; people (and /metrics) call it "queued".
STATES = {"queued": "pending", "sent": "sent", "failed": "failed", "bounced": "bounced"}
_SHOWN = {stored: shown for shown, stored in STATES.items()}


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    message_id: str
    state: str
    kind: str
    to: str
    subject: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None  # only while queued
    sent_at: datetime | None
    last_answer: str | None
    bounce_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "state": self.state,
            "kind": self.kind,
            "to": self.to,
            "subject": self.subject,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "last_answer": self.last_answer,
            "bounce_reason": self.bounce_reason,
        }


# Everything but the message bytes: a listing never reads every stored body.
_COLUMNS = (
    OutboxMessage.id, OutboxMessage.message_id, OutboxMessage.state, OutboxMessage.kind, OutboxMessage.recipient,
    OutboxMessage.subject, OutboxMessage.attempts, OutboxMessage.created_at, OutboxMessage.next_attempt_at,
    OutboxMessage.sent_at, OutboxMessage.last_answer, OutboxMessage.bounce_reason,
)


def _entry(row: Any) -> OutboxEntry:
    state = _SHOWN.get(row.state, row.state)
    return OutboxEntry(
        id=row.id, message_id=row.message_id, state=state, kind=row.kind, to=row.recipient, subject=row.subject,
        attempts=row.attempts, created_at=row.created_at,
        next_attempt_at=row.next_attempt_at if state == "queued" else None, sent_at=row.sent_at,
        last_answer=row.last_answer, bounce_reason=row.bounce_reason,
    )


class OutboxQueue:
    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock, compose: Callable[[OutboxMessage], bytes],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._compose = compose  # the bytes of an email not rendered yet (``Outbox.compose``)

    def listing(self, to: str | None = None, state: str | None = None) -> list[OutboxEntry]:
        """Every email in the outbox, oldest first; ``to`` matches part of the address."""
        query = select(*_COLUMNS).order_by(OutboxMessage.id)
        if to:
            query = query.where(OutboxMessage.recipient.contains(to.strip().lower(), autoescape=True))
        if state:
            query = query.where(OutboxMessage.state == _stored_state(state))
        with self._sessions() as s:
            return [_entry(row) for row in s.execute(query)]

    def find(self, ref: str) -> tuple[OutboxEntry, bytes]:
        """One email by its outbox id or its Message-ID, with the bytes that were (or will be) sent."""
        ref = ref.strip()
        if ref.isdigit():
            condition = OutboxMessage.id == int(ref)
        elif ref:
            condition = OutboxMessage.message_id == (ref if ref.startswith("<") else f"<{ref}>")
        else:
            raise InvalidInput("outbox.id_required")
        with self._sessions() as s:
            row = s.execute(select(*_COLUMNS).where(condition)).first()
            message = s.get(OutboxMessage, row.id) if row is not None else None
        if row is None or message is None:
            raise NotFound("outbox.not_found", id=ref)
        return _entry(row), self._compose(message)

    def requeue(self, ids: list[int] | None) -> list[int]:
        """Queue emails again, due now, with a fresh retry budget; ``None`` means every failed one.

        A failed email is queued again; a queued one waiting for its next
        attempt is tried now (after a relay outage, as ``postqueue -f`` would).
        A sent one went out and a bounced one was refused for good (its
        invitation says so): those are refused. So is an invitation email whose
        invitation is ``bounced`` (given up on, its inviter told): sending it now
        would invite someone the company was told could not be reached; a new
        invitation is the way. ``--failed`` (``None``) leaves those out.
        """
        now = self._clock.now()
        with write_transaction(self._sessions) as s:
            if ids is None:
                ids = list(s.scalars(select(OutboxMessage.id).where(OutboxMessage.state == "failed", ~_bounced_invitation)))
            done = []
            for outbox_id in ids:
                try:
                    # The claim stays: an email being sent right now is not sent twice. The invitation's
                    # state is part of the guard, so a bounce recorded meanwhile cannot slip through.
                    transition(s, OutboxMessage, outbox_id, ("failed", "pending"), "pending",
                               where=[~_bounced_invitation], next_attempt_at=now, queued_at=now)
                except TransitionLost as lost:
                    if lost.current is None:
                        raise NotFound("outbox.not_found", id=outbox_id) from None
                    current = str(lost.current)
                    if current in ("failed", "pending"):  # the state was right: the invitation bounced
                        raise InvalidState("outbox.invitation_bounced", id=outbox_id) from None
                    raise InvalidState("outbox.not_retryable", id=outbox_id, state=_SHOWN.get(current, current)) from None
                done.append(outbox_id)
            return done


# An invitation email whose invitation was marked bounced (a bounce report, or given up on).
_bounced_invitation = exists().where(
    OutboxMessage.kind == "invitation",
    Invitation.id == OutboxMessage.invitation_id,
    Invitation.state == InvitationState.BOUNCED.value,
)


def _stored_state(state: str) -> str:
    if state not in STATES:
        raise InvalidInput("outbox.state_unknown", state=state, choices=", ".join(STATES))
    return STATES[state]


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
