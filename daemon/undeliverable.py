"""An email that cannot be delivered, for good: what Cabinet does about it.

One rule whoever finds out: a delivery report (DSN) arriving at a ``bounce+``
address (``daemon.inbound``) and the relay refusing the email outright with a
5xx (``mailer.outbox``) both call ``Undeliverable.bounced``, in the transaction
that records how they found out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from daemon.bounces import cause, status_in
from daemon.transitions import TransitionLost, transition
from daemon.domain import DomainService
from daemon.models import Invitation, InvitationState, OutboxMessage


class Undeliverable(DomainService):
    def bounced(
        self, s: Session, outbox: OutboxMessage, reason: str, channel: str = "bounce", status: str | None = None,
    ) -> str:
        """Mark ``outbox`` bounced; an invitation that bounced is ``bounced`` and its inviter told.

        ``reason`` is the remote server's text: it is kept on the outbox row and
        in the event for operators, never shown to people — it is anyone's
        words and can carry links. People are told Cabinet's own wording for
        the ``status`` code (read from ``reason`` when not given) and the code.
        Returns what happened, in a sentence for the log. A second report of
        the same failure changes nothing.
        """
        status = status or status_in(reason)
        why = cause(status)
        now = self._now()
        try:
            transition(s, OutboxMessage, outbox.id, ("pending", "sent", "failed"), "bounced",
                       where=[OutboxMessage.bounced_at.is_(None)], bounced_at=now, bounce_reason=reason[:2000])
        except TransitionLost:
            return f"bounce of {outbox.recipient} already recorded"
        told = self._tell_inviter(s, outbox, reason, status, why, now, channel)
        if told is not None:
            return told
        self._event(s, "email.bounced", outbox.recipient, channel, company_id=outbox.company_id,
                    firm_id=outbox.firm_id, template=outbox.kind, reason=reason[:500])
        return f"{outbox.kind} email to {outbox.recipient} bounced: {reason}"

    def gave_up(self, s: Session, outbox: OutboxMessage, reason: str) -> str:
        """``outbox`` was deferred until ``[mail] give_up_after`` passed: for its inviter, as good as a bounce.

        The email itself stays ``failed``; its invitation is ``bounced`` and the
        inviter is told, so nobody waits for an email that never left (and
        ``cabinet mail retry`` refuses that email: a new invitation is the way).
        """
        now = self._now()
        told = self._tell_inviter(s, outbox, reason, None, "unreachable", now, "gave up")
        if told is not None:
            return told
        self._event(s, "email.undelivered", outbox.recipient, "gave up", company_id=outbox.company_id,
                    firm_id=outbox.firm_id, template=outbox.kind, reason=reason[:500])
        return f"{outbox.kind} email to {outbox.recipient} given up: {reason}"

    def _tell_inviter(
        self, s: Session, outbox: OutboxMessage, reason: str, status: str | None, why: str, now: datetime, channel: str,
    ) -> str | None:
        """An invitation's email failed for good: the invitation is ``bounced`` and its inviter told (once).

        Returns what happened, or None when ``outbox`` is not an invitation email.
        """
        invitation = s.get(Invitation, outbox.invitation_id) if outbox.invitation_id else None
        if invitation is None or outbox.kind != "invitation":
            return None
        try:
            self._transition(s, Invitation, invitation.id, [InvitationState.PENDING], InvitationState.BOUNCED,
                             decided_at=now, bounce_reason=reason[:2000])
            bounced = True
        except TransitionLost:
            bounced = False
        if bounced:
            self._notify_company_admin(
                s, invitation.company, "invitation_bounced",
                {"email": invitation.email, "cause": why, "status": status or "", "bounced_at": now},
            )
        self._event(
            s, "invitation.bounced", outbox.recipient, channel, company_id=invitation.company_id,
            invitation_id=invitation.id, reason=reason[:500], status=status or "",
        )
        return f"invitation {invitation.id} to {invitation.email} bounced: {reason}"
