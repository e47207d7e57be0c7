"""What every part of the domain shares: its dependencies, its numbers, and small helpers.

The domain is split by flow — ``roster`` (firms, staff, companies,
invitations: flow 1), ``transfers`` (billing transfer: flow 2) and
``onboarding`` (new clients, trials, setup: flows 3 and 4) — and each part is
a ``DomainService`` over the same ``DomainContext``. Adapters call these
services; nothing else writes the tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ContextManager, Iterator

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.clock import Clock
from daemon.db import dialect_insert, write_transaction
from daemon.errors import InvalidInput, NotFound
from daemon.links import Links
from daemon.models import Client, Company, Event, Firm, Membership, SentReminder, User
from daemon.notices import Notice, Notifier
from daemon.passwords import Passwords
from daemon.tokens import LinkSigner, Purpose
from daemon.views import ClientView, CompanyView, FirmView, UserView

KINDS = ("business", "individual")


@dataclass(frozen=True)
class Policy:
    """The numbers in the rules. The 48-hour window and the 30-day trial come from the source
    document; the others are Cabinet's choices, documented in README.md."""

    invitation_ttl: timedelta
    default_locale: str
    default_timezone: str
    transfer_window: timedelta = timedelta(hours=48)
    transfer_reminder_before: timedelta = timedelta(hours=12)
    trial_length: timedelta = timedelta(days=30)
    trial_reminders_before: tuple[timedelta, ...] = (timedelta(days=7), timedelta(days=1))
    manage_link_ttl: timedelta = timedelta(hours=24)
    setup_ttl: timedelta = timedelta(days=14)


@dataclass(frozen=True)
class DomainContext:
    sessions: sessionmaker[Session]
    notifier: Notifier
    signer: LinkSigner
    links: Links
    passwords: Passwords
    clock: Clock
    policy: Policy


def normalise_email(address: str) -> str:
    """Validate an address and return the form Cabinet compares on (case-insensitive)."""
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"{address!r} is not a valid email address: {exc}") from None
    return result.normalized.lower()


def name_key(name: str) -> str:
    """The form names are compared on: case and inner spacing do not make a new entry."""
    key = " ".join(name.split()).casefold()
    if not key:
        raise InvalidInput("a name cannot be empty")
    return key


def clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidInput("a name cannot be empty")
    if len(cleaned) > 200:
        raise InvalidInput("a name can have at most 200 characters")
    return cleaned


class DomainService:
    def __init__(self, ctx: DomainContext) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._notifier = ctx.notifier
        self._signer = ctx.signer
        self._links = ctx.links
        self._passwords = ctx.passwords
        self._clock = ctx.clock
        self._policy = ctx.policy

    def _transaction(self) -> ContextManager[Session]:
        return write_transaction(self._sessions)

    def _event(
        self,
        s: Session,
        kind: str,
        actor: str,
        channel: str,
        *,
        firm_id: int | None = None,
        company_id: int | None = None,
        client_id: int | None = None,
        **detail: Any,
    ) -> None:
        s.add(
            Event(
                at=self._clock.now(),
                kind=kind,
                actor=actor,
                channel=channel,
                firm_id=firm_id,
                company_id=company_id,
                client_id=client_id,
                detail=json.dumps(detail, default=str, sort_keys=True),
            )
        )

    def _notify_company_admin(
        self,
        s: Session,
        company: Company,
        template: str,
        context: dict[str, Any],
        *,
        auto: bool = True,
        firm_id: int | None = None,
    ) -> None:
        self._notifier.queue(
            s,
            Notice(
                template=template,
                to=company.admin_email,
                to_name=company.admin_name,
                locale=company.admin_locale,
                timezone=company.admin_timezone,
                context={"company": company.name, **context},
                auto_submitted=auto,
                company_id=company.id,
                firm_id=firm_id,
                audience="company_admin",
            ),
        )

    def _notify_staff(
        self, s: Session, firm: Firm, template: str, context: dict[str, Any], company_id: int | None = None
    ) -> None:
        """One email per member of the firm, each in their own language and time zone."""
        for member in self._firm_staff(s, firm):
            self._notifier.queue(
                s,
                Notice(
                    template=template,
                    to=member.email,
                    to_name=member.name,
                    locale=member.locale,
                    timezone=member.timezone,
                    context={"firm": firm.name, **context},
                    company_id=company_id,
                    firm_id=firm.id,
                    audience="firm_staff",
                ),
            )

    def _first_time(self, s: Session, kind: str, ref_id: int) -> bool:
        """Record that reminder ``kind`` for ``ref_id`` is sent; False if it already was.

        The unique (kind, ref_id) key makes a sweep idempotent across restarts
        and instances: a second insert (even a concurrent one) inserts nothing, so nothing is sent twice.
        """
        statement = dialect_insert(s)(SentReminder).values(kind=kind, ref_id=ref_id, sent_at=self._clock.now())
        # RETURNING names the new row, or nothing when the key existed (row counts vary by driver).
        inserted = s.scalar(statement.on_conflict_do_nothing(index_elements=["kind", "ref_id"]).returning(SentReminder.id))
        return inserted is not None

    def _firm_by_name(self, s: Session, name: str) -> Firm:
        firm = s.scalar(select(Firm).where(Firm.name_key == name_key(name)))
        if firm is None:
            raise NotFound(f"no firm named {name!r} (see `cabinet firm list`)")
        return firm

    def _company_by_name(self, s: Session, name: str) -> Company:
        company = s.scalar(select(Company).where(Company.name_key == name_key(name)))
        if company is None:
            raise NotFound(f"no company named {name!r} (see `cabinet company list`)")
        return company

    def _user_by_email(self, s: Session, email: str) -> User:
        user = s.scalar(select(User).where(User.email == normalise_email(email)))
        if user is None:
            raise NotFound(f"no staff member with the address {email!r} (see `cabinet staff list`)")
        return user

    def _firm_staff(self, s: Session, firm: Firm) -> Iterator[User]:
        yield from s.scalars(select(User).join(Membership).where(Membership.firm_id == firm.id).order_by(User.id))

    def _is_member(self, s: Session, user_id: int, firm_id: int) -> bool:
        return (
            s.scalar(select(Membership.id).where(Membership.user_id == user_id, Membership.firm_id == firm_id))
            is not None
        )

    def _user_view(self, s: Session, user: User) -> UserView:
        firms = s.scalars(
            select(Firm).join(Membership).where(Membership.user_id == user.id).order_by(Firm.name_key)
        ).all()
        return UserView(
            user.id,
            user.email,
            user.name,
            user.locale,
            user.timezone,
            tuple(FirmView(f.id, f.name, f.email) for f in firms),
        )

    def _payment_url(self, company_id: int) -> str:
        """The direct-discount client's link to add payment details."""
        return self._links.payment(self._signer.sign(Purpose.PAYMENT, [company_id]))

    def _now(self) -> datetime:
        return self._clock.now()


def company_view(company: Company) -> CompanyView:
    return CompanyView(
        company.id,
        company.name,
        company.kind,
        company.admin_email,
        company.admin_name,
        company.admin_locale,
        company.subscription,
        company.has_quickbooks_time,
    )


def client_view(client: Client, firm: Firm) -> ClientView:
    company = client.company
    return ClientView(
        id=client.id,
        firm=firm.name,
        name=client.name,
        kind=client.kind,
        status=client.status,
        billing=client.billing,
        company=company.name if company else None,
        email=client.email,
        phone=client.phone,
        connected_at=client.connected_at,
        products=tuple(p.id for p in company.products) if company else (),
        trial_ends_at=company.trial_ends_at if company and client.billing == "direct" else None,
        primary_admin=(client.primary_admin.email if client.primary_admin else (company.admin_email if company else None)),
    )
