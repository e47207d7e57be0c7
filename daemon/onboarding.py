"""Flows 3 and 4: the firm adds a new client; trials, payment details and client setup.

Rule 4: payroll only on the wholesale plan; a direct-discount client must add
payment details before the 30-day trial ends, is reminded 7 days and 1 day
before, and loses the discount if not. Rule 5: "Make me the primary admin"
makes the signed-in staff member the company's primary admin. Rule 6: a
client without QuickBooks has no company and gets no email, but is on the
roster. Every new client lands on the roster once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon.db import rows_changed
from daemon.domain import KINDS, DomainService, admin_greeting_name, clean_name, client_view, name_key, normalise_email
from daemon.errors import AlreadyExists, InvalidInput, InvalidState, LinkTampered, NotAllowed, NotFound
from daemon.i18n import check_locale
from daemon.models import Client, ClientStatus, Company, Firm, Product, SentReminder, SetupInvitation, SetupState, User
from daemon.notices import Notice
from daemon.tokens import Purpose
from daemon.transitions import TransitionLost, transition_all
from daemon.views import ClientView

BILLING = ("wholesale", "direct", "none")
SUBSCRIPTION_OF = {"wholesale": "wholesale", "direct": "direct-discount"}


@dataclass(frozen=True)
class ProductView:
    id: str
    name: str
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind}


@dataclass(frozen=True)
class NewClient:
    """What the Add client form (or `cabinet client add`) says."""

    kind: str
    name: str
    billing: str
    email: str | None = None
    phone: str | None = None
    products: tuple[str, ...] = ()
    locale: str | None = None


@dataclass(frozen=True)
class SetupView:
    company: str
    firm: str
    email: str
    state: str
    status: str
    expires_at: datetime
    # The recipient's recorded language and zone: the page speaks as the email did.
    locale: str = ""
    timezone: str = ""


@dataclass(frozen=True)
class PaymentView:
    company: str
    company_id: int
    status: str  # "needed" | "on file" | "lapsed"
    trial_ends_at: datetime | None
    payment_details_at: datetime | None
    locale: str = ""
    timezone: str = ""


class Onboarding(DomainService):
    def products(self) -> list[ProductView]:
        with self._sessions() as s:
            return [ProductView(p.id, p.name, p.kind) for p in s.scalars(select(Product).order_by(Product.position))]

    def _check_products(self, s: Session, new: NewClient) -> list[Product]:
        wanted = list(dict.fromkeys(new.products))
        found = {p.id: p for p in s.scalars(select(Product).where(Product.id.in_(wanted)))} if wanted else {}
        unknown = [pid for pid in wanted if pid not in found]
        if unknown:
            raise InvalidInput("product.unknown", product=unknown[0])
        products = [found[pid] for pid in wanted]
        if new.billing == "none":
            if products:
                raise InvalidInput("products.none_for_no_subscription")
            return []
        quickbooks = [p for p in products if p.kind == "quickbooks"]
        payroll = [p for p in products if p.kind == "payroll"]
        if payroll and new.billing != "wholesale":
            raise NotAllowed("payroll.requires_wholesale")
        if len(quickbooks) != 1:
            raise InvalidInput("products.one_quickbooks")
        if len(payroll) > 1:
            raise InvalidInput("products.one_payroll")
        return products

    def add_client(
        self,
        firm_id: int | None,
        new: NewClient,
        primary_admin_user_id: int | None,
        actor: str,
        channel: str,
        acting_user_id: int | None = None,
    ) -> ClientView:
        """Add a client to the firm's roster (flows 3 and 4).

        ``acting_user_id`` is the signed-in staff member (None for an operator
        at the CLI); only a member of the firm adds clients to its roster.
        ``firm_id`` None means "the only firm there is": with several, the
        request is refused (``FirmRequired``), on every channel.
        """
        if new.kind not in KINDS:
            raise InvalidInput("kind.unknown", kind=new.kind)
        if new.billing not in BILLING:
            raise InvalidInput("billing.unknown", billing=new.billing)
        name = clean_name(new.name)
        email = normalise_email(new.email) if new.email else None
        phone = " ".join(new.phone.split())[:50] if new.phone else None
        locale = check_locale(new.locale or self._policy.default_locale)
        if new.billing == "none" and primary_admin_user_id is not None:
            raise InvalidInput("client.no_subscription_no_admin")
        if new.billing != "none" and primary_admin_user_id is None and email is None:
            raise InvalidInput("client.email_or_admin")
        now = self._now()
        with self._transaction() as s:
            acting = s.get(User, acting_user_id) if acting_user_id is not None else None
            if acting_user_id is not None and acting is None:
                raise NotAllowed("invitation.sign_in_add_client")
            if firm_id is None:
                firm = self._chosen_firm(s, acting, None)
            else:
                found = s.get(Firm, firm_id)
                if found is None:
                    raise NotFound("firm.missing")
                firm = found
            if acting is not None and not self._is_member(s, acting.id, firm.id):
                raise NotAllowed("firm.not_member_add_client", firm=firm.name)
            existing = s.scalar(select(Client).where(Client.firm_id == firm.id, Client.name_key == name_key(name)))
            if existing is not None:
                raise AlreadyExists("client.exists", firm=firm.name, name=existing.name)
            products = self._check_products(s, new)
            admin: User | None = None
            if primary_admin_user_id is not None:
                admin = s.get(User, primary_admin_user_id)
                if admin is None or not self._is_member(s, admin.id, firm.id):
                    raise NotAllowed("firm.not_member_primary_admin", firm=firm.name)
            company = None
            status = ClientStatus.ACTIVE
            if new.billing != "none":
                company = self._new_company(s, firm, new, name, email, admin, products, locale, now)
                if new.billing == "direct":
                    status = ClientStatus.TRIAL
                elif admin is None:
                    status = ClientStatus.SETUP_PENDING
            client = Client(
                firm_id=firm.id, kind=new.kind, name=name, name_key=name_key(name), email=email, phone=phone,
                billing=new.billing, status=status, connected_at=now if company else None, created_at=now,
                primary_admin_id=admin.id if admin else None, company_id=company.id if company else None,
            )
            s.add(client)
            try:
                with s.begin_nested():
                    s.flush()
            except IntegrityError:
                raise AlreadyExists("client.exists", firm=firm.name, name=name) from None
            if company is not None:
                self._welcome(s, firm, company, client, admin)
            self._event(
                s, "client.added", actor, channel, firm_id=firm.id, company_id=company.id if company else None,
                client_id=client.id, billing=new.billing, products=[p.id for p in products],
            )
            s.flush()
            return client_view(client, firm)

    def _new_company(
        self, s: Session, firm: Firm, new: NewClient, name: str, email: str | None, admin: User | None,
        products: list[Product], locale: str, now: datetime,
    ) -> Company:
        taken = s.scalar(select(Company).where(Company.name_key == name_key(name)))
        if taken is not None:
            raise AlreadyExists("company.exists_invite_admin", name=taken.name)
        company = Company(
            name=name, name_key=name_key(name), kind=new.kind,
            admin_email=admin.email if admin else str(email),
            admin_name=admin.name if admin else name,
            admin_locale=admin.locale if admin else locale,
            admin_timezone=admin.timezone if admin else self._policy.default_timezone,
            subscription=SUBSCRIPTION_OF[new.billing], has_quickbooks_time=False, created_at=now,
            billing_firm_id=firm.id if new.billing == "wholesale" else None,
            trial_ends_at=now + self._policy.trial_length if new.billing == "direct" else None,
        )
        company.products = products
        s.add(company)
        s.flush()
        return company

    def _welcome(self, s: Session, firm: Firm, company: Company, client: Client, admin: User | None) -> None:
        """The emails a new client gets: an invitation to be primary admin, and payment details for a trial."""
        if admin is None and client.email:
            setup = SetupInvitation(
                company_id=company.id, firm_id=firm.id, email=client.email, nonce=self._signer.nonce(),
                state=SetupState.PENDING, created_at=self._now(), expires_at=self._now() + self._policy.setup_ttl,
            )
            s.add(setup)
            s.flush()
            url = self._links.setup(self._signer.sign(Purpose.SETUP, [setup.id, setup.nonce]))
            self._notify_company_admin(
                s, company, "client_setup", {"firm": firm.name, "url": url, "expires_at": setup.expires_at}, auto=False,
                firm_id=firm.id,
            )
        if company.subscription == "direct-discount":
            self._payment_notice(s, company, client, "payment_details_request", {})

    def queue_payment_notice(self, s: Session, company: Company, client: Client) -> None:
        """The payment-details request again, in the caller's transaction (a client page's "resend")."""
        self._payment_notice(s, company, client, "payment_details_request", {})

    def _payment_notice(self, s: Session, company: Company, client: Client, template: str, extra: dict[str, Any]) -> None:
        # The client pays: the payment link goes to the client's contact when there is one,
        # else to the primary admin (a staff member who chose "Make me the primary admin").
        url = self._payment_url(company.id)
        to = client.email or company.admin_email
        self._notifier.queue(
            s,
            Notice(
                template=template, to=to,
                to_name=admin_greeting_name(company.admin_name if to == company.admin_email else client.name, company.name),
                locale=company.admin_locale, timezone=company.admin_timezone,
                context={"company": company.name, "url": url, "trial_ends_at": company.trial_ends_at, **extra},
                auto_submitted=template != "payment_details_request",
                company_id=company.id,
                firm_id=client.firm_id,
                audience="company_admin",
            ),
        )

    # -- client setup (becoming primary admin) ------------------------------------

    def _setup_from_token(self, s: Session, token: str) -> SetupInvitation:
        return self._row_from_token(
            s, Purpose.SETUP, token, SetupInvitation, what="invitation", max_age=self._policy.setup_ttl, expired_ok=True,
        )

    def _setup_view(self, setup: SetupInvitation) -> SetupView:
        status = setup.state
        if status == "pending" and self._now() >= setup.expires_at:
            status = "expired"
        return SetupView(
            setup.company.name, setup.firm.name, setup.email, setup.state, status, setup.expires_at,
            setup.company.admin_locale, setup.company.admin_timezone,
        )

    def open_setup(self, token: str) -> SetupView:
        with self._sessions() as s:
            return self._setup_view(self._setup_from_token(s, token))

    def accept_setup(self, token: str, admin_name: str, channel: str = "link") -> SetupView:
        """The client's contact accepts to be the company's primary admin."""
        name = clean_name(admin_name)
        with self._transaction() as s:
            setup = self._setup_from_token(s, token)
            view = self._setup_view(setup)
            if view.status != "pending":
                raise InvalidState("invitation.unavailable", current=view, status=view.status)
            try:
                self._transition(s, SetupInvitation, setup.id, [SetupState.PENDING], SetupState.ACCEPTED,
                                 where=[SetupInvitation.expires_at > self._now()], decided_at=self._now())
            except TransitionLost as lost:
                raise InvalidState("invitation.already_accepted", current=lost.current) from None
            company = setup.company
            company.admin_email = setup.email
            company.admin_name = name
            transition_all(s, Client, [Client.company_id == company.id], [ClientStatus.SETUP_PENDING], ClientStatus.ACTIVE)
            self._notify_staff(
                s, setup.firm, "client_setup_completed",
                {"company": company.name, "admin_name": name, "admin_email": setup.email}, company.id,
            )
            self._event(s, "client.setup_completed", setup.email, channel, firm_id=setup.firm_id, company_id=company.id)
            return self._setup_view(setup)

    # -- payment details (direct discount) -----------------------------------------

    def _company_from_payment_token(self, s: Session, token: str) -> Company:
        company = self._row_from_token(
            s, Purpose.PAYMENT, token, Company, what="trial",
            max_age=self._policy.trial_length + timedelta(days=1), bound=None,
        )
        if company.subscription != "direct-discount":
            raise LinkTampered("link.no_trial")
        return company

    def _payment_view(self, company: Company) -> PaymentView:
        if company.payment_details_at is not None:
            status = "on file"
        elif company.trial_ends_at is not None and self._now() >= company.trial_ends_at:
            status = "lapsed"
        else:
            status = "needed"
        return PaymentView(
            company.name, company.id, status, company.trial_ends_at, company.payment_details_at,
            company.admin_locale, company.admin_timezone,
        )

    def open_payment(self, token: str) -> PaymentView:
        with self._sessions() as s:
            return self._payment_view(self._company_from_payment_token(s, token))

    def record_payment_details(self, token: str, name_on_card: str, channel: str = "link") -> PaymentView:
        """Record that payment details are on file (Cabinet stores no card data, only the fact)."""
        name = clean_name(name_on_card)
        with self._transaction() as s:
            company = self._company_from_payment_token(s, token)
            view = self._payment_view(company)
            if view.status != "needed":
                raise InvalidState("payment.on_file" if view.status == "on file" else "payment.lapsed")
            won = rows_changed(
                s,
                update(Company)
                .where(Company.id == company.id, Company.payment_details_at.is_(None))
                .values(payment_details_at=self._now(), payment_name=name)
            )
            if won != 1:
                raise InvalidState("payment.on_file")
            s.refresh(company)
            transition_all(s, Client, [Client.company_id == company.id, Client.billing == "direct"], list(ClientStatus),
                           ClientStatus.ACTIVE)
            for client in s.scalars(select(Client).where(Client.company_id == company.id)):
                self._notify_staff(s, client.firm, "payment_details_added", {"company": company.name}, company.id)
            self._event(s, "trial.payment_details_added", name, channel, company_id=company.id)
            return self._payment_view(company)

    # -- deadlines -------------------------------------------------------------------

    def sweep_trials(self) -> dict[str, int]:
        """Remind 7 days and 1 day before a trial ends; lapse the discount at the end. Idempotent."""
        now = self._now()
        counts = {"trial_reminders": 0, "discounts_lapsed": 0}
        for company_id in self.due_trials(now):
            done = self.sweep_trial(company_id, now)
            if done:
                counts[done] += 1
        return counts

    def due_trials(self, now: datetime) -> list[int]:
        """Trials whose next step (a reminder, the lapse) is due and not yet recorded.

        A lapsed trial has its "trial_lapsed" record and leaves the query; a reminded
        one waits for its next step. An idle pass selects nothing.
        """
        def done(kind: str) -> Any:
            return ~select(SentReminder.id).where(SentReminder.kind == kind, SentReminder.ref_id == Company.id).exists()

        steps = [and_(Company.trial_ends_at <= now, done("trial_lapsed"))]
        later = now
        for before in sorted(self._policy.trial_reminders_before):
            steps.append(and_(Company.trial_ends_at > later, Company.trial_ends_at <= now + before,
                              done(f"trial_reminder_{before.days}d")))
            later = now + before
        direct = select(Client.id).where(Client.company_id == Company.id, Client.billing == "direct").exists()
        with self._sessions() as s:
            return list(s.scalars(
                select(Company.id).where(
                    Company.subscription == "direct-discount",
                    Company.payment_details_at.is_(None),
                    direct,
                    or_(*steps),
                )
            ).all())

    def sweep_trial(self, company_id: int, now: datetime) -> str | None:
        """One trial's reminder or lapse, in its own transaction; None if nothing was due."""
        with self._transaction() as s:
            return self._sweep_trial(s, company_id, now)

    def _sweep_trial(self, s: Session, company_id: int, now: datetime) -> str | None:
        company = s.get(Company, company_id)
        if company is None or company.trial_ends_at is None or company.payment_details_at is not None:
            return None
        client = s.scalar(select(Client).where(Client.company_id == company.id, Client.billing == "direct"))
        if client is None:
            return None
        if now >= company.trial_ends_at:
            if not self._first_time(s, "trial_lapsed", company.id):
                return None
            transition_all(s, Client, [Client.company_id == company.id, Client.billing == "direct"], list(ClientStatus),
                           ClientStatus.DISCOUNT_LAPSED)
            context = {"company": company.name, "trial_ends_at": company.trial_ends_at}
            self._notify_staff(s, client.firm, "discount_lapsed_firm", context, company.id)
            self._payment_notice(s, company, client, "discount_lapsed_client", {})
            self._event(s, "trial.discount_lapsed", "scheduler", "scheduler", firm_id=client.firm_id, company_id=company.id)
            return "discounts_lapsed"
        # Only the nearest reminder is due; an earlier one missed while the daemon was down is skipped.
        for before in sorted(self._policy.trial_reminders_before):
            if now >= company.trial_ends_at - before:
                if not self._first_time(s, f"trial_reminder_{before.days}d", company.id):
                    return None
                days_left = math.ceil((company.trial_ends_at - now) / timedelta(days=1))
                self._payment_notice(s, company, client, "trial_reminder", {"days_left": days_left})
                self._event(s, "trial.reminded", "scheduler", "scheduler", company_id=company.id, days=before.days)
                return "trial_reminders"
        return None
