"""The transactional outbox: queue emails with a state change, send them later.

``Outbox.queue`` renders and serialises a notice once and inserts it in the
caller's transaction, so an email exists if and only if its change committed.
``OutboxWorker`` sends what is due, with retries and exponential backoff; the
``Message-ID`` is fixed at queue time, so a resend after a crash is the same
message to every receiver.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import write_transaction
from daemon.models import OutboxMessage
from daemon.notices import Notice
from daemon.tokens import LinkSigner, Purpose
from mailer.message import build_message, new_message_id
from mailer.render import EmailRenderer
from mailer.transports import Transport, TransportError

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)


class Outbox:
    """Implements ``daemon.notices.Notifier``."""

    def __init__(self, renderer: EmailRenderer, signer: LinkSigner, clock: Clock, from_address: str, domain: str) -> None:
        self._renderer = renderer
        self._signer = signer
        self._clock = clock
        self._from = from_address
        self._domain = domain

    def address(self, purpose: Purpose, ref: str) -> str:
        """``reply+…@domain`` or ``bounce+…@domain`` for the email with reference ``ref``."""
        return f"{purpose.value}+{self._signer.sign_address(purpose, ref)}@{self._domain}"

    def queue(self, session: Session, notice: Notice) -> None:
        now = self._clock.now()
        rendered = self._renderer.render(notice.template, notice.locale, notice.timezone, notice.context)
        ref = secrets.token_hex(6)
        message_id = new_message_id(self._domain)
        # A reply makes sense when the email is about something (an invitation, a company).
        reply_to = self.address(Purpose.REPLY, ref) if notice.invitation_id or notice.company_id else None
        message = build_message(
            from_address=self._from,
            to=notice.to,
            to_name=notice.to_name,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            date=now,
            auto_submitted=notice.auto_submitted,
            reply_to=reply_to,
        )
        session.add(
            OutboxMessage(
                message_id=message_id,
                ref=ref,
                kind=notice.template,
                # VERP: a bounce comes back to an address that names this very email.
                envelope_from=self.address(Purpose.BOUNCE, ref),
                recipient=notice.to,
                subject=rendered.subject,
                raw=message.as_bytes(),
                state="pending",
                attempts=0,
                created_at=now,
                next_attempt_at=now,
                invitation_id=notice.invitation_id,
                company_id=notice.company_id,
                firm_id=notice.firm_id,
                audience=notice.audience,
            )
        )


@dataclass(frozen=True)
class _Due:
    id: int
    envelope_from: str
    recipient: str
    raw: bytes
    attempts: int


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, … capped at an hour."""
    return min(timedelta(seconds=30 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


class OutboxWorker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        transport: Transport,
        clock: Clock,
        max_attempts: int,
        poll_interval: float,
        lease: timedelta = timedelta(minutes=2),
        batch: int = 50,
    ) -> None:
        self._sessions = sessions
        self._transport = transport
        self._clock = clock
        self._max_attempts = max_attempts
        self._poll_interval = poll_interval
        self._batch = batch
        self._lease = lease
        self._wake = asyncio.Event()
        self._stopping = False

    def stop(self) -> None:
        """Finish sending the current batch, then return from ``run``."""
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Called after a commit that queued mail, so it goes out now, not at the next poll."""
        self._wake.set()

    def _claim(self) -> list[_Due]:
        """Claim a batch of due messages for this worker, with a lease.

        Claimed, not shared: on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
        several instances take disjoint batches; on SQLite the write lock does
        the same. The lease (``claimed_until``) expires if this instance dies
        mid-send, and another instance then sends the message again with the
        same Message-ID (at least once, recognisably the same).
        """
        now = self._clock.now()
        with write_transaction(self._sessions) as session:
            rows = session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.state == "pending",
                    OutboxMessage.next_attempt_at <= now,
                    or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                )
                .order_by(OutboxMessage.id)
                .limit(self._batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.claimed_until = now + self._lease
            return [_Due(r.id, r.envelope_from, r.recipient, r.raw, r.attempts) for r in rows]

    def _record(self, due: _Due, error: TransportError | None) -> None:
        now = self._clock.now()
        with write_transaction(self._sessions) as session:
            if error is None:
                values: dict[str, object] = {"state": "sent", "sent_at": now, "attempts": due.attempts + 1}
            else:
                attempts = due.attempts + 1
                failed = error.permanent or attempts >= self._max_attempts
                values = {
                    "state": "failed" if failed else "pending",
                    "attempts": attempts,
                    "last_error": str(error),
                    "next_attempt_at": now + backoff(attempts),
                }
            values["claimed_until"] = None
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == due.id, OutboxMessage.state == "pending")
                .values(**values)
            )

    def _release(self, ids: list[int]) -> None:
        """Give back claims this worker will not use (stopping), so a restart sends them at once."""
        with write_transaction(self._sessions) as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(claimed_until=None))

    async def send_due(self) -> int:
        """Send everything due now; returns how many were sent."""
        sent = 0
        while True:
            batch = await asyncio.to_thread(self._claim)
            if not batch:
                return sent
            for n, due in enumerate(batch):
                if self._stopping:
                    await asyncio.to_thread(self._release, [d.id for d in batch[n:]])
                    return sent
                error: TransportError | None = None
                try:
                    await self._transport.send(due.envelope_from, [due.recipient], due.raw)
                except TransportError as exc:
                    error = exc
                    log.warning("outbox message %s not sent (attempt %s): %s", due.id, due.attempts + 1, exc)
                await asyncio.to_thread(self._record, due, error)
                if error is None:
                    sent += 1
            if len(batch) < self._batch:
                return sent

    async def run(self) -> None:
        """Send until stopped, waking on ``wake()`` or every poll interval."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not stop the worker for good
                log.exception("outbox worker pass failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            except TimeoutError:
                pass
