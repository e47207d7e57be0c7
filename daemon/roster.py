"""The roster domain: every rule of the source document, in one place.

Firms, their staff, client companies, invitations and the client roster.
Each public method is one transaction: the state change, its event and the
emails it causes (queued through the ``Notifier``) commit together or not at
all. Adapters (CLI, HTTP, SMTP replies, scheduler) call these methods and
never touch the tables themselves.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from sqlalchemy import Connection, Select, Text, and_, bindparam, case, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.interfaces import ORMOption

from daemon.accept_read import ACCEPT_READ, RosterEntry, entry_of, products_of, staff_of
from daemon.client_list import client_views
from daemon.clock import EARLIEST, INSTANT, LATEST
from daemon.db import (
    driver_commands, engine_of, pipelined, read_connections, rows_changed, savepoint, transaction_failed,
    write_connection,
)
from daemon.deliveries import KINDS as DELIVERY_KINDS, LinkFact, delivery, parse_detail
from daemon.transitions import Transition, TransitionLost
from daemon.domain import (
    KINDS,
    DomainService,
    inviter_name,
    clean_name,
    client_view,
    company_view,
    name_key,
    normalise_email,
)
from daemon.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotAllowed,
    LinkTampered,
    NotFound,
)
from daemon.i18n import check_locale, check_timezone
from daemon.link_opens import KnownOpenings, Opening, detail_text, invitation_detail, opened_before
from daemon.models import (
    Client,
    ClientStatus,
    Company,
    Event,
    Firm,
    Invitation,
    InvitationState,
    Membership,
    OutboxMessage,
    User,
    WebSession,
    search_key,
)
from daemon.notices import Notice
from daemon.prepared import PreparedRead
from daemon.prepared_write import PreparedWrite
from daemon.tokens import Purpose
from daemon.views import ClientView, CompanyView, FirmView, InvitationView, UserView

# Billing of a company that pays QuickBooks itself, as shown on the roster.
SUBSCRIPTION_BILLING = {"self-paid": "self-paid", "wholesale": "wholesale", "direct-discount": "direct", "none": "none"}


class InvitationUnavailable(InvalidState):
    """The invitation can no longer be acted on; ``view`` says what happened to it."""

    def __init__(self, view: InvitationView) -> None:
        super().__init__("invitation.unavailable", current=view, status=view.status)
        self.view = view


class WrongAccount(NotAllowed):
    """Signed in as someone other than the invited address."""

    def __init__(self, invited: str, signed_in: str) -> None:
        super().__init__("invitation.wrong_account", invited=invited, signed_in=signed_in)
        self.invited = invited
        self.signed_in = signed_in


@dataclass(frozen=True, init=False)
class AcceptResult:
    invitation: InvitationView
    client: ClientView

    def __init__(self, invitation: InvitationView, client: ClientView) -> None:
        # One C call, not the frozen dataclass's ``object.__setattr__`` per field (every accept makes one);
        # still frozen, equal and hashed as generated (tests/test_notice.py).
        self.__dict__.update(invitation=invitation, client=client)


@dataclass(frozen=True)
class RenewalResult:
    invitation: InvitationView
    already_requested: bool


def _invitation_page(opened: bool = True) -> Select[Any]:
    """The invitation link's page in one statement of plain rows: the invitation, the names it shows,
    the invited address's staff zone, and whether its opening is recorded (``opened``: else that column is
    left out, for a link known to be opened, and so is the bind); no row unless the link's nonce is the
    invitation's (binds: ``id``, ``nonce``, ``opened_detail``). Built once: an execution only binds (no
    construction, no cache key).

    The id and the nonce are compared, not selected: the link gives both, and each column of a row
    costs the driver about 2.7k instructions (Python 3.11's sqlite3 releases the GIL to read its type,
    and names it in the cursor's description), 2% of the read each."""
    inv, company, firm = Invitation.__table__, Company.__table__, Firm.__table__
    accepted, invited = User.__table__.alias("accepted_by"), User.__table__
    columns = [
        inv.c.company_id, inv.c.firm_id, inv.c.email, inv.c.invited_by, inv.c.state,
        inv.c.created_at, inv.c.expires_at, inv.c.decided_at, inv.c.superseded_by_id, inv.c.renewal_requested_at,
        company.c.name.label("company"), firm.c.name.label("firm"),
        accepted.c.name.label("accepted_by"), accepted.c.email.label("accepted_by_email"),
        # Who sent it, named as the email named them while they are still the company's primary admin
        # (``domain.inviter_name``'s rule: a firm-added company's name stands in for its contact's, no name).
        case((and_(company.c.admin_email == inv.c.invited_by, company.c.admin_name != company.c.name),
              company.c.admin_name)).label("invited_by_name"),
        # The page's dates are in the invited accountant's zone when signed out.
        select(invited.c.timezone).where(invited.c.email == inv.c.email).scalar_subquery().label("zone"),
    ]
    if opened:
        columns.append(opened_before(inv.c.company_id, bindparam("opened_detail", type_=Text)).label("opened"))
    return (
        select(*columns)
        .join(company, company.c.id == inv.c.company_id)
        .outerjoin(firm, firm.c.id == inv.c.firm_id)
        .outerjoin(accepted, accepted.c.id == inv.c.accepted_by_id)
        .where(inv.c.id == bindparam("id"), inv.c.nonce == bindparam("nonce"))
    )


_INVITATION_PAGE = _invitation_page()
# A link whose opening this process knows to be recorded (``link_opens.KnownOpenings``): the same row
# without the ``EXISTS`` and its column (callgrind, bench/callgrind_get.py: sqlite3's execute took 34k
# instructions a GET with them, 25k without).
_OPENED_INVITATION_PAGE = _invitation_page(opened=False)
# Where the page's row has the invited address's staff zone, and whether the link's opening is recorded:
# last, so that ``row[:INVITATION_PAGE_SHOWN]`` is what the page shows (the opening is not on it).
INVITATION_PAGE_ZONE = [column.key for column in _INVITATION_PAGE.selected_columns].index("zone")
_PAGE_OPENED = INVITATION_PAGE_SHOWN = [column.key for column in _INVITATION_PAGE.selected_columns].index("opened")
assert INVITATION_PAGE_SHOWN == len(_INVITATION_PAGE.selected_columns) - 1 == len(_OPENED_INVITATION_PAGE.selected_columns)


class InvitationLinkRow(NamedTuple):
    """An invitation link's page as read (``Roster.invitation_link_row``): the invitation's id, the page
    statement's row as the driver gave it, and what the link's first opening records (None: recorded
    already, or the link is past its age)."""

    id: int
    row: tuple[Any, ...]
    opening: Opening | None


def _user_with_firms() -> Select[Any]:
    """A staff member and their firms as ``_user_view`` shows them: a row per firm in name order (one row
    of NULL firm columns when none). Bind: ``id``."""
    user, membership, firm = User.__table__, Membership.__table__, Firm.__table__
    return (
        select(
            user.c.id, user.c.email, user.c.name, user.c.locale, user.c.timezone, user.c.disabled_at,
            firm.c.id.label("firm_id"), firm.c.name.label("firm_name"), firm.c.email.label("firm_email"),
        )
        .outerjoin(membership, membership.c.user_id == user.c.id)
        .outerjoin(firm, firm.c.id == membership.c.firm_id)
        .where(user.c.id == bindparam("id"))
        .order_by(firm.c.name_key)
    )


_USER_WITH_FIRMS = _user_with_firms()


def user_view_of(rows: Sequence[Any]) -> UserView:
    """A staff member from the rows of ``_user_with_firms`` (or a statement with its columns)."""
    user = rows[0]
    return UserView(
        user.id, user.email, user.name, user.locale, user.timezone,
        tuple(FirmView(row.firm_id, row.firm_name, row.firm_email) for row in rows if row.firm_id is not None),
        disabled_at=user.disabled_at,
    )


class _Replan(Exception):
    """Something an accept read before the write lock changed before its write: decide inside the lock."""


class _Undone(Exception):
    """A batch of one accept's transaction is to be rolled back (its outcome is decided already)."""


def _undone_outcome(exc: Exception) -> Exception | None:
    """What an accept undone by ``exc`` is told: None (decided again inside the lock) when its rows changed
    since its plan or it lost a race (a deadlock or serialization failure is not a failure), else ``exc``."""
    return None if isinstance(exc, _Replan) or _lost_race(exc) else exc


# PostgreSQL's SQLSTATEs for a transaction that lost a race with another one (deadlock detected,
# serialization failure): the statement is undone, and trying again decides it.
_RACE_LOST = frozenset({"40P01", "40001"})


def _lost_race(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) in _RACE_LOST


@dataclass(frozen=True, init=False)
class AcceptPlan:
    """An accept decided on a read connection (``Roster.plan_accept``), for its write to carry out."""

    read: Any  # a row of ACCEPT_READ: the company's columns (CompanyFacts), the invitation's, the user's
    firm_id: int
    firm_name: str
    client: RosterEntry | None  # the firm's roster entry for the company, if it has one
    products: tuple[str, ...]
    emails: list[dict[str, Any]]  # outbox rows, prepared (Notifier.prepare)
    now: datetime

    def __init__(self, read: Any, firm_id: int, firm_name: str, client: RosterEntry | None,
                 products: tuple[str, ...], emails: list[dict[str, Any]], now: datetime) -> None:
        # One C call, not the frozen dataclass's ``object.__setattr__`` per field (every accept makes one);
        # still frozen, equal and hashed as generated (tests/test_notice.py).
        self.__dict__.update(read=read, firm_id=firm_id, firm_name=firm_name, client=client, products=products,
                             emails=emails, now=now)



_WHEN = Invitation.__table__.c.decided_at.type  # the binds below are UTC datetimes (UTCDateTime)

# The accept's state change, built once: still pending, unexpired, the same link, and the user still a
# member of the firm it accepts for (a removal may have committed since the read). It returns no row:
# the accept's result is what the plan read plus what this writes, so the one column of that read that
# can change meanwhile (a renewal request's time) is checked too. Its row count says who won.
_ACCEPT = Transition(
    Invitation, [InvitationState.PENDING], InvitationState.ACCEPTED,
    where=[
        Invitation.nonce == bindparam("b_nonce"),
        Invitation.expires_at > bindparam("b_now", type_=_WHEN),
        Invitation.renewal_requested_at.is_not_distinct_from(bindparam("b_renewal", type_=_WHEN)),
        exists().where(Membership.user_id == bindparam("b_user"), Membership.firm_id == bindparam("b_firm")),
    ],
    values={
        "decided_at": bindparam("b_decided", type_=_WHEN), "firm_id": bindparam("b_firm"),
        "accepted_by_id": bindparam("b_user"),
    },
    returning=False,
)

# Reconnecting the entry the read found, if it is still that entry; keyed by how it was found: by its
# company (True), or by its name with no company (False).
_RECONNECT = {
    found_by_company: Transition(
        Client, list(ClientStatus), ClientStatus.ACTIVE,
        where=[
            Client.firm_id == bindparam("b_firm"),
            Client.company_id == bindparam("b_company") if found_by_company
            else and_(Client.company_id.is_(None), Client.name_key == bindparam("b_name_key")),
        ],
        values={
            "company_id": bindparam("b_company"), "billing": bindparam("b_billing"),
            "connected_at": func.coalesce(Client.__table__.c.connected_at, bindparam("b_now", type_=_WHEN)),
        },
    )
    for found_by_company in (True, False)
}

# A new roster entry, unless one with the same company or name got there first (both unique per firm).
# The accept's inserts, compiled once per engine and run on the write connection's cursor
# (``PreparedWrite``): the columns each execution gives, search_key included (its Python default
# needs an execution context).
_CLIENT_COLUMNS = ("firm_id", "company_id", "kind", "name", "name_key", "email", "billing", "status",
                   "connected_at", "created_at", "search_key")
_CLIENT_INSERT = {
    name: PreparedWrite(
        dialect.insert(Client.__table__).on_conflict_do_nothing().returning(*Client.__table__.columns),
        _CLIENT_COLUMNS,
    )
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}

_EVENT_INSERT = PreparedWrite(
    insert(Event.__table__),
    ("at", "kind", "actor", "channel", "firm_id", "company_id", "client_id", "detail"),  # Roster._event_values
)


class Roster(DomainService):
    """Firms, staff, companies, invitations (flow 1) and the roster itself."""

    # -- firms and staff --------------------------------------------------

    def add_firm(self, name: str, email: str) -> FirmView:
        name = clean_name(name)
        address = normalise_email(email)
        with self._transaction() as s:
            existing = s.scalar(select(Firm).where(Firm.name_key == name_key(name)))
            if existing:
                raise AlreadyExists("firm.exists", name=existing.name)
            firm = Firm(name=name, name_key=name_key(name), email=address, created_at=self._clock.now())
            s.add(firm)
            s.flush()
            self._event(s, "firm.added", "operator", "cli", firm_id=firm.id, name=name)
            return FirmView(firm.id, firm.name, firm.email)

    def find_firm(self, name: str) -> FirmView:
        with self._sessions() as s:
            firm = self._firm_by_name(s, name)
            return FirmView(firm.id, firm.name, firm.email)

    def find_staff(self, email: str) -> UserView:
        with self._sessions() as s:
            return self._user_view(s, self._user_by_email(s, email))

    def list_firms(self) -> list[FirmView]:
        with self._sessions() as s:
            return [FirmView(f.id, f.name, f.email) for f in s.scalars(select(Firm).order_by(Firm.name_key))]

    def add_staff(
        self,
        email: str,
        name: str,
        firm_names: list[str],
        password: str,
        locale: str | None = None,
        timezone: str | None = None,
        role: str = "staff",
    ) -> UserView:
        """Create a staff account (an accountant) belonging to one or more firms."""
        address = normalise_email(email)
        name = clean_name(name)
        if not firm_names:
            raise InvalidInput("staff.needs_firm")
        locale = check_locale(locale or self._policy.default_locale)
        timezone = check_timezone(timezone or self._policy.default_timezone)
        password_hash = self._passwords.hash(password)
        with self._transaction() as s:
            firms = [self._firm_by_name(s, firm_name) for firm_name in dict.fromkeys(firm_names)]
            if s.scalar(select(User).where(User.email == address)):
                raise AlreadyExists("staff.exists", email=address)
            user = User(
                email=address,
                name=name,
                password_hash=password_hash,
                locale=locale,
                timezone=timezone,
                created_at=self._clock.now(),
            )
            s.add(user)
            s.flush()
            for firm in firms:
                s.add(Membership(user_id=user.id, firm_id=firm.id, role=role))
                self._event(s, "staff.added", "operator", "cli", firm_id=firm.id, email=address)
            s.flush()
            return self._user_view(s, user)

    def get_user(self, user_id: int) -> UserView:
        """The signed-in staff member, read on every signed-in request: one statement of plain rows
        (the user with each firm, in name order), no Session and no BEGIN."""
        rows = self._user_with_firms.all(id=user_id)
        if not rows:
            raise NotFound("staff.missing")
        return user_view_of(rows)

    def update_profile(self, user_id: int, name: str, locale: str, timezone: str, channel: str = "link") -> UserView:
        """A staff member's own name, language and time zone."""
        name = clean_name(name)
        locale = check_locale(locale)
        timezone = check_timezone(timezone)
        with self._transaction() as s:
            changed = rows_changed(
                s, update(User).where(User.id == user_id).values(name=name, locale=locale, timezone=timezone)
            )
            if not changed:
                raise NotFound("staff.missing")
            user = s.get(User, user_id)
            assert user is not None
            self._event(s, "staff.profile_changed", user.email, channel)
            return self._user_view(s, user)

    def password_hash(self, user_id: int) -> str | None:
        """The stored hash, for the caller to verify the current password off the event loop."""
        with self._sessions() as s:
            return s.scalar(select(User.password_hash).where(User.id == user_id))

    def change_password(self, user_id: int, verified_hash: str, new_hash: str, channel: str = "link") -> None:
        """Replace the hash the caller verified the current password against; refuses if it changed since."""
        with self._transaction() as s:
            changed = rows_changed(
                s,
                update(User).where(User.id == user_id, User.password_hash == verified_hash)
                .values(password_hash=new_hash),
            )
            if not changed:
                raise InvalidState("password.changed_meanwhile")
            email = s.scalar(select(User.email).where(User.id == user_id))
            self._event(s, "staff.password_changed", str(email), channel)

    def list_staff(self) -> list[UserView]:
        with self._sessions() as s:
            return [self._user_view(s, u) for u in s.scalars(select(User).order_by(User.email))]

    def authenticate(self, email: str, password: str) -> UserView | None:
        """The staff member with these credentials, or None (slow: call off the event loop)."""
        try:
            address = normalise_email(email)
        except InvalidInput:
            address = ""
        with self._sessions() as s:
            user = s.scalar(select(User).where(User.email == address)) if address else None
            # Verify even when there is no such user, so timing does not reveal accounts.
            if user is not None and user.disabled_at is not None:
                user = None  # a disabled account signs in as no account: same work, same answer
            ok = self._passwords.verify(user.password_hash if user else None, password)
            if not ok or user is None:
                return None
            return self._user_view(s, user)

    # -- staff accounts -----------------------------------------------------

    def set_password(self, email: str, password: str, channel: str = "cli", actor: str = "operator") -> UserView:
        """A new password; every session of the account ends and earlier reset links are spent."""
        password_hash = self._passwords.hash(password)  # slow: adapters on the event loop call this off it
        with self._transaction() as s:
            user = self._user_by_email(s, email)
            self._store_password(s, user, password_hash)
            self._event(s, "staff.password_set", actor, channel, email=user.email)
            return self._user_view(s, user)

    def _store_password(self, s: Session, user: User, password_hash: str) -> None:
        s.execute(
            update(User).where(User.id == user.id).values(password_hash=password_hash, password_changed_at=self._now())
        )
        s.execute(delete(WebSession).where(WebSession.user_id == user.id))
        s.refresh(user)

    def edit_staff(
        self, email: str, name: str | None = None, locale: str | None = None, timezone: str | None = None,
        channel: str = "cli",
    ) -> UserView:
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = clean_name(name)
        if locale is not None:
            values["locale"] = check_locale(locale)
        if timezone is not None:
            values["timezone"] = check_timezone(timezone)
        with self._transaction() as s:
            user = self._user_by_email(s, email)
            if values:
                s.execute(update(User).where(User.id == user.id).values(**values))
                s.refresh(user)
                self._event(s, "staff.edited", "operator", channel, email=user.email, fields=sorted(values))
            return self._user_view(s, user)

    def add_staff_to_firm(self, email: str, firm_name: str, role: str = "staff") -> UserView:
        with self._transaction() as s:
            user = self._user_by_email(s, email)
            firm = self._firm_by_name(s, firm_name)
            if self._is_member(s, user.id, firm.id):
                raise AlreadyExists("staff.already_member", email=user.email, firm=firm.name)
            s.add(Membership(user_id=user.id, firm_id=firm.id, role=role))
            self._event(s, "staff.added", "operator", "cli", firm_id=firm.id, email=user.email)
            s.flush()
            return self._user_view(s, user)

    def remove_staff_from_firm(self, email: str, firm_name: str) -> UserView:
        """Refuses to remove the last firm: a staff member belongs to at least one (disable instead)."""
        with self._transaction() as s:
            user = self._user_by_email(s, email)
            firm = self._firm_by_name(s, firm_name)
            # Locked (PostgreSQL): two removals of different firms at once must not leave none.
            memberships = s.scalars(select(Membership).where(Membership.user_id == user.id).with_for_update()).all()
            mine = [m for m in memberships if m.firm_id == firm.id]
            if not mine:
                raise NotFound("staff.not_member", email=user.email, firm=firm.name)
            # Guarded: the delete also checks another membership still exists when it runs.
            others = select(Membership.id).where(Membership.user_id == user.id, Membership.firm_id != firm.id)
            if not rows_changed(s, delete(Membership).where(Membership.id == mine[0].id, others.exists())):
                raise InvalidState("staff.last_firm", email=user.email, firm=firm.name)
            self._event(s, "staff.removed", "operator", "cli", firm_id=firm.id, email=user.email)
            s.flush()
            return self._user_view(s, user)

    def disable_staff(self, email: str, channel: str = "cli") -> UserView:
        """The account can no longer sign in and its sessions end now; its history stays."""
        with self._transaction() as s:
            user = self._user_by_email(s, email)
            disable = update(User).where(User.id == user.id, User.disabled_at.is_(None)).values(disabled_at=self._now())
            if not rows_changed(s, disable):
                raise InvalidState("staff.already_disabled", email=user.email)
            s.execute(delete(WebSession).where(WebSession.user_id == user.id))
            s.refresh(user)
            self._event(s, "staff.disabled", "operator", channel, email=user.email)
            return self._user_view(s, user)

    # -- companies --------------------------------------------------------

    def add_company(
        self,
        name: str,
        admin_email: str,
        admin_name: str | None = None,
        kind: str = "business",
        locale: str | None = None,
        quickbooks_time: bool = False,
        timezone: str | None = None,
    ) -> CompanyView:
        """Record a client's QuickBooks company and its primary admin."""
        name = clean_name(name)
        address = normalise_email(admin_email)
        if kind not in KINDS:
            raise InvalidInput("kind.unknown", kind=kind)
        with self._transaction() as s:
            existing = s.scalar(select(Company).where(Company.name_key == name_key(name)))
            if existing:
                raise AlreadyExists("company.exists", name=existing.name)
            company = Company(
                name=name,
                name_key=name_key(name),
                kind=kind,
                admin_email=address,
                admin_name=clean_name(admin_name) if admin_name else address.split("@")[0],
                admin_locale=check_locale(locale or self._policy.default_locale),
                admin_timezone=check_timezone(timezone or self._policy.default_timezone),
                subscription="self-paid",
                has_quickbooks_time=quickbooks_time,
                created_at=self._clock.now(),
            )
            s.add(company)
            s.flush()
            self._event(s, "company.added", "operator", "cli", company_id=company.id, name=name)
            return company_view(company)

    def list_companies(self) -> list[CompanyView]:
        with self._sessions() as s:
            return [company_view(c) for c in s.scalars(select(Company).order_by(Company.name_key))]

    # -- invitations (flow 1) ---------------------------------------------

    def send_invitation(
        self, company_name: str, email: str, channel: str = "cli", key: str | None = None,
        check: Callable[[Session, Company], None] | None = None,
    ) -> InvitationView:
        """The client invites an accountant; a pending invitation to the same address is superseded.

        ``key`` (see ``daemon.domain.request_key``) makes a second press of the same
        button within the window return the first invitation instead of sending another.
        ``check`` runs inside the same transaction before anything is sent (a limit
        that must hold when two race); a repeated press is not checked again.
        """
        address = normalise_email(email)
        with self._transaction() as s:
            company = self._company_by_name(s, company_name)
            repeated, first = self._repeated(s, key)
            if repeated and first is not None:
                sent = s.get(Invitation, first)
                if sent is not None:
                    return self._invitation_view(s, sent)
            if check is not None:
                check(s, company)
            view = self._send_in(s, company, address, channel)
            self._record_result(s, key, view.id)
            return view

    def _send_in(
        self, s: Session, company: Company, address: str, channel: str, replaces: Invitation | None = None
    ) -> InvitationView:
        """Send a fresh invitation inside the caller's transaction, superseding the pending one."""
        now = self._clock.now()
        previous = replaces or s.scalar(
            select(Invitation).where(
                Invitation.company_id == company.id,
                Invitation.email == address,
                Invitation.state == InvitationState.PENDING,
            )
        )
        if previous is not None and replaces is None:
            # Leave the partial unique index free for the new row before inserting it; an accept
            # or a revoke that got there first wins, and this send says what became of it.
            try:
                self._transition(s, Invitation, previous.id, [InvitationState.PENDING], InvitationState.SUPERSEDED,
                                 decided_at=now)
            except TransitionLost:
                raise InvitationUnavailable(self._invitation_view(s, previous)) from None
        invitation = Invitation(
            company_id=company.id,
            email=address,
            invited_by=company.admin_email,
            nonce=self._signer.nonce(),
            state=InvitationState.PENDING,
            created_at=now,
            expires_at=now + self._policy.invitation_ttl,
        )
        s.add(invitation)
        try:
            with s.begin_nested():
                s.flush()
        except IntegrityError:
            # Another send to this address committed first (the one-pending index): show it.
            other = s.scalar(
                select(Invitation).where(
                    Invitation.company_id == company.id,
                    Invitation.email == address,
                    Invitation.state == InvitationState.PENDING,
                )
            )
            current = self._invitation_view(s, other) if other is not None else None
            raise InvalidState("invitation.sent_concurrently", current=current, email=address) from None
        if previous is not None:
            s.execute(update(Invitation).where(Invitation.id == previous.id).values(superseded_by_id=invitation.id))
        # Expired invitations to the same address now point to this one too.
        s.execute(
            update(Invitation)
            .where(
                Invitation.company_id == company.id,
                Invitation.email == address,
                Invitation.state == InvitationState.EXPIRED,
                Invitation.superseded_by_id.is_(None),
            )
            .values(superseded_by_id=invitation.id)
        )
        token = self._signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce])
        url = self._links.invitation(token)
        accountant = s.scalar(select(User).where(User.email == address))
        self._notifier.queue(
            s,
            Notice(
                template="invitation",
                to=address,
                to_name=accountant.name if accountant else "",
                locale=accountant.locale if accountant else company.admin_locale,
                timezone=accountant.timezone if accountant else company.admin_timezone,
                context={
                    "company": company.name,
                    "admin_name": company.admin_name,
                    "admin_email": company.admin_email,
                    "url": url,
                    "expires_at": invitation.expires_at,
                },
                # A person (the client admin) is asking; replies are welcome.
                auto_submitted=False,
                invitation_id=invitation.id,
                company_id=company.id,
                audience="accountant",
            ),
        )
        self._event(
            s,
            "invitation.sent",
            company.admin_email,
            channel,
            company_id=company.id,
            invitation_id=invitation.id,
            email=address,
            superseded=previous.id if previous else None,
        )
        s.flush()
        view = self._invitation_view(s, invitation)
        return InvitationView(**{**view.__dict__, "url": url})

    def pending_invitation(self, company_name: str, email: str) -> InvitationView | None:
        """The usable invitation from the company to ``email``, with its link signed afresh (nothing is
        sent: the link names the same row and nonce as the emailed one), or None."""
        address = normalise_email(email)
        with self._sessions() as s:
            company = self._company_by_name(s, company_name)
            invitation = s.scalar(
                select(Invitation).where(
                    Invitation.company_id == company.id,
                    Invitation.email == address,
                    Invitation.state == InvitationState.PENDING,
                    Invitation.expires_at > self._clock.now(),
                )
            )
            if invitation is None:
                return None
            url = self._links.invitation(self._signer.sign(Purpose.INVITE, [invitation.id, invitation.nonce]))
            view = self._invitation_view(s, invitation)
            return InvitationView(**{**view.__dict__, "url": url})

    def revoke_invitation(
        self, invitation_id: int, channel: str = "cli", *, company_id: int | None = None, actor: str | None = None
    ) -> InvitationView:
        """Withdraw a pending invitation (CLI, the manage page, a client's page).

        ``company_id``: only one of this company's (a manage link or a client's page speaks for one
        company; another's invitation is "not found" to it). ``actor``: who withdrew it, when not the
        company's primary admin.
        """
        now = self._clock.now()
        with self._transaction() as s:
            invitation = s.get(Invitation, invitation_id)
            if invitation is None or (company_id is not None and invitation.company_id != company_id):
                raise NotFound("invitation.not_found", id=invitation_id)
            view = self._invitation_view(s, invitation)
            if view.status != "pending":
                raise InvitationUnavailable(view)
            try:
                self._transition(s, Invitation, invitation.id, [InvitationState.PENDING], InvitationState.REVOKED,
                                 where=[Invitation.expires_at > now], decided_at=now)
            except TransitionLost:
                raise InvitationUnavailable(self._invitation_view(s, invitation)) from None
            self._event(
                s,
                "invitation.revoked",
                actor or invitation.company.admin_email,
                channel,
                company_id=invitation.company_id,
                invitation_id=invitation.id,
            )
            s.flush()
            return self._invitation_view(s, invitation)

    def list_invitations(self, company_name: str | None = None) -> list[InvitationView]:
        """Invitations with their email's delivery state: queued, sent, failed, bounced, opened, acted."""
        with self._sessions() as s:
            query = select(Invitation).order_by(Invitation.id)
            emails = select(OutboxMessage.invitation_id, OutboxMessage.state, OutboxMessage.created_at).where(
                OutboxMessage.invitation_id.is_not(None), OutboxMessage.kind == "invitation")
            facts = select(Event.company_id, Event.at, Event.kind, Event.detail).where(Event.kind.in_(DELIVERY_KINDS))
            if company_name:
                company_id = self._company_by_name(s, company_name).id
                query = query.where(Invitation.company_id == company_id)
                emails = emails.where(OutboxMessage.company_id == company_id)
                facts = facts.where(Event.company_id == company_id)
            latest = {row.invitation_id: row for row in s.execute(emails.order_by(OutboxMessage.id))}
            by_company: dict[int | None, list[LinkFact]] = {}
            for fact_company_id, at, kind, detail in s.execute(facts):
                by_company.setdefault(fact_company_id, []).append(LinkFact(at, kind, None, parse_detail(detail)))
            views = []
            for invitation in s.scalars(query):
                email = latest.get(invitation.id)
                state = delivery(email.state, "invitation", email.created_at, by_company.get(invitation.company_id, ()),
                                 invitation.id) if email else None
                views.append(replace(self._invitation_view(s, invitation), delivery=state))
            return views

    def _invitation_view(self, s: Session, invitation: Invitation) -> InvitationView:
        status = invitation.state
        if status == "pending" and self._clock.now() >= invitation.expires_at:
            status = "expired"
        if status == "expired" and invitation.superseded_by_id is not None:
            status = "superseded"  # a fresh invitation went out since: point to it
        return InvitationView(
            id=invitation.id,
            company=invitation.company.name,
            email=invitation.email,
            invited_by=invitation.invited_by,
            state=invitation.state,
            status=status,
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
            decided_at=invitation.decided_at,
            firm=invitation.firm.name if invitation.firm else None,
            accepted_by=invitation.accepted_by.name if invitation.accepted_by else None,
            accepted_by_email=invitation.accepted_by.email if invitation.accepted_by else None,
            renewal_requested_at=invitation.renewal_requested_at,
            invited_by_name=inviter_name(invitation.company.admin_email, invitation.company.admin_name,
                                          invitation.company.name, invitation.invited_by),
        )

    def _invitation_from_token(self, s: Session, token: str, options: Sequence[ORMOption] = ()) -> Invitation:
        """The row an invitation link names; an expired signature still names it."""
        return self._row_from_token(
            s, Purpose.INVITE, token, Invitation, what="invitation",
            max_age=self._policy.invitation_ttl, expired_ok=True, options=options,
        )

    @cached_property
    def _invitation_page(self) -> PreparedRead:
        # Compiled for this engine on first use; straight to the driver after that (daemon.prepared).
        return PreparedRead(read_connections(self._sessions), _INVITATION_PAGE)

    @cached_property
    def _opened_invitation_page(self) -> PreparedRead:
        return PreparedRead(read_connections(self._sessions), _OPENED_INVITATION_PAGE)

    @cached_property
    def _user_with_firms(self) -> PreparedRead:
        return PreparedRead(read_connections(self._sessions), _USER_WITH_FIRMS)

    @cached_property
    def _accept_read(self) -> PreparedRead:
        reads = read_connections(self._sessions)
        return PreparedRead(reads, ACCEPT_READ[reads.dialect.name])

    def warm(self) -> None:
        """Compile the link page's and the accept's statements for this engine now (``cabinet serve``'s
        start), not on the first request, which paid for them on the event loop. No database work."""
        # each compiled on its first access
        self._invitation_page, self._opened_invitation_page, self._user_with_firms, self._accept_read
        dialect = read_connections(self._sessions).dialect
        _CLIENT_INSERT[dialect.name].compiled(dialect)
        _EVENT_INSERT.compiled(dialect)

    def open_invitation(self, token: str) -> InvitationView:
        """What an invitation link shows. Reads only: opening a link changes nothing."""
        return self.open_invitation_link(token)[0]

    def open_invitation_link(self, token: str, now: datetime | None = None) -> tuple[InvitationView, Opening | None]:
        """What an invitation link shows at ``now`` (the clock's, unless the caller read it already: the
        page then shows its dates from the instant its status was decided at), and what its first opening
        records (a valid, unexpired link whose ``link.opened`` event is not there yet; daemon.link_opens
        writes it), else None.

        The hot page: one statement returning plain rows (no ORM entities), the token verified once.
        """
        link = self.invitation_link_row(token)
        return self.invitation_link_view(link, now or self._clock.now()), link.opening

    def invitation_link_row(self, token: str, known: KnownOpenings | None = None) -> InvitationLinkRow:
        """An invitation link's page as the database has it: its one statement's row as the driver gave it
        (untyped: the web adapter finds a kept rendering by it, and makes the view only to render anew,
        ``invitation_link_view``) and what its first opening records, as ``open_invitation_link`` says.

        ``known``: the invitations whose opening this process knows to be recorded (the web adapter's;
        a page that finds its opening recorded adds its own): theirs are read without asking again."""
        ref = self._link_ref(Purpose.INVITE, token, max_age=self._policy.invitation_ttl, expired_ok=True)
        if type(ref.bound) is not str:  # never signed so; the statement compares it with a text column
            raise LinkTampered("link.no_invitation")
        if known is not None and ref.id in known.ids:
            row = self._opened_invitation_page.driver_row(id=ref.id, nonce=ref.bound)
            if row is None:
                raise LinkTampered("link.no_invitation")
            return InvitationLinkRow(ref.id, row, None)
        read = self._invitation_page
        row = read.driver_row(id=ref.id, nonce=ref.bound, opened_detail=detail_text(invitation_detail(ref.id)))
        if row is None:  # no such invitation, or not this link's nonce
            raise LinkTampered("link.no_invitation")  # as _row_from_token says it
        if row[_PAGE_OPENED]:
            if known is not None:
                known.add(ref.id)
            return InvitationLinkRow(ref.id, row, None)
        if ref.expired:
            return InvitationLinkRow(ref.id, row, None)
        typed = read.typed(row)
        return InvitationLinkRow(ref.id, row, Opening(typed.email, typed.firm_id, typed.company_id,
                                                      invitation_detail(ref.id)))

    def invitation_link_view(self, link: InvitationLinkRow, now: datetime) -> InvitationView:
        """The view of ``invitation_link_row``'s row at ``now`` (its status: past its expiry date a pending
        invitation is "expired")."""
        # The columns the page shows, typed alike whichever statement read them.
        row = self._opened_invitation_page.typed(link.row[:INVITATION_PAGE_SHOWN])
        status = row.state
        if status == "pending" and now >= row.expires_at:
            status = "expired"
        if status == "expired" and row.superseded_by_id is not None:
            status = "superseded"  # a fresh invitation went out since: point to it
        return InvitationView.of_link(
            id=link.id, company=row.company, email=row.email, invited_by=row.invited_by, state=row.state,
            status=status, created_at=row.created_at, expires_at=row.expires_at, decided_at=row.decided_at,
            firm=row.firm, accepted_by=row.accepted_by, accepted_by_email=row.accepted_by_email,
            renewal_requested_at=row.renewal_requested_at, invited_timezone=row.zone,
            invited_by_name=row.invited_by_name,
        )

    @staticmethod
    def invitation_status_holds(invitation: InvitationView) -> tuple[datetime, datetime]:
        """The instants strictly between which ``invitation``'s status reads as it does
        (``invitation_link_view``): a pending invitation is "expired" from its expiry date on; any other
        status is its row's alone (a page kept by its row holds for as long as this says)."""
        if invitation.state != "pending":
            return EARLIEST, LATEST
        if invitation.status == "pending":
            return EARLIEST, invitation.expires_at
        return invitation.expires_at - INSTANT, LATEST

    def accept_invitation(self, token: str, user_id: int, firm_id: int | None, channel: str = "link") -> AcceptResult:
        """Rule 1: a signed-in member of the chosen firm accepts; the client joins the roster once.

        Read first, write after: everything the accept decides on (the invitation, the user, the
        firm, the staff to tell, the roster entry it may already have) is read on a read connection,
        outside SQLite's single write lock, and its emails are prepared there too. The write
        transaction then runs only Core statements that re-check what that read relied on. When one
        finds the row changed (a revoke, a second accept, a client added meanwhile), the write is
        undone and the accept decided again inside the lock (``accept_in``), as every accept was
        before: the outcome is the one a serial order gives.
        """
        plan = self.plan_accept(token, user_id, firm_id)
        if plan is not None:
            try:
                with write_connection(self._sessions) as connection:
                    return self._accept_planned(connection, plan, channel)
            except _Replan:
                pass
        return self.accept_unplanned(token, user_id, firm_id, plan is None, channel)

    def accept_planned_many(self, plans: Sequence[tuple[AcceptPlan, str]]) -> list[AcceptResult | Exception | None]:
        """Several planned accepts (``plan_accept``, with their channels) in one write unit: the accepts
        in flight at once (``daemon.accepts``) take one thread hop, one turn of the write lock and one
        commit between them instead of one each. Each runs in a SAVEPOINT of its own, so one whose row changed since its
        plan, or that fails, is undone alone (on SQLite they are first tried in one savepoint together, and
        written again each in its own only when one of them does not go through: ``_all_written``). One
        outcome per plan: its result; None when it must be decided again inside the lock
        (``accept_unplanned``); or the exception it failed with. Returns once they are durable; a failed
        commit raises (nobody is told "done").
        """
        outcomes: list[AcceptResult | Exception | None] = [None] * len(plans)
        # Written in invitation order: two instances writing batches that share rows lock them in the same
        # order (PostgreSQL), so one waits for the other instead of both deadlocking.
        order = sorted(range(len(plans)), key=lambda n: plans[n][0].read.invitation_id)
        if engine_of(self._sessions).dialect.name == "postgresql":
            return self._written_in_pipeline(plans, order, outcomes)
        with write_connection(self._sessions) as connection:
            if len(order) > 1 and self._all_written(connection, plans, order, outcomes):
                return outcomes
            for n in order:
                plan, channel = plans[n]
                try:
                    # Not released: the group unit's RELEASE ends them all, a statement fewer per accept.
                    with savepoint(connection, "accept_plan", release=False):
                        outcomes[n] = self._accept_planned(connection, plan, channel)
                except _Replan:
                    outcomes[n] = None
                except Exception as exc:
                    outcomes[n] = exc
        return outcomes

    def _written_in_pipeline(self, plans: Sequence[tuple[AcceptPlan, str]], order: list[int],
                             outcomes: list[AcceptResult | Exception | None]) -> list[AcceptResult | Exception | None]:
        """PostgreSQL: the batch in one transaction in psycopg's pipeline mode, a SAVEPOINT per accept.

        Round trips: each accept's guarded UPDATE and its roster entry's statement come back together
        (``_accept_planned``), and its event and emails with a sync at its end, inside its savepoint, so
        that an error is that accept's; the BEGIN goes with the first accept's statements, and the COMMIT
        with the last accept's, in place of its sync (``pipelined``). If one of those last statements
        failed, the server skipped the COMMIT: that accept alone is rolled back to its savepoint, and the
        rest committed then. A failed COMMIT fails the whole batch: raised, so nobody is told it is done.
        A batch of one is written without a savepoint (``_alone_in_pipeline``)."""
        if len(order) == 1:
            return [self._alone_in_pipeline(*plans[0])]
        last = order[-1]
        with self._pipeline_connection() as connection:
            try:
                with pipelined(connection, transaction=True) as sync:
                    for n in order:
                        plan, channel = plans[n]
                        try:
                            # Not released: the COMMIT ends them all, a statement fewer per accept.
                            with savepoint(connection, "accept_plan", release=False, sync=sync):
                                outcomes[n] = self._accept_planned(connection, plan, channel, in_pipeline=True)
                                if n != last:
                                    sync()  # this accept's errors raised here, inside its savepoint
                        except Exception as exc:
                            outcomes[n] = _undone_outcome(exc)
            except Exception as exc:
                if not (transaction_failed(connection) and isinstance(outcomes[last], AcceptResult)):
                    raise  # the COMMIT failed (or the connection): none of the batch is durable
                # The last accept's statements failed, and the server skipped the COMMIT sent after them.
                outcomes[last] = _undone_outcome(exc)
                driver_commands(connection, "ROLLBACK TO SAVEPOINT accept_plan", "COMMIT")
        return outcomes

    def _alone_in_pipeline(self, plan: AcceptPlan, channel: str) -> AcceptResult | Exception | None:
        """``_written_in_pipeline`` for a batch of one accept: its transaction holds nothing else, so it needs
        no SAVEPOINT of its own. Where a savepoint would be rolled back to (a race lost, a failure), the
        transaction is rolled back instead, and the outcome is the same: None (decided again) or the error.
        A statement fewer, and for PostgreSQL no subtransaction. As in a batch: a failed COMMIT (or a lost
        connection) is raised."""
        outcome: AcceptResult | Exception | None = None
        with self._pipeline_connection() as connection:
            try:
                with pipelined(connection, transaction=True):
                    try:
                        outcome = self._accept_planned(connection, plan, channel, in_pipeline=True)
                    except Exception as exc:
                        outcome = _undone_outcome(exc)
                        # ``pipelined`` reads what the pipeline still holds, then rolls the transaction back.
                        raise _Undone() from exc
            except _Undone as undone:
                if connection.invalidated:  # lost: as the COMMIT would have failed, raised
                    raise undone.__cause__ from None  # type: ignore[misc]
                return outcome
            except Exception as exc:
                if not (transaction_failed(connection) and isinstance(outcome, AcceptResult)):
                    raise  # the COMMIT failed (or the connection): nothing is durable
                # Its event or emails failed, and the server skipped the COMMIT sent after them.
                driver_commands(connection, "ROLLBACK")
                return _undone_outcome(exc)
        return outcome

    @contextmanager
    def _pipeline_connection(self) -> Iterator[Connection]:
        """A connection for ``pipelined(connection, transaction=True)``, inside SQLAlchemy's transaction.

        Autocommit at the driver: psycopg would send a BEGIN of its own and wait for it. SQLAlchemy's
        transaction is bookkeeping only (no statement: BEGIN and COMMIT are ``pipelined``'s), but without
        it SQLAlchemy answers a statement's error with a ROLLBACK of the whole batch."""
        with engine_of(self._sessions).connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            with connection.begin():
                yield connection

    def _all_written(self, connection: Connection, plans: Sequence[tuple[AcceptPlan, str]], order: list[int],
                     outcomes: list[AcceptResult | Exception | None]) -> bool:
        """SQLite: the batch's accepts in ONE savepoint, the common case (none lost its race, none failed);
        True when they all were written (``outcomes`` filled). Else everything they wrote is undone, False,
        and the caller writes them again each in a savepoint of its own, as before: the same outcomes.

        A SAVEPOINT costs SQLite more than its statement: every page a savepoint changes is copied to the
        statement journal first, so that ROLLBACK TO can put it back, and the accepts of a batch change the
        same pages (the tables' and indexes' last leaves) one after the other: a savepoint each copied them
        once per accept, one for the batch copies them once (13 % of SQLite's work in a batch of 16).
        The batch is written phase by phase (``_written_together``), not accept by accept.
        """
        try:
            with savepoint(connection, "accept_batch", release=False):
                results = self._written_together(connection, [plans[n] for n in order])
        except Exception:  # noqa: BLE001 - a race lost or a failure: each accept decided alone, below
            return False
        for n, result in zip(order, results):
            outcomes[n] = result
        return True

    def _written_together(self, connection: Connection, batch: list[tuple[AcceptPlan, str]]) -> list[AcceptResult]:
        """The rows ``_accept_planned`` writes for each of ``batch``'s accepts, written phase by phase: every
        accept's guarded UPDATEs first (one that matches nothing raises ``_Replan``: the whole batch is
        undone), then the new roster entries in ONE multi-row INSERT, the events in one, the emails in one
        executemany. The same rows, values and ids as accept by accept (rows go in in the batch's order).

        FTS5 writes the terms a statement added to the search index as a new segment at the end of each
        statement: a client INSERT per accept made one segment (and its merging) per accept, the largest
        part of SQLite's work in a batch; one INSERT makes one segment for the batch.
        """
        clients: list[Any] = [None] * len(batch)
        try:
            # Every accept's guarded UPDATE in one executemany: the summed row count says whether all won.
            _ACCEPT.run_many(connection, [(plan.read.invitation_id, self._accept_binds(plan)) for plan, _ in batch],
                             self._ctx.checkpoint)
            for n, (plan, _) in enumerate(batch):
                if plan.client is not None:
                    clients[n] = self._reconnect_planned(connection, plan)
        except TransitionLost:
            raise _Replan() from None
        new = [n for n, (plan, _) in enumerate(batch) if plan.client is None]
        inserted = _CLIENT_INSERT[connection.dialect.name].rows(
            connection, [self._client_values(batch[n][0]) for n in new])
        # RETURNING's order is SQLite's to choose: each row is found by its key (a company is on a firm's
        # roster once). A row that conflicted returned nothing: the batch is decided again, accept by accept.
        by_key = {(row.firm_id, row.company_id): row for row in inserted}
        for n in new:
            plan = batch[n][0]
            clients[n] = by_key.pop((plan.firm_id, plan.read.id), None)
            if clients[n] is None:
                raise _Replan()
        _EVENT_INSERT.rows(connection, [
            self._accepted_event(plan, channel, client) for (plan, channel), client in zip(batch, clients)])
        self._notifier.queue_prepared(connection, [email for plan, _ in batch for email in plan.emails])
        return [self._accept_result(plan, client) for (plan, _), client in zip(batch, clients)]

    def accept_unplanned(self, token: str, user_id: int, firm_id: int | None, refused: bool,
                         channel: str = "link") -> AcceptResult:
        """The accept decided inside the write lock: after a plan that found a refusal (``refused``: its
        exact error is the locked path's, raised from a read session when it still holds), or whose write
        found its rows changed."""
        if refused:
            self._refuse_accept(token, user_id, firm_id)
        with self._transaction() as s:
            # The company comes in the same statement: an accept always reads it, inside the write lock.
            invitation = self._invitation_from_token(s, token, (joinedload(Invitation.company),))
            return self.accept_in(s, invitation, user_id, firm_id, channel)

    def plan_accept(self, token: str, user_id: int, firm_id: int | None) -> AcceptPlan | None:
        """What an accept writes, read and decided outside the write lock; None when the read finds a
        refusal (its exact error is then the locked path's)."""
        now = self._clock.now()
        ref = self._link_ref(Purpose.INVITE, token, max_age=self._policy.invitation_ttl, expired_ok=True)
        # One statement is one snapshot: no BEGIN around it (see daemon.accept_read).
        row = self._accept_read.one_or_none(id=ref.id, user_id=user_id, firm_id=firm_id)
        if row is None or row.nonce != ref.bound:
            raise LinkTampered("link.no_invitation")  # as _row_from_token says it
        if (row.state != InvitationState.PENDING or now >= row.expires_at or row.user_email != row.email
                or row.firm_id is None):
            return None  # not pending, no such user, another account, no one firm: the locked path says which
        facts = {"accepted_by": row.user_name, "accepted_by_email": row.user_email, "accepted_at": now}
        notices = [
            self._company_admin_notice(
                row, "invitation_accepted",
                {"accountant_name": row.user_name, "accountant_email": row.user_email, "firm": row.firm_name,
                 "accepted_at": now},
                firm_id=row.firm_id,
            ),
            *self._staff_notices(row.firm_id, row.firm_name, staff_of(row), "client_added",
                                 {"company": row.name, **facts}, row.id),
        ]
        emails = [self._notifier.prepare(notice) for notice in notices]
        return AcceptPlan(row, row.firm_id, row.firm_name, entry_of(row), products_of(row), emails, now)

    def _refuse_accept(self, token: str, user_id: int, firm_id: int | None) -> None:
        """Raise what the locked path would refuse with, from a read session (the refusal takes no lock);
        returns only if the refusal no longer holds (the row changed back since: decide in the lock)."""
        with self._sessions() as s:
            invitation = self._invitation_from_token(s, token, (joinedload(Invitation.company),))
            self._chosen_firm(s, self._invited_user(s, invitation, user_id, "accept"), firm_id)

    def _accept_planned(self, connection: Connection, plan: AcceptPlan, channel: str,
                        in_pipeline: bool = False) -> AcceptResult:
        """The accept's write: prepared Core statements only, each guarded by what the plan read; raises
        ``_Replan`` when one finds its row changed since (the caller's rollback undoes the rest).

        ``in_pipeline`` (psycopg's pipeline mode): the guarded UPDATE and the roster entry's statement are
        both sent, then both read, one round trip. The UPDATE's row count still decides: when it moved
        nothing, what the entry's statement did is undone with the rest (the caller's savepoint)."""
        try:
            if in_pipeline:
                accepted = _ACCEPT.send(connection, plan.read.invitation_id, self._ctx.checkpoint,
                                        **self._accept_binds(plan))
                entry = self._send_entry(connection, plan)
                accepted()
                client = entry()
                if client is None:  # a row another writer added since: the locked path says what it found
                    raise _Replan()
            else:
                _ACCEPT.run(connection, plan.read.invitation_id, self._ctx.checkpoint, **self._accept_binds(plan))
                client = self._connect_planned(connection, plan)
        except TransitionLost:
            raise _Replan() from None
        _EVENT_INSERT.one(connection, self._accepted_event(plan, channel, client))
        self._notifier.queue_prepared(connection, plan.emails)
        return self._accept_result(plan, client)

    def _accept_binds(self, plan: AcceptPlan) -> dict[str, Any]:
        """``_ACCEPT``'s binds: what the plan read must still hold."""
        read = plan.read
        return {"b_nonce": read.nonce, "b_now": self._clock.now(), "b_decided": plan.now, "b_firm": plan.firm_id,
                "b_user": read.user_id, "b_renewal": read.renewal_requested_at}

    def _accepted_event(self, plan: AcceptPlan, channel: str, client: Any) -> dict[str, Any]:
        read = plan.read
        return self._event_values(
            "invitation.accepted", read.user_email, channel, firm_id=plan.firm_id, company_id=read.id,
            client_id=client.id, invitation_id=read.invitation_id,
        )

    @staticmethod
    def _accept_result(plan: AcceptPlan, client: Any) -> AcceptResult:
        """The accepted invitation as its plan read it, with what ``_ACCEPT`` wrote (which re-checked the rest)."""
        read = plan.read
        accepted = InvitationState.ACCEPTED.value
        return AcceptResult(
            # ``of_link``: the instance ``InvitationView(...)`` makes (no url, zone or delivery), without the
            # frozen ``__init__``'s sixteen ``object.__setattr__`` calls.
            InvitationView.of_link(
                id=read.invitation_id, company=read.name, email=read.email, invited_by=read.invited_by,
                state=accepted, status=accepted, created_at=read.created_at,
                expires_at=read.expires_at, decided_at=plan.now, firm=plan.firm_name,
                accepted_by=read.user_name, accepted_by_email=read.user_email,
                renewal_requested_at=read.renewal_requested_at, invited_timezone=None,
                invited_by_name=inviter_name(read.admin_email, read.admin_name, read.name, read.invited_by),
            ),
            ClientView(
                id=client.id, firm=plan.firm_name, name=client.name, kind=client.kind, status=client.status,
                billing=client.billing, company=read.name, email=client.email, phone=client.phone,
                connected_at=client.connected_at, products=plan.products,
                trial_ends_at=read.trial_ends_at if client.billing == "direct" else None,
                primary_admin=(plan.client.primary_admin if plan.client is not None else None) or read.admin_email,
            ),
        )

    def _connect_planned(self, connection: Connection, plan: AcceptPlan) -> Any:
        """``_connect`` on what the plan read: insert the roster entry, or update the one it found (only if
        it is still that entry); raises ``_Replan`` or ``TransitionLost`` when it is not."""
        if plan.client is None:
            # Nothing overwritten: a row another writer added since (the same company, or the same name)
            # makes this insert nothing, and the locked path says what it found.
            inserted = _CLIENT_INSERT[connection.dialect.name].one(connection, self._client_values(plan))
            if inserted is None:
                raise _Replan()
            return inserted
        return self._reconnect_planned(connection, plan)

    def _send_entry(self, connection: Connection, plan: AcceptPlan) -> Callable[[], Any]:
        """``_connect_planned``'s statement sent in a pipeline; the function returned reads the entry (None:
        the insert found one there) or raises ``TransitionLost``."""
        if plan.client is None:
            return _CLIENT_INSERT["postgresql"].send(connection, self._client_values(plan))
        read = plan.read
        found_by_company = plan.client.company_id is not None
        return _RECONNECT[found_by_company].send(
            connection, plan.client.id, self._ctx.checkpoint, b_firm=plan.firm_id, b_company=read.id,
            b_name_key=read.name_key, b_billing=SUBSCRIPTION_BILLING[read.subscription], b_now=plan.now,
        )

    @staticmethod
    def _client_values(plan: AcceptPlan) -> dict[str, Any]:
        """The new roster entry's columns (``_CLIENT_COLUMNS``)."""
        read = plan.read
        return {
            "firm_id": plan.firm_id, "company_id": read.id, "kind": read.kind, "name": read.name,
            "name_key": read.name_key, "email": read.admin_email, "billing": SUBSCRIPTION_BILLING[read.subscription],
            "status": ClientStatus.ACTIVE.value, "connected_at": plan.now, "created_at": plan.now,
            "search_key": search_key(read.name),
        }

    def _reconnect_planned(self, connection: Connection, plan: AcceptPlan) -> Any:
        """The roster entry the plan found, active again for the company (raises ``TransitionLost`` if it changed)."""
        read = plan.read
        assert plan.client is not None
        found_by_company = plan.client.company_id is not None
        return _RECONNECT[found_by_company].run(
            connection, plan.client.id, self._ctx.checkpoint, b_firm=plan.firm_id, b_company=read.id,
            b_name_key=read.name_key, b_billing=SUBSCRIPTION_BILLING[read.subscription], b_now=plan.now,
        )

    def accept_in(
        self, s: Session, invitation: Invitation, user_id: int, firm_id: int | None, channel: str
    ) -> AcceptResult:
        """Accept inside the caller's transaction: the link and a reply command both end here."""
        now = self._clock.now()
        user = self._invited_user(s, invitation, user_id, "accept")
        firm = self._chosen_firm(s, user, firm_id)
        self._decide(s, invitation, InvitationState.ACCEPTED, decided_at=now, firm_id=firm.id, accepted_by_id=user.id)
        company = invitation.company
        client = self._connect(s, firm, company, now)
        self._event(
            s,
            "invitation.accepted",
            user.email,
            channel,
            firm_id=firm.id,
            company_id=company.id,
            client_id=client.id,
            invitation_id=invitation.id,
        )
        self._notify_company_admin(
            s,
            company,
            "invitation_accepted",
            {"accountant_name": user.name, "accountant_email": user.email, "firm": firm.name, "accepted_at": now},
            firm_id=firm.id,
        )
        self._notify_staff(
            s,
            firm,
            "client_added",
            {"company": company.name, "accepted_by": user.name, "accepted_by_email": user.email, "accepted_at": now},
            company_id=company.id,
        )
        s.flush()
        return AcceptResult(self._invitation_view(s, invitation), client_view(client, firm))

    def _invited_user(self, s: Session, invitation: Invitation, user_id: int, verb: str) -> User:
        """The signed-in user, who must be the invited address, on a still-pending invitation."""
        view = self._invitation_view(s, invitation)
        if view.status != "pending":
            raise InvitationUnavailable(view)
        user = s.get(User, user_id)
        if user is None:
            raise NotAllowed(f"invitation.sign_in_{verb}")
        if user.email != invitation.email:
            raise WrongAccount(invitation.email, user.email)
        return user

    def _decide(self, s: Session, invitation: Invitation, state: InvitationState, **values: Any) -> None:
        """Leave "pending", once: when two instances race on one link, only one UPDATE matches."""
        try:
            self._transition(s, Invitation, invitation.id, [InvitationState.PENDING], state,
                             where=[Invitation.expires_at > self._clock.now()], **values)
        except TransitionLost:
            raise InvitationUnavailable(self._invitation_view(s, invitation)) from None

    def decline_invitation(self, token: str, user_id: int, channel: str = "link") -> InvitationView:
        with self._transaction() as s:
            return self.decline_in(s, self._invitation_from_token(s, token), user_id, channel)

    def decline_in(self, s: Session, invitation: Invitation, user_id: int, channel: str) -> InvitationView:
        """Decline inside the caller's transaction (the link and a reply command)."""
        user = self._invited_user(s, invitation, user_id, "decline")
        self._decide(s, invitation, InvitationState.DECLINED, decided_at=self._clock.now(), accepted_by_id=user.id)
        company = invitation.company
        self._event(s, "invitation.declined", user.email, channel, company_id=company.id, invitation_id=invitation.id)
        self._notify_company_admin(
            s, company, "invitation_declined", {"accountant_name": user.name, "accountant_email": user.email}
        )
        s.flush()
        return self._invitation_view(s, invitation)

    def request_new_invitation(self, token: str, channel: str = "link") -> RenewalResult:
        """From an expired link: ask the client admin for a new invitation (once)."""
        now = self._clock.now()
        with self._transaction() as s:
            invitation = self._invitation_from_token(s, token)
            view = self._invitation_view(s, invitation)
            if view.status != "expired":
                raise InvitationUnavailable(view)
            won = rows_changed(
                s,
                update(Invitation)
                .where(Invitation.id == invitation.id, Invitation.renewal_requested_at.is_(None))
                .values(renewal_requested_at=now)
            )
            s.refresh(invitation)
            if won != 1:
                return RenewalResult(self._invitation_view(s, invitation), already_requested=True)
            company = invitation.company
            renewal_token = self._signer.sign(Purpose.MANAGE, ["renew", invitation.id, invitation.nonce])
            self._notify_company_admin(
                s,
                company,
                "invitation_renewal_requested",
                {
                    "email": invitation.email,
                    "expired_at": invitation.expires_at,
                    "url": self._links.invitation_renewal(renewal_token),
                },
                auto=False,
            )
            self._event(s, "invitation.renewal_requested", invitation.email, channel, company_id=company.id, invitation_id=invitation.id)
            s.flush()
            return RenewalResult(self._invitation_view(s, invitation), already_requested=False)

    def _renewal_target(self, s: Session, token: str) -> Invitation:
        return self._row_from_token(
            s, Purpose.MANAGE, token, Invitation, what="invitation",
            max_age=self._policy.invitation_ttl, tag="renew",
        )

    def open_renewal(self, token: str) -> InvitationView:
        """The client admin's "send a new invitation" page (reads only)."""
        with self._sessions() as s:
            return self._invitation_view(s, self._renewal_target(s, token))

    def renew_invitation(self, token: str, channel: str = "link") -> InvitationView:
        """The client admin sends a fresh invitation in place of an expired one (once per request).

        One transaction: the expired invitation moves to "superseded" with a guarded
        UPDATE, so of two presses (or two instances) only one sends. The renewal link is
        the idempotency key: a second press within the window gets the invitation the
        first one sent, and no second email.
        """
        now = self._clock.now()
        with self._transaction() as s:
            old = self._renewal_target(s, token)
            view = self._invitation_view(s, old)
            if view.status != "expired":
                return self._repeat_of_renewal(s, old, view)
            try:
                self._transition(
                    s, Invitation, old.id, [InvitationState.PENDING, InvitationState.EXPIRED],
                    InvitationState.SUPERSEDED, where=[Invitation.superseded_by_id.is_(None)],
                    decided_at=old.decided_at or now,
                )
            except TransitionLost:
                # Another press won while this one waited for the row: answer with what it sent.
                return self._repeat_of_renewal(s, old, self._invitation_view(s, old))
            return self._send_in(s, old.company, old.email, channel, replaces=old)

    def _repeat_of_renewal(self, s: Session, old: Invitation, view: InvitationView) -> InvitationView:
        """A renewal that has nothing to do: a repeat of a recent one gets its result, else the refusal."""
        fresh = s.get(Invitation, old.superseded_by_id) if old.superseded_by_id is not None else None
        if fresh is not None and self._clock.now() - fresh.created_at < self._policy.repeat_window:
            return self._invitation_view(s, fresh)
        raise InvitationUnavailable(view)

    def expire_invitations(self) -> dict[str, int]:
        """Record the expiry of invitations past their date, and tell the client admin. Idempotent."""
        now = self._clock.now()
        expired = sum(self.expire_one(invitation_id, now) is not None for invitation_id in self.due_expiries(now))
        return {"invitations_expired": expired}

    def due_expiries(self, now: datetime) -> list[int]:
        """Pending invitations past their date (an expired one is no longer pending: it leaves the query)."""
        with self._sessions() as s:
            return list(s.scalars(
                select(Invitation.id).where(Invitation.state == InvitationState.PENDING, Invitation.expires_at <= now)
            ).all())

    def expire_one(self, invitation_id: int, now: datetime) -> str | None:
        """Expire one invitation in its own transaction; None if it was no longer pending."""
        with self._transaction() as s:
            try:
                self._transition(s, Invitation, invitation_id, [InvitationState.PENDING], InvitationState.EXPIRED,
                                 where=[Invitation.expires_at <= now], decided_at=now)
            except TransitionLost:
                return None
            invitation = s.get(Invitation, invitation_id)
            assert invitation is not None
            company = invitation.company
            self._notify_company_admin(
                s, company, "invitation_expired", {"email": invitation.email, "expired_at": invitation.expires_at}
            )
            self._event(s, "invitation.expired", "scheduler", "scheduler", company_id=company.id, invitation_id=invitation.id)
            return "invitations_expired"

    # -- the roster ----------------------------------------------------------

    def _connect(self, s: Session, firm: Firm, company: Company, now: Any) -> Client:
        """Put the company on the firm's roster, or update the entry it already has."""
        client = s.scalar(select(Client).where(Client.firm_id == firm.id, Client.company_id == company.id))
        if client is None:
            # A client added earlier without QuickBooks, under the same name, is the same client.
            client = s.scalar(
                select(Client).where(
                    Client.firm_id == firm.id, Client.name_key == company.name_key, Client.company_id.is_(None)
                )
            )
        if client is None:
            client = Client(
                firm_id=firm.id,
                company_id=company.id,
                kind=company.kind,
                name=company.name,
                name_key=company.name_key,
                email=company.admin_email,
                billing=SUBSCRIPTION_BILLING[company.subscription],
                status=ClientStatus.ACTIVE,
                connected_at=now,
                created_at=now,
            )
            s.add(client)
            try:
                with s.begin_nested():
                    s.flush()
            except IntegrityError:
                raise AlreadyExists("client.exists_other_company", firm=firm.name, name=company.name) from None
        else:
            self._transition(
                s, Client, client.id, list(ClientStatus), ClientStatus.ACTIVE, company_id=company.id,
                billing=SUBSCRIPTION_BILLING[company.subscription], connected_at=client.connected_at or now,
            )
        return client

    def list_clients(self, firm_name: str) -> list[ClientView]:
        return list(self.iter_clients(firm_name))

    def iter_clients(self, firm_name: str, chunk: int = 1000) -> Iterator[ClientView]:
        """A firm's roster in name order, streamed in two statements (see ``daemon.client_list``);
        an unknown firm raises on the first ``next()``."""
        with self._sessions() as s:
            yield from client_views(s.connection(), firm_name, chunk)
