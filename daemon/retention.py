"""Retention: stored mail (inbound messages, sent emails, their bodies) is deleted after a while.

``[retention] inbound_days`` and ``outbox_days`` (0 keeps forever). Only rows
nothing open depends on go: an inbound message still waiting or quarantined
stays; a sent email stays while the invitation it was about is pending, or
the company it was about has a pending billing transfer or client setup (a
bounce or a reply to it must still find its way back).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.config import Config
from daemon.db import write_transaction
from daemon.models import BillingTransfer, InboundMessage, Invitation, OutboxMessage, SetupInvitation

INBOUND, OUTBOX = 1, 2  # the scheduler's row ids for the two prunes
BATCH = 500
FINAL_INBOUND = ("processed", "duplicate")
FINAL_OUTBOX = ("sent", "failed", "bounced")


class Retention:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, config: Config) -> None:
        self._sessions = sessions
        self._clock = clock
        self._inbound_days = config.retention.inbound_days
        self._outbox_days = config.retention.outbox_days

    def _inbound_old(self, now: datetime) -> list[int]:
        if not self._inbound_days:
            return []
        with self._sessions() as s:
            return list(s.scalars(
                select(InboundMessage.id)
                .where(
                    InboundMessage.state.in_(FINAL_INBOUND),
                    InboundMessage.received_at < now - timedelta(days=self._inbound_days),
                )
                .order_by(InboundMessage.id)
                .limit(BATCH)
            ).all())

    def _outbox_old(self, now: datetime) -> list[int]:
        if not self._outbox_days:
            return []
        open_invitation = select(Invitation.id).where(
            Invitation.id == OutboxMessage.invitation_id, Invitation.state == "pending"
        ).exists()
        open_transfer = select(BillingTransfer.id).where(
            BillingTransfer.company_id == OutboxMessage.company_id, BillingTransfer.state == "pending"
        ).exists()
        open_setup = select(SetupInvitation.id).where(
            SetupInvitation.company_id == OutboxMessage.company_id, SetupInvitation.state == "pending"
        ).exists()
        with self._sessions() as s:
            return list(s.scalars(
                select(OutboxMessage.id)
                .where(
                    OutboxMessage.state.in_(FINAL_OUTBOX),
                    OutboxMessage.created_at < now - timedelta(days=self._outbox_days),
                    or_(OutboxMessage.invitation_id.is_(None), ~open_invitation),
                    or_(OutboxMessage.company_id.is_(None), and_(~open_transfer, ~open_setup)),
                )
                .order_by(OutboxMessage.id)
                .limit(BATCH)
            ).all())

    # -- the scheduler's job: "rows" INBOUND and OUTBOX, due when something is old enough --------

    def due(self, now: datetime) -> list[int]:
        return [ref for ref, old in ((INBOUND, self._inbound_old), (OUTBOX, self._outbox_old)) if old(now)]

    def prune_one(self, ref: int, now: datetime) -> str | None:
        """Delete one batch of old rows of one kind; a later pass takes the next batch."""
        ids = (self._inbound_old if ref == INBOUND else self._outbox_old)(now)
        if not ids:
            return None
        self._delete(ref, ids)
        return "inbound_pruned" if ref == INBOUND else "outbox_pruned"

    def _delete(self, ref: int, ids: list[int]) -> None:
        # Still final when deleted: a row requeued since it was selected stays.
        with write_transaction(self._sessions) as s:
            if ref == INBOUND:
                s.execute(delete(InboundMessage).where(InboundMessage.id.in_(ids), InboundMessage.state.in_(FINAL_INBOUND)))
            else:
                s.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.state.in_(FINAL_OUTBOX)))

    def prune(self) -> dict[str, int]:
        """Everything past retention, now (`cabinet db prune`)."""
        now = self._clock.now()
        counts = {"inbound_pruned": 0, "outbox_pruned": 0}
        for ref, old, key in ((INBOUND, self._inbound_old, "inbound_pruned"), (OUTBOX, self._outbox_old, "outbox_pruned")):
            while ids := old(now):
                self._delete(ref, ids)
                counts[key] += len(ids)
        return counts
