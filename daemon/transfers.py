"""Flow 2: billing transfer into a firm's wholesale plan.

Rule 2: only the company's primary admin can allow a transfer, only to a firm
connected to the company, and never with QuickBooks Time attached. Rule 3: the
firm has exactly 48 hours from the permission, and only a signed-in member of
that firm can complete it; then the permission expires and both sides hear.
The same checks run when the page is shown, when the permission is given and
when the transfer is completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon.domain import DomainService, admin_greeting_name, normalise_email
from daemon.errors import MESSAGES, InvalidState, NotAllowed, NotFound
from daemon.models import BillingTransfer, Client, ClientStatus, Company, Firm, SentReminder, TransferState, User
from daemon.tokens import Purpose
from daemon.transitions import TransitionLost, transition_all

# Why a transfer is not possible: codes, whose words are in daemon/errors.py (pages and emails translate them).
REASONS = {r: MESSAGES[f"transfer.reason.{r}"] for r in ("quickbooks_time", "not_connected", "already_wholesale", "not_primary_admin")}


@dataclass(frozen=True)
class Eligibility:
    firm_id: int
    firm: str
    reasons: tuple[str, ...]

    @property
    def possible(self) -> bool:
        return not self.reasons

    @property
    def explanation(self) -> str:
        return "; ".join(REASONS[r] for r in self.reasons)


class TransferRefused(NotAllowed):
    def __init__(self, eligibility: Eligibility) -> None:
        super().__init__(
            "transfer.refused", firm=eligibility.firm, reasons=tuple(f"transfer.reason.{r}" for r in eligibility.reasons)
        )
        self.eligibility = eligibility


@dataclass(frozen=True)
class TransferView:
    id: int
    company: str
    company_id: int
    firm: str
    firm_id: int
    state: str
    status: str  # state as seen now: a pending permission past its deadline is "expired"
    authorized_by: str
    authorized_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company": self.company,
            "firm": self.firm,
            "state": self.status,
            "authorized_by": self.authorized_by,
            "authorized_at": self.authorized_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
        }


class TransferUnavailable(InvalidState):
    def __init__(self, view: TransferView) -> None:
        super().__init__(f"this billing transfer is {view.status}", current=view)
        self.view = view


class TransferChanged(InvalidState):
    """The company's billing transfer changed while this request was being made; ``view`` is what it is now."""

    def __init__(self, view: TransferView | None) -> None:
        now = f" (it is now {view.status}, for {view.firm})" if view else ""
        super().__init__(f"the billing transfer changed at the same moment{now}: look again and retry", current=view)
        self.view = view


class _NothingDue(Exception):
    """Internal: this row needs nothing now (roll back, move on)."""


class BillingTransfers(DomainService):
    # -- checks --------------------------------------------------------------

    def _reasons(self, s: Session, company: Company, firm: Firm, actor_email: str | None) -> tuple[str, ...]:
        reasons = []
        if actor_email is not None and normalise_email(actor_email) != company.admin_email:
            reasons.append("not_primary_admin")
        if company.has_quickbooks_time:
            reasons.append("quickbooks_time")
        connected = s.scalar(
            select(Client.id).where(
                Client.firm_id == firm.id, Client.company_id == company.id, Client.connected_at.is_not(None)
            )
        )
        if connected is None:
            reasons.append("not_connected")
        if company.subscription == "wholesale" and company.billing_firm_id == firm.id:
            reasons.append("already_wholesale")
        return tuple(reasons)

    def options(self, company_id: int, actor_email: str) -> list[Eligibility]:
        """For the "Allow billing transfer" page: each connected firm and whether a transfer is possible."""
        with self._sessions() as s:
            company = s.get(Company, company_id)
            if company is None:
                raise NotFound("company.missing")
            firms = s.scalars(
                select(Firm)
                .join(Client, Client.firm_id == Firm.id)
                .where(Client.company_id == company.id)
                .order_by(Firm.name_key)
            ).all()
            return [Eligibility(f.id, f.name, self._reasons(s, company, f, actor_email)) for f in firms]

    # -- the client allows, revokes ---------------------------------------------

    def allow(self, company_name: str, firm_name: str, actor_email: str | None = None, channel: str = "cli") -> TransferView:
        """Allow a transfer by names (CLI); ``actor_email`` defaults to the primary admin."""
        with self._sessions() as s:
            company = self._company_by_name(s, company_name)
            firm = self._firm_by_name(s, firm_name)
            company_id, firm_id, admin = company.id, firm.id, company.admin_email
        return self.allow_for(company_id, firm_id, actor_email or admin, channel)

    def allow_for(self, company_id: int, firm_id: int, actor_email: str, channel: str) -> TransferView:
        now = self._now()
        with self._transaction() as s:
            company = s.get(Company, company_id)
            firm = s.get(Firm, firm_id)
            if company is None or firm is None:
                raise NotFound("company_or_firm.missing")
            reasons = self._reasons(s, company, firm, actor_email)
            if reasons:
                raise TransferRefused(Eligibility(firm.id, firm.name, reasons))
            previous = s.scalar(
                select(BillingTransfer).where(
                    BillingTransfer.company_id == company.id, BillingTransfer.state == TransferState.PENDING
                )
            )
            if previous is not None:
                # Allowing again replaces the pending permission with a fresh 48-hour window;
                # if another allow, a completion or a revoke got there first, this one says so.
                try:
                    self._transition(s, BillingTransfer, previous.id, [TransferState.PENDING], TransferState.SUPERSEDED,
                                     decided_at=now)
                except TransitionLost:
                    raise self._changed(s, company.id, previous) from None
            transfer = BillingTransfer(
                company_id=company.id,
                firm_id=firm.id,
                authorized_by=normalise_email(actor_email),
                authorized_at=now,
                expires_at=now + self._policy.transfer_window,
                state=TransferState.PENDING,
                nonce=self._signer.nonce(),
            )
            s.add(transfer)
            try:
                with s.begin_nested():
                    s.flush()
            except IntegrityError:
                # Another permission was given at the same moment (one pending per company).
                raise self._changed(s, company.id, None) from None
            url = self._url(transfer)
            self._notify_staff(s, firm, "transfer_allowed", self._mail_context(company, transfer, url), company.id)
            self._event(
                s, "transfer.allowed", actor_email, channel, firm_id=firm.id, company_id=company.id,
                transfer_id=transfer.id, replaced=previous.id if previous else None,
            )
            s.flush()
            view = self._view(transfer)
            return TransferView(**{**view.__dict__, "url": url})

    def revoke(self, company_id: int, actor_email: str, channel: str = "link") -> TransferView:
        with self._transaction() as s:
            company = s.get(Company, company_id)
            if company is None:
                raise NotFound("company.missing")
            if normalise_email(actor_email) != company.admin_email:
                raise NotAllowed("transfer.not_primary_admin")
            transfer = s.scalar(
                select(BillingTransfer).where(
                    BillingTransfer.company_id == company.id, BillingTransfer.state == TransferState.PENDING
                )
            )
            if transfer is None:
                raise InvalidState("transfer.nothing_to_revoke")
            self._decide(s, transfer, TransferState.REVOKED, actor_email)
            self._notify_staff(s, transfer.firm, "transfer_revoked", self._mail_context(company, transfer, None), company.id)
            self._event(s, "transfer.revoked", actor_email, channel, firm_id=transfer.firm_id, company_id=company.id)
            return self._view(transfer)

    def _changed(self, s: Session, company_id: int, previous: BillingTransfer | None) -> TransferChanged:
        """The answer to an allow that lost a race: what the company's transfer is now."""
        pending = s.scalar(
            select(BillingTransfer)
            .where(BillingTransfer.company_id == company_id, BillingTransfer.state == TransferState.PENDING)
            .execution_options(populate_existing=True)
        )
        if pending is not None:
            return TransferChanged(self._view(pending))
        if previous is not None:
            return TransferChanged(self._view(previous))
        return TransferChanged(None)

    def revoke_by_name(self, company_name: str, channel: str = "cli") -> TransferView:
        with self._sessions() as s:
            company = self._company_by_name(s, company_name)
            company_id, admin = company.id, company.admin_email
        return self.revoke(company_id, admin, channel)

    # -- the firm completes or declines -------------------------------------------

    def _from_token(self, s: Session, token: str) -> BillingTransfer:
        return self._row_from_token(
            s, Purpose.TRANSFER, token, BillingTransfer, what="billing transfer",
            max_age=self._policy.transfer_window, expired_ok=True,
        )

    def open(self, token: str) -> TransferView:
        """What a Complete transfer link shows (reads only)."""
        with self._sessions() as s:
            return self._view(self._from_token(s, token))

    def _decide(self, s: Session, transfer: BillingTransfer, state: TransferState, by: str) -> None:
        """Leave "pending", once. Completing, declining and revoking must do it before the
        deadline; the sweep's expiry only after it (so the two never both happen)."""
        now = self._now()
        deadline = BillingTransfer.expires_at <= now if state == TransferState.EXPIRED else BillingTransfer.expires_at > now
        try:
            self._transition(s, BillingTransfer, transfer.id, [TransferState.PENDING], state, where=[deadline],
                             decided_at=now, decided_by=by)
        except TransitionLost:
            raise TransferUnavailable(self._view(transfer)) from None

    def _pending_for_member(self, s: Session, token: str, user_id: int) -> tuple[BillingTransfer, User]:
        transfer = self._from_token(s, token)
        view = self._view(transfer)
        if view.status != "pending":
            raise TransferUnavailable(view)
        user = s.get(User, user_id)
        if user is None or not self._is_member(s, user.id, transfer.firm_id):
            raise NotAllowed("firm.not_member_transfer", firm=transfer.firm.name)
        return transfer, user

    def complete(self, token: str, user_id: int, channel: str = "link") -> TransferView:
        with self._transaction() as s:
            transfer, user = self._pending_for_member(s, token, user_id)
            company, firm = transfer.company, transfer.firm
            # The rules are checked again now: QuickBooks Time may have been attached since.
            reasons = self._reasons(s, company, firm, None)
            if reasons:
                raise TransferRefused(Eligibility(firm.id, firm.name, reasons))
            self._decide(s, transfer, TransferState.COMPLETED, user.email)
            company.subscription = "wholesale"
            company.billing_firm_id = firm.id
            transition_all(s, Client, [Client.company_id == company.id, Client.firm_id == firm.id], list(ClientStatus),
                           ClientStatus.ACTIVE, billing="wholesale")
            self._notify_company_admin(
                s, company, "transfer_completed",
                {"firm": firm.name, "completed_by": user.name, "completed_at": transfer.decided_at},
                firm_id=firm.id,
            )
            self._event(s, "transfer.completed", user.email, channel, firm_id=firm.id, company_id=company.id)
            return self._view(transfer)

    def decline(self, token: str, user_id: int, channel: str = "link") -> TransferView:
        with self._transaction() as s:
            transfer, user = self._pending_for_member(s, token, user_id)
            self._decide(s, transfer, TransferState.DECLINED, user.email)
            self._notify_company_admin(
                s, transfer.company, "transfer_declined", {"firm": transfer.firm.name, "declined_by": user.name},
                firm_id=transfer.firm_id,
            )
            self._event(
                s, "transfer.declined", user.email, channel, firm_id=transfer.firm_id, company_id=transfer.company_id
            )
            return self._view(transfer)

    # -- deadlines ----------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Remind 12 hours before the deadline; expire at the deadline. Idempotent."""
        now = self._now()
        counts = {"transfer_reminders": 0, "transfers_expired": 0}
        for transfer_id in self.due_transfers(now):
            done = self.sweep_transfer(transfer_id, now)
            if done:
                counts[done] += 1
        return counts

    def due_transfers(self, now: datetime) -> list[int]:
        """Pending permissions past their deadline, or in the reminder window and not yet reminded.

        A decided permission (expired, completed…) is no longer pending and a reminded one waits
        for its deadline, so an idle pass selects nothing.
        """
        reminded = select(SentReminder.id).where(
            SentReminder.kind == "transfer_reminder", SentReminder.ref_id == BillingTransfer.id
        ).exists()
        with self._sessions() as s:
            return list(s.scalars(
                select(BillingTransfer.id).where(
                    BillingTransfer.state == TransferState.PENDING,
                    BillingTransfer.expires_at <= now + self._policy.transfer_reminder_before,
                    or_(BillingTransfer.expires_at <= now, ~reminded),
                )
            ).all())

    def sweep_transfer(self, transfer_id: int, now: datetime) -> str | None:
        """One permission's reminder or expiry, in its own transaction; None if nothing was due.

        Another instance racing on the same row loses cleanly (its conditional update or reminder key fails).
        """
        try:
            with self._transaction() as s:
                return self._sweep_one(s, transfer_id, now)
        except (TransferUnavailable, _NothingDue):
            return None

    def _sweep_one(self, s: Session, transfer_id: int, now: datetime) -> str:
        transfer = s.get(BillingTransfer, transfer_id)
        if transfer is None or transfer.state != TransferState.PENDING:
            raise _NothingDue()
        company, firm = transfer.company, transfer.firm
        if now >= transfer.expires_at:
            self._decide(s, transfer, TransferState.EXPIRED, "scheduler")
            context = self._mail_context(company, transfer, None)
            self._notify_staff(s, firm, "transfer_expired_firm", context, company.id)
            self._notify_company_admin(s, company, "transfer_expired_client", context, firm_id=firm.id)
            self._event(s, "transfer.expired", "scheduler", "scheduler", firm_id=firm.id, company_id=company.id)
            return "transfers_expired"
        if not self._first_time(s, "transfer_reminder", transfer.id):
            raise _NothingDue()
        self._notify_staff(s, firm, "transfer_reminder", self._mail_context(company, transfer, self._url(transfer)), company.id)
        self._event(s, "transfer.reminded", "scheduler", "scheduler", firm_id=firm.id, company_id=company.id)
        return "transfer_reminders"

    # -- reading ------------------------------------------------------------------

    def list(self) -> list[TransferView]:
        with self._sessions() as s:
            return [self._view(t) for t in s.scalars(select(BillingTransfer).order_by(BillingTransfer.id))]

    def pending_for_company(self, company_id: int) -> TransferView | None:
        with self._sessions() as s:
            transfer = s.scalar(
                select(BillingTransfer).where(
                    BillingTransfer.company_id == company_id, BillingTransfer.state == TransferState.PENDING
                )
            )
            return self._view(transfer) if transfer else None

    def _url(self, transfer: BillingTransfer) -> str:
        return self._links.transfer(self._signer.sign(Purpose.TRANSFER, [transfer.id, transfer.nonce]))

    def _mail_context(self, company: Company, transfer: BillingTransfer, url: str | None) -> dict[str, Any]:
        context: dict[str, Any] = {
            "company": company.name,
            "firm": transfer.firm.name,
            "authorized_by": self._authorized_by(company, transfer),
            "authorized_at": transfer.authorized_at,
            "expires_at": transfer.expires_at,
        }
        if url:
            context["url"] = url
        return context

    @staticmethod
    def _authorized_by(company: Company, transfer: BillingTransfer) -> str:
        """Who gave the permission, as the emails name a person: "Julie Roy (julie@roy.example)" when it was
        the company's primary admin (whose name is on file), else the address alone (an admin since replaced,
        or a contact not yet primary admin, whose name is still the company's)."""
        name = admin_greeting_name(company.admin_name, company.name)  # not the company's name standing in
        if name and normalise_email(company.admin_email) == transfer.authorized_by:
            return f"{name} ({transfer.authorized_by})"
        return transfer.authorized_by

    def _view(self, transfer: BillingTransfer) -> TransferView:
        status = transfer.state
        if status == "pending" and self._now() >= transfer.expires_at:
            status = "expired"
        return TransferView(
            id=transfer.id,
            company=transfer.company.name,
            company_id=transfer.company_id,
            firm=transfer.firm.name,
            firm_id=transfer.firm_id,
            state=transfer.state,
            status=status,
            authorized_by=transfer.authorized_by,
            authorized_at=transfer.authorized_at,
            expires_at=transfer.expires_at,
            decided_at=transfer.decided_at,
            decided_by=transfer.decided_by,
        )
