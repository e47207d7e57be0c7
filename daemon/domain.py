"""What every part of the domain shares: its dependencies, its numbers, and small helpers.

The domain is split by flow — ``roster`` (firms, staff, companies,
invitations: flow 1), ``transfers`` (billing transfer: flow 2) and
``onboarding`` (new clients, trials, setup: flows 3 and 4) — and each part is
a ``DomainService`` over the same ``DomainContext``. Adapters call these
services; nothing else writes the tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ContextManager, Iterator, NamedTuple, Protocol, Sequence, TypeVar

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.interfaces import ORMOption

from daemon.clock import Clock
from daemon.db import dialect_insert, write_transaction
from daemon.errors import CabinetError, InvalidInput, LinkExpired, LinkTampered, NotAllowed, NotFound
from daemon.links import Links
from daemon.models import Client, Company, Event, Firm, Membership, RequestKey, SentReminder, User
from daemon.names import name_key
from daemon.notices import Notice, Notifier
from daemon.passwords import Passwords
from daemon.tokens import LinkSigner, Purpose
from daemon.transitions import Checkpoint, Row, no_checkpoint, transition
from daemon.views import ClientView, CompanyView, FirmView, UserView
from mailer.headers import describe_character, unsafe_character

Linked = TypeVar("Linked")


class LinkRef(NamedTuple):
    """A verified link's payload: the row id it names, the value bound to it, and whether its
    signature is past its age (a page may still show what became of the row). A named tuple: built
    on every link's request, where a frozen dataclass's ``__init__`` (``object.__setattr__`` per
    field) was 2 % of the link page's event loop."""

    id: int
    bound: object
    expired: bool


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
    # A second press of the same button (same link, same fields) this soon gets the first result.
    repeat_window: timedelta = timedelta(minutes=10)
    # Invitations a primary admin may send from a manage link per company per 24 hours.
    manage_invitations_per_day: int = 5


@dataclass(frozen=True)
class DomainContext:
    sessions: sessionmaker[Session]
    notifier: Notifier
    signer: LinkSigner
    links: Links
    passwords: Passwords
    clock: Clock
    policy: Policy
    # Called between a transition's read and its guarded write (see daemon.transitions).
    checkpoint: Checkpoint = field(default=no_checkpoint)


def request_key(*parts: object) -> str:
    """An idempotency key from what makes two requests the same (a link, an action, its fields)."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()


# ``json.dumps(detail, default=str, sort_keys=True)``'s encoder, built once rather than for every event (it
# keeps no state between calls): the same text.
_EVENT_DETAIL = json.JSONEncoder(default=str, sort_keys=True)

# What a link names, as the code of "this link does not match any …".
_NO_ROW = {
    "invitation": "link.no_invitation",
    "company": "link.no_company",
    "trial": "link.no_trial",
    "billing transfer": "link.no_transfer",
}


class FirmRequired(InvalidInput):
    """The person belongs to several firms and did not say which one: Cabinet does not guess."""

    def __init__(self, firms: tuple[str, ...]) -> None:
        super().__init__("firm.choose_for_client", firms=", ".join(firms))
        self.firms = firms


def normalise_email(address: str) -> str:
    """Validate an address and return the form Cabinet compares on (case-insensitive)."""
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email.invalid", address=address, detail=str(exc)) from None
    return result.normalized.lower()


def clean_name(name: str) -> str:
    """A name as people typed it, refused if it holds what must never reach a header or a screen.

    Line breaks, tabs, NUL, ESC and other control characters, and bidi overrides
    are refused here, at input, with the character named; see ``mailer.headers``
    for the defence at output.
    """
    unsafe = unsafe_character(name)
    if unsafe is not None:
        raise InvalidInput("name.unsafe_character", character=describe_character(unsafe))
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidInput("name.empty")
    if len(cleaned) > 200:
        raise InvalidInput("name.too_long")
    return cleaned


# Emails to a client admin that ask them to act (invite again, allow again): they carry a fresh manage link.
ASK_COMPANY_ADMIN = frozenset(
    {"invitation_declined", "invitation_expired", "invitation_bounced", "transfer_expired_client", "transfer_declined"}
)


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

    @property
    def context(self) -> DomainContext:
        return self._ctx

    def _transaction(self) -> ContextManager[Session]:
        return write_transaction(self._sessions)

    def _transition(
        self,
        s: Session,
        model: type[Row],
        row_id: int,
        expected: Iterable[StrEnum],
        to: StrEnum,
        *,
        where: Iterable[ColumnElement[bool]] = (),
        **values: Any,
    ) -> None:
        """The one way a state changes (daemon.transitions.transition); raises TransitionLost."""
        transition(s, model, row_id, expected, to, where=where, checkpoint=self._ctx.checkpoint, **values)

    def _row_from_token(
        self,
        s: Session,
        purpose: Purpose,
        token: str,
        model: type[Linked],
        *,
        what: str,
        max_age: timedelta,
        expired_ok: bool = False,
        tag: str | None = None,
        bound: str | None = "nonce",
        mismatch: Callable[[Linked, object], CabinetError] | None = None,
        options: Sequence[ORMOption] = (),
    ) -> Linked:
        """The row a signed link names: the one resolver from a token to its row.

        The payload is ``[tag?, id, value?]``: ``tag`` tells links of one purpose
        apart, ``value`` must still equal the row's ``bound`` attribute (a nonce
        that changes when a link is replaced, or the address the link was issued
        to). With ``expired_ok`` an expired signature still names its row, so the
        page can say what became of it.
        """
        ref = self._link_ref(purpose, token, max_age=max_age, expired_ok=expired_ok, tag=tag, bound=bound)
        row = s.get(model, ref.id, options=options)  # options: eager loads, one statement
        if row is None:
            raise LinkTampered(_NO_ROW.get(what, "link.invalid"))
        if bound is not None and getattr(row, bound) != ref.bound:
            if mismatch is not None:
                raise mismatch(row, ref.bound)
            raise LinkTampered(_NO_ROW.get(what, "link.invalid"))
        return row

    def _link_ref(
        self,
        purpose: Purpose,
        token: str,
        *,
        max_age: timedelta,
        expired_ok: bool = False,
        tag: str | None = None,
        bound: str | None = "nonce",
    ) -> LinkRef:
        """What a signed link names, checked once: a read that fetches plain rows (a hot page) compares
        ``bound`` itself, as ``_row_from_token`` does."""
        expired = False
        try:
            payload = self._signer.verify(purpose, token, max_age=max_age)
        except LinkExpired as exc:
            if not expired_ok:
                raise
            payload, expired = exc.payload, True
        parts = list(payload) if isinstance(payload, list) else []
        if tag is not None:
            if not parts or parts[0] != tag:
                raise LinkTampered("link.invalid")
            parts = parts[1:]
        if len(parts) != (2 if bound else 1) or not isinstance(parts[0], int) or isinstance(parts[0], bool):
            raise LinkTampered("link.invalid")
        return LinkRef(parts[0], parts[1] if bound else None, expired)

    def _repeated(self, s: Session, key: str | None) -> tuple[bool, int | None]:
        """Claim an idempotency key: (False, None) for a first press, (True, result id) for a repeat.

        A key older than the window is a new request. Two racing presses queue on
        the key's primary key; the second reads what the first recorded.
        """
        if key is None:
            return False, None
        now = self._clock.now()
        # Keys past the window mean nothing any more (this one included): the table stays small.
        s.execute(delete(RequestKey).where(RequestKey.created_at <= now - self._policy.repeat_window))
        try:
            with s.begin_nested():
                s.add(RequestKey(key=key, created_at=now))
                s.flush()
        except IntegrityError:
            first = s.scalar(select(RequestKey.result_id).where(RequestKey.key == key))
            return True, first
        return False, None

    def _record_result(self, s: Session, key: str | None, result_id: int) -> None:
        if key is not None:
            s.execute(update(RequestKey).where(RequestKey.key == key).values(result_id=result_id))

    def _event(self, s: Session, kind: str, actor: str, channel: str, **fields: Any) -> None:
        """Add an event to the session (its columns and detail as ``_event_values`` takes them)."""
        s.add(Event(**self._event_values(kind, actor, channel, **fields)))

    def _event_values(
        self,
        kind: str,
        actor: str,
        channel: str,
        *,
        firm_id: int | None = None,
        company_id: int | None = None,
        client_id: int | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """An event row's columns (``_event`` adds it to a session; a Core write inserts them)."""
        return {
            "at": self._clock.now(), "kind": kind, "actor": actor, "channel": channel, "firm_id": firm_id,
            "company_id": company_id, "client_id": client_id,
            "detail": _EVENT_DETAIL.encode(detail),
        }

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
        self._notifier.queue(s, self._company_admin_notice(company, template, context, auto=auto, firm_id=firm_id))

    def _company_admin_notice(
        self, company: CompanyFacts, template: str, context: dict[str, Any], *, auto: bool = True,
        firm_id: int | None = None,
    ) -> Notice:
        """The email to a company's primary admin (``company``: the row, or a Core row of its columns)."""
        if template in ASK_COMPANY_ADMIN and "manage_url" not in context:
            token = self._signer.sign(Purpose.MANAGE, ["company", company.id, company.admin_email])
            context = {**context, "manage_url": self._links.manage(token)}
        return Notice(
            template=template,
            to=company.admin_email,
            to_name=admin_greeting_name(company.admin_name, company.name),
            locale=company.admin_locale,
            timezone=company.admin_timezone,
            context={"company": company.name, **context},
            auto_submitted=auto,
            company_id=company.id,
            firm_id=firm_id,
            audience="company_admin",
        )

    def _notify_staff(
        self, s: Session, firm: Firm, template: str, context: dict[str, Any], company_id: int | None = None
    ) -> None:
        """One email per member of the firm, each in their own language and time zone."""
        for notice in self._staff_notices(firm.id, firm.name, self._firm_staff(s, firm), template, context, company_id):
            self._notifier.queue(s, notice)

    def _staff_notices(
        self, firm_id: int, firm_name: str, members: Iterable[StaffFacts], template: str, context: dict[str, Any],
        company_id: int | None = None,
    ) -> Iterator[Notice]:
        """The emails to a firm's staff (``members``: ``_firm_staff``, or Core rows of ``STAFF_TOLD``)."""
        for member in members:
            yield Notice(
                template=template,
                to=member.email,
                to_name=member.name,
                locale=member.locale,
                timezone=member.timezone,
                context={"firm": firm_name, "roster_url": self._links.home(), **context},
                company_id=company_id,
                firm_id=firm_id,
                audience="firm_staff",
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
            raise NotFound("firm.not_found", name=name)
        return firm

    def _company_by_name(self, s: Session, name: str) -> Company:
        company = s.scalar(select(Company).where(Company.name_key == name_key(name)))
        if company is None:
            raise NotFound("company.not_found", name=name)
        return company

    def _user_by_email(self, s: Session, email: str) -> User:
        user = s.scalar(select(User).where(User.email == normalise_email(email)))
        if user is None:
            raise NotFound("staff.not_found", email=email)
        return user

    def _chosen_firm(self, s: Session, user: User | None, firm_id: int | None) -> Firm:
        """The firm a staff member (or, with ``user`` None, the operator) acts for: the one named,
        or the only one there is. Never a guess.

        One rule for every channel (accepting an invitation, adding a client; link,
        reply or CLI): several firms and none named is refused with ``FirmRequired``.
        """
        query = select(Firm).order_by(Firm.name_key)
        if user is not None:
            query = query.join(Membership).where(Membership.user_id == user.id)
        return choose_firm(s.scalars(query).all(), user.email if user is not None else None, firm_id)

    def _firm_staff(self, s: Session, firm: Firm) -> Iterator[User]:
        yield from s.scalars(select(User).join(Membership).where(*told_staff(firm.id)).order_by(User.id))

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
            disabled_at=user.disabled_at,
        )

    def _payment_url(self, company_id: int) -> str:
        """The direct-discount client's link to add payment details."""
        return self._links.payment(self._signer.sign(Purpose.PAYMENT, [company_id]))

    def _now(self) -> datetime:
        return self._clock.now()


def inviter_name(admin_email: str, admin_name: str, company: str, invited_by: str) -> str | None:
    """The name of an invitation's sender (``invited_by``) while they are still the company's primary admin
    and have a name of their own (``admin_greeting_name``); None: pages name them by address alone.
    The link page's statement reads the same rule in SQL (``roster._invitation_page``)."""
    return (admin_greeting_name(admin_name, company) or None) if admin_email == invited_by else None


def admin_greeting_name(admin_name: str, company: str) -> str:
    """The name an email to a company's primary admin greets and addresses: none while it is the company's
    own, which stands in for the contact's until they become primary admin (as on the manage page), so
    "Hello," rather than "Hello Café Direct,"."""
    return "" if admin_name == company else admin_name


class CompanyFacts(Protocol):
    """What an email to a company's primary admin needs: a ``Company``, or a Core row with these columns."""

    id: int
    name: str
    admin_email: str
    admin_name: str
    admin_locale: str
    admin_timezone: str


class StaffFacts(Protocol):
    """What an email to a staff member needs: a ``User``, or a row with these columns (a Core row, an
    ``accept_read.StaffMember``). Read-only, as a row's are."""

    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def timezone(self) -> str: ...


class NamedFirm(Protocol):
    id: int
    name: str


Chosen = TypeVar("Chosen", bound=NamedFirm)


def choose_firm(firms: Sequence[Chosen], user_email: str | None, firm_id: int | None) -> Chosen:
    """The rule of ``DomainService._chosen_firm`` over firms already read (in name order): the one named,
    or the only one; ``user_email`` None for the operator."""
    if not firms:
        if user_email is not None:
            raise NotAllowed("staff.no_firm", email=user_email)
        raise NotFound("firm.none_yet")
    if firm_id is None:
        if len(firms) > 1:
            raise FirmRequired(tuple(f.name for f in firms))
        return firms[0]
    for firm in firms:
        if firm.id == firm_id:
            return firm
    if user_email is None:
        raise NotFound("firm.missing")
    raise NotAllowed("firm.not_member_connect")


def told_staff(firm_id: Any, users: Any = User.__table__) -> tuple[ColumnElement[bool], ...]:
    """Who of a firm's staff hears about its clients (a join of memberships and ``users``, or an alias of
    it): a disabled account no longer does."""
    return (Membership.firm_id == firm_id, users.c.disabled_at.is_(None))


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
