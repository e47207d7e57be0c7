"""What a signed-in staff member's pages read: the roster, one client, what is pending, the team.

Read-only. Every method is scoped to the firms of the signed-in user as the request read them
(``UserView.firms``: the ids are in each statement, so a client of another firm is never read and no
statement looks the memberships up again), and issues a fixed number of statements whatever the size
of the roster (Core selects with joins; no lazy loading), so a page costs the same at 10 and at
100,000 clients. The roster's numbers (the navigation's, the plain roster's and its filters') are
sums of ``firm_client_counts``, which the database keeps (migrations 0016, 0017: a key's rows summed
over its slots), not counts of the roster.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, UnaryExpression, and_, case, false, func, or_, select, union_all
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import operators
from sqlalchemy.sql.operators import custom_op

from daemon.client_actions import awaits_payment
from daemon.deliveries import KINDS, OPENED, LinkFact, delivery, parse_detail
from daemon.client_search import SEARCH_TABLE, SearchIndex, contains, fts_match, indexed, search_index, words
from daemon.domain import DomainContext, DomainService, inviter_name
from daemon.models import (
    BillingTransfer,
    Client,
    ClientStatus,
    Company,
    CompanyProduct,
    Event,
    Firm,
    FirmClientCount,
    Invitation,
    InvitationState,
    Membership,
    OutboxMessage,
    Product,
    SetupInvitation,
    SetupState,
    TransferState,
    User,
)
from daemon.tokens import Purpose
from daemon.views import UserView, named

T = TypeVar("T")

PAGE_SIZE = 50
# A search finding more clients than this says "more than 1000" rather than count them all: a common
# fragment at 100,000 clients would otherwise cost a read of the whole roster for one number.
SEARCH_LIMIT = 1000
STATUSES = tuple(s.value for s in ClientStatus)
BILLINGS = ("self-paid", "wholesale", "direct", "none")
# Each order is an index's own order, (firm_id, search_key, id) or (firm_id, created_at, id), so a
# page reads 50 index entries rather than sorting the roster (clients with the same folded name
# follow in the order they were added).
SORTS: dict[str, tuple[UnaryExpression[Any], ...]] = {
    "name": (Client.search_key.asc(), Client.id.asc()),
    "-name": (Client.search_key.desc(), Client.id.desc()),
    "added": (Client.created_at.asc(), Client.id.asc()),
    "-added": (Client.created_at.desc(), Client.id.desc()),
}


@dataclass(frozen=True)
class RosterQuery:
    """The roster page's search box, filters, sort and page, as the URL gives them (unknown values ignored)."""

    text: str = ""
    status: str = ""
    billing: str = ""
    firm_id: int | None = None
    sort: str = "name"
    page: int = 1

    @classmethod
    def parse(cls, args: Any) -> RosterQuery:
        def pick(key: str, allowed: tuple[str, ...] | dict[str, Any]) -> str:
            value = str(args.get(key, "")).strip()
            return value if value in allowed else ""

        firm = str(args.get("firm", "")).strip()
        page = str(args.get("page", "1")).strip()
        return cls(
            text=str(args.get("q", "")).strip()[:200],
            status=pick("status", STATUSES),
            billing=pick("billing", BILLINGS),
            firm_id=int(firm) if firm.isdigit() else None,
            sort=pick("sort", SORTS) or "name",
            page=max(1, min(int(page), 1_000_000)) if page.isdigit() else 1,
        )

    def url(self, **changes: Any) -> str:
        """This query's URL with ``changes`` (a new page, a new sort), for the page's links."""
        values = {"q": self.text, "status": self.status, "billing": self.billing,
                  "firm": self.firm_id or "", "sort": "" if self.sort == "name" else self.sort, "page": self.page}
        values.update(changes)
        if values.get("page") == 1:
            values["page"] = ""
        return "/clients?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


@dataclass(frozen=True)
class RosterRow:
    id: int
    firm: str
    name: str
    kind: str
    email: str | None
    billing: str
    status: str
    connected_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class RosterPage:
    rows: tuple[RosterRow, ...]
    total: int
    query: RosterQuery
    pages: int
    more: bool = False  # a search found more than ``total`` (SEARCH_LIMIT); ``pages`` is only as far as known


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a client's activity: an event (who, which channel) or an email (its delivery state)."""

    at: datetime
    kind: str  # an event kind ("client.added") or "email"
    actor: str | None = None
    channel: str | None = None
    email_kind: str | None = None  # the email's template
    subject: str | None = None
    recipient: str | None = None
    state: str | None = None  # queued | sent | failed | bounced | opened | acted (daemon.deliveries)
    attempts: int = 0
    answer: str | None = None  # the relay's last answer, or the bounce's reason
    sent_at: datetime | None = None


@dataclass(frozen=True)
class ClientDetail:
    id: int
    firm: str
    name: str
    kind: str
    email: str | None
    phone: str | None
    billing: str
    status: str
    connected_at: datetime | None
    created_at: datetime
    company: str | None
    primary_admin_name: str | None
    primary_admin_email: str | None
    trial_ends_at: datetime | None
    payment_details_at: datetime | None
    products: tuple[str, ...] = ()
    connected_firms: tuple[str, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    # Invitations the client's company sent that wait for an answer (staff may withdraw them).
    invitations: tuple[ClientInvitation, ...] = ()
    # The links the page's "Resend" buttons send: "setup" (not yet primary admin), "payment"
    # (a direct-discount trial without payment details).
    resend: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientInvitation:
    id: int
    email: str
    expires_at: datetime


@dataclass(frozen=True)
class PendingInvitation:
    company: str
    invited_by: str  # who sent it, as pages name them (``views.named``)
    created_at: datetime
    expires_at: datetime
    url: str
    delivery: str | None


@dataclass(frozen=True)
class PendingTransfer:
    company: str
    firm: str
    authorized_by: str
    expires_at: datetime
    url: str
    client_id: int | None


@dataclass(frozen=True)
class PendingSetup:
    client_id: int | None
    company: str
    firm: str
    email: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class PendingTrial:
    client_id: int
    name: str
    firm: str
    trial_ends_at: datetime | None
    payment_details_at: datetime | None


@dataclass(frozen=True)
class Pending:
    invitations: tuple[PendingInvitation, ...] = ()
    transfers: tuple[PendingTransfer, ...] = ()
    setups: tuple[PendingSetup, ...] = ()
    trials: tuple[PendingTrial, ...] = ()

    @property
    def count(self) -> int:
        return len(self.invitations) + len(self.transfers) + len(self.setups) + len(self.trials)


@dataclass(frozen=True)
class TeamMember:
    name: str
    email: str
    firms: tuple[tuple[str, str], ...] = field(default=())  # (firm, role)


@dataclass(frozen=True)
class NavCounts:
    clients: int
    pending: int
    team: int


def _among(column: Any, firms: Collection[int]) -> ColumnElement[bool]:
    """``column`` among the user's firms, their ids in the statement.

    A one-firm user's roster is then ``firm_id = ?``, which the (firm_id, search_key) index answers
    in order: at 100,000 clients a page reads 50 index entries instead of sorting the roster (an
    ``IN (subquery)`` made SQLite sort it all).
    """
    ids = sorted(firms)
    if not ids:
        return false()
    return column == ids[0] if len(ids) == 1 else column.in_(ids)


def _firms(user: UserView) -> list[int]:
    return [firm.id for firm in user.firms]


def _scope(column: Any, firms: Collection[int], firm_id: int | None) -> list[ColumnElement[bool]]:
    """``column`` (the roster's or the counter's ``firm_id``) among the user's firms, and ``firm_id`` if chosen."""
    where = [_among(column, firms)]
    if firm_id is not None:
        where.append(column == firm_id)
    return where


def _on_sqlite(s: Session) -> bool:
    return s.get_bind().dialect.name == "sqlite"


def _filters(status: str, billing: str) -> list[ColumnElement[bool]]:
    return ([FirmClientCount.status == status] if status else []) + \
        ([FirmClientCount.billing == billing] if billing else [])


def _counted(firms: Collection[int], status: str = "", billing: str = "", firm_id: int | None = None) -> Select[Any]:
    """How many of the firms' clients have this status, billing and firm: a sum of the counter's
    rows (a handful per firm), not a count of the roster."""
    return select(func.coalesce(func.sum(FirmClientCount.clients), 0)) \
        .where(*_scope(FirmClientCount.firm_id, firms, firm_id), *_filters(status, billing))


def _counted_in_all(firms: Collection[int], status: str, billing: str, firm_id: int | None) -> Select[Any]:
    """``_counted``'s number under a filter (status, billing), and how many clients the firms (``firm_id``
    if given) have in all: two sums of the same counter rows, in one statement."""
    matching = case((and_(*_filters(status, billing)), FirmClientCount.clients), else_=0)
    return select(func.coalesce(func.sum(matching), 0), func.coalesce(func.sum(FirmClientCount.clients), 0)) \
        .where(*_scope(FirmClientCount.firm_id, firms, firm_id))


def _read_by_filter(matching: int, in_all: int, page: int) -> bool:
    """Whether a filtered page (status, billing) is read through its filter's index, then sorted,
    rather than along its order's index, skipping the clients the filter leaves out.

    The first reads the ``matching`` clients; the second about ``(offset + PAGE_SIZE) × in_all / matching``
    of them, until the page is full. SQLite has no statistics to weigh the two (its build has no
    STAT4; at 100,000 clients it took the order's index for a filter that one client matched, 40–60 ms
    a page): the counter's exact numbers decide instead (``Workspace._weighs_filter``). PostgreSQL's
    planner weighs them itself.
    """
    return matching * matching < ((page - 1) * PAGE_SIZE + PAGE_SIZE) * in_all


def _unindexed(order: tuple[UnaryExpression[Any], ...]) -> tuple[UnaryExpression[Any], ...]:
    """``order`` with each column as SQLite's ``+column``: the same order, which no index answers, so
    that SQLite's planner picks the filter's index for the WHERE and sorts what it finds."""
    def plus(term: UnaryExpression[Any]) -> UnaryExpression[Any]:
        column = UnaryExpression(term.element, operator=custom_op("+"), type_=term.element.type)
        return column.desc() if term.modifier is operators.desc_op else column.asc()

    return tuple(plus(term) for term in order)


def _merged_page(firms: list[int], narrowing: list[ColumnElement[bool]], order: tuple[UnaryExpression[Any], ...],
                 number: int, each_firm_limited: bool) -> Select[Any]:
    """The ids of page ``number`` of several firms' clients (``narrowing``: filters, words), in ``order``:
    each firm's clients along its own index, merged — one statement, whatever the firms and the roster.

    ``firm_id IN (...)`` has no index giving the firms' clients in order, so the database read and
    sorted every match (SQLite: ``USE TEMP B-TREE FOR ORDER BY``; its plain list alone stopped each
    firm's read early) — at 100,000 clients and a second firm, a page of a common word 9.8 -> 42.7 ms,
    a deep page 10.5 -> 27.6 ms (bench/README.md, "Pages at scale"). Each firm's ``firm_id = ?`` is
    read in order on its index instead, and the merge stops at the page. The databases merge
    differently: SQLite merges a compound's arms in its ORDER BY (``MERGE (UNION ALL)``) only if they
    have no ORDER BY of their own (wrapped as subqueries, each was sorted again); PostgreSQL's planner
    merges (``Merge Append``) only arms that are ordered and limited themselves (unlimited, it
    scanned and sorted the roster): ``each_firm_limited``, each arm's first offset + ``PAGE_SIZE``.
    """
    keys = [term.element for term in order]  # the sort column(s), then Client.id
    offset = (number - 1) * PAGE_SIZE
    arms = []
    for firm in firms:
        arm = select(*keys).where(Client.firm_id == firm, *narrowing)
        arms.append(arm.order_by(*order).limit(offset + PAGE_SIZE) if each_firm_limited else arm)
    merged = union_all(*arms)
    merged_order = [column.desc() if term.modifier is operators.desc_op else column.asc()
                    for column, term in zip(merged.selected_columns, order)]
    page = merged.order_by(*merged_order).limit(PAGE_SIZE).offset(offset).subquery("page")
    return select(page.c.id)


def _resendable(client: Client, company: Company | None, setup_pending: bool) -> tuple[str, ...]:
    """The links the client page may resend (the rules ClientActions.resend_link applies)."""
    if company is None:
        return ()
    return (("setup",) if setup_pending else ()) + (("payment",) if awaits_payment(client, company) else ())


class Workspace(DomainService):
    def __init__(self, ctx: DomainContext) -> None:
        super().__init__(ctx)
        with self._sessions() as s:
            self._search_index = search_index(s)

    @property
    def search_index(self) -> SearchIndex:
        """The trigram index the search box uses (migration 0015), or none."""
        return self._search_index

    @staticmethod
    def _narrowing(query: RosterQuery) -> list[ColumnElement[bool]]:
        """The roster's filters and words, within the firms."""
        where: list[ColumnElement[bool]] = []
        if query.status:
            where.append(Client.status == query.status)
        if query.billing:
            where.append(Client.billing == query.billing)
        return where + [contains(word) for word in words(query.text)]

    def _found_by_index(self, s: Session, where: list[ColumnElement[bool]], found: list[str]) -> list[int] | None:
        """On SQLite's FTS5 index, the ids of the clients the search finds, stopped at ``SEARCH_LIMIT``
        + 1 (a common fragment: the page then reads the roster in order); None without the index.

        The index's rows come first and each is checked against the roster (firms, filters, short
        words) by its id (a correlated EXISTS: SQLite's planner would otherwise read the firm's whole
        index and look each row up in the list), so the statement reads only the rows the words name.
        """
        if self._search_index is not SearchIndex.FTS5 or not indexed(found):
            return None
        in_scope = select(Client.id).where(Client.id == SEARCH_TABLE.c.rowid, *where).correlate(SEARCH_TABLE)
        return list(s.scalars(
            select(SEARCH_TABLE.c.rowid).where(fts_match(found), in_scope.exists()).limit(SEARCH_LIMIT + 1)
        ))

    @staticmethod
    def _weighs_filter(s: Session, query: RosterQuery) -> bool:
        """A filtered page on SQLite: read through the filter's index or along the order's, as
        ``_read_by_filter`` decides. (Other pages, and PostgreSQL's, skip the counter's second sum.)"""
        return bool(query.status or query.billing) and _on_sqlite(s)

    def _few_filtered(self, s: Session, firms: Collection[int], query: RosterQuery, page: int) -> bool:
        """A search with a filter, on SQLite: whether the filter's clients (the counter's number, which
        the search only narrows) are few enough to be read through the filter's index and sorted
        (``_read_by_filter``). A common word with a rare filter had the search index name every client
        it matched, each then checked against the filter: 83 ms at 100,000 clients."""
        if not self._weighs_filter(s, query):
            return False
        matching, in_all = s.execute(_counted_in_all(firms, query.status, query.billing, query.firm_id)).one()
        return _read_by_filter(int(matching), int(in_all), page)

    def page(self, user: UserView, read: Callable[..., T], *args: Any) -> tuple[T, NavCounts]:
        """A page's read (``read``: ``clients``, ``client``, ``pending`` or ``team``, given ``user`` and
        ``args``) and the navigation's numbers, on one session: one connection and one transaction
        for both (a pool checkout and a rollback fewer per page; one snapshot on SQLite)."""
        with self._sessions() as s:
            return read(user, *args, s=s), self.counts(user, s=s)

    @contextmanager
    def _reading(self, s: Session | None) -> Iterator[Session]:
        """The caller's session (``page``), or one of its own."""
        if s is not None:
            yield s
            return
        with self._sessions() as own:
            yield own

    def clients(self, user: UserView, query: RosterQuery, s: Session | None = None) -> RosterPage:
        """One page of the user's firms' clients, and how many there are.

        A fixed number of statements, none reading the roster beyond what the page needs:

        - the plain roster or a filter (status, billing, firm): the count is a sum of the counter's
          rows (``firm_client_counts``), and the page is the 50 ids at its offset in the index of
          its order (a subquery), then those 50 rows read by id — a deep page skips index entries,
          not rows; on SQLite a filter that few clients match is read through its own index and
          sorted instead (``_read_by_filter``);
        - a search on SQLite's trigram index: the ids it finds (at most ``SEARCH_LIMIT``: the
          count), then the page's 50 rows among them by id, sorted; with a filter few clients match,
          those clients are searched instead, through the filter's index (``_few_filtered``);
        - any other search (PostgreSQL, whose trigram indexes serve the ``LIKE``; a search of short
          words; a fragment found more than ``SEARCH_LIMIT`` times): the page in the index's order,
          and the count when the page does not tell it, stopped at ``SEARCH_LIMIT`` + 1 (then the
          page says "more than 1000").

        A staff member of several firms has each page read along each firm's own index, merged
        (``_merged_page``): ``firm_id IN (...)`` would have the database read and sort every match.
        (A filter few clients match, on SQLite, is read through its index and sorted as above.)

        A page past the end is clamped to the last one when the count is known.
        """
        columns = (Client.id, Firm.name, Client.name, Client.kind, Client.email, Client.billing,
                   Client.status, Client.connected_at, Client.created_at)
        order = SORTS[query.sort]
        found = words(query.text)
        firms = _firms(user)
        with self._reading(s) as s:
            narrowing = self._narrowing(query)
            where = _scope(Client.firm_id, firms, query.firm_id) + narrowing
            # The firms whose clients the page may show: several are read each on its own index, merged.
            shown = sorted(firm for firm in firms if query.firm_id in (None, firm))
            merged = len(shown) > 1

            def page_of(number: int, by_filter: bool = False) -> list[Any]:
                ids: Select[Any]
                if merged and not by_filter:
                    ids = _merged_page(shown, narrowing, order, number, not _on_sqlite(s))
                else:
                    ids = (select(Client.id).where(*where).order_by(*(_unindexed(order) if by_filter else order))
                           .limit(PAGE_SIZE).offset((number - 1) * PAGE_SIZE))
                ids = ids.correlate(None)
                return list(s.execute(
                    select(*columns).join(Firm, Firm.id == Client.firm_id).where(Client.id.in_(ids)).order_by(*order)
                ).all())

            def count(limit: int) -> int:
                matching = select(Client.id).where(*where).limit(limit).subquery()
                return s.scalar(select(func.count()).select_from(matching)) or 0

            page = query.page
            more = False
            # A rare filter's clients are read and searched directly: the search index would name every
            # client a common word matches, each then checked against the filter.
            by_filter = bool(found) and self._few_filtered(s, firms, query, page)
            by_index = self._found_by_index(s, where, found) if found and not by_filter else None
            if by_index is not None and len(by_index) <= SEARCH_LIMIT:
                where, merged = [Client.id.in_(by_index)], False
                total = len(by_index)
                page = min(page, max(1, -(-total // PAGE_SIZE)))
                rows = page_of(page) if total else []
            elif found:
                rows = page_of(page, by_filter)
                if 0 < len(rows) < PAGE_SIZE:
                    total = (page - 1) * PAGE_SIZE + len(rows)
                else:
                    # The index found more than the limit already: no need to count them again.
                    total = SEARCH_LIMIT + 1 if by_index is not None else count(SEARCH_LIMIT + 1)
                    more = total > SEARCH_LIMIT
                    if more:
                        total = SEARCH_LIMIT
                    elif not rows and page > 1:
                        page = max(1, -(-total // PAGE_SIZE))
                        rows = page_of(page, by_filter)
            else:
                in_all: int | None = None
                if self._weighs_filter(s, query):
                    counted = s.execute(_counted_in_all(firms, query.status, query.billing, query.firm_id)).one()
                    total, in_all = int(counted[0]), int(counted[1])
                else:
                    total = int(s.scalar(_counted(firms, query.status, query.billing, query.firm_id)) or 0)
                page = min(page, max(1, -(-total // PAGE_SIZE)))
                rows = page_of(page, in_all is not None and _read_by_filter(total, in_all, page))
        pages = max(1, -(-total // PAGE_SIZE))
        if more:  # not known: this one, and the next when this one is full
            pages = page + (1 if len(rows) == PAGE_SIZE else 0)
        return RosterPage(
            rows=tuple(RosterRow(*row) for row in rows), total=total,
            query=RosterQuery(query.text, query.status, query.billing, query.firm_id, query.sort, page),
            pages=pages, more=more,
        )

    def client(self, user: UserView, client_id: int, s: Session | None = None) -> ClientDetail | None:
        """A client of one of the user's firms, with its timeline; None for any other (the page says 404)."""
        admin = aliased(User)
        with self._reading(s) as s:
            row = s.execute(
                select(Client, Firm.name, Company, admin)
                .join(Firm, Firm.id == Client.firm_id)
                .outerjoin(Company, Company.id == Client.company_id)
                .outerjoin(admin, admin.id == Client.primary_admin_id)
                .where(Client.id == client_id, _among(Client.firm_id, _firms(user)))
            ).first()
            if row is None:
                return None
            client, firm_name, company, staff_admin = row
            products: tuple[str, ...] = ()
            connected: tuple[str, ...] = ()
            if company is not None:
                products = tuple(s.scalars(
                    select(Product.name).join(CompanyProduct, CompanyProduct.product_id == Product.id)
                    .where(CompanyProduct.company_id == company.id).order_by(Product.position)
                ))
                connected = tuple(s.scalars(
                    select(Firm.name).join(Client, Client.firm_id == Firm.id)
                    .where(Client.company_id == company.id).order_by(Firm.name_key)
                ))
            timeline = self._timeline(s, client, company)
            invitations: tuple[ClientInvitation, ...] = ()
            setup_pending = False
            if company is not None:
                invitations = tuple(ClientInvitation(*row) for row in s.execute(
                    select(Invitation.id, Invitation.email, Invitation.expires_at)
                    .where(Invitation.company_id == company.id, Invitation.state == InvitationState.PENDING,
                           Invitation.expires_at > self._now())
                    .order_by(Invitation.expires_at, Invitation.id)
                ))
                setup_pending = s.scalar(
                    select(func.count()).select_from(SetupInvitation).where(
                        SetupInvitation.company_id == company.id, SetupInvitation.firm_id == client.firm_id,
                        SetupInvitation.state == SetupState.PENDING)
                ) != 0
        if staff_admin is not None:
            admin_name, admin_email = staff_admin.name, staff_admin.email
        elif company is not None:
            admin_name, admin_email = company.admin_name, company.admin_email
        else:
            admin_name = admin_email = None
        return ClientDetail(
            id=client.id, firm=firm_name, name=client.name, kind=client.kind, email=client.email, phone=client.phone,
            billing=client.billing, status=client.status, connected_at=client.connected_at,
            created_at=client.created_at, company=company.name if company else None,
            primary_admin_name=admin_name, primary_admin_email=admin_email,
            trial_ends_at=company.trial_ends_at if company else None,
            payment_details_at=company.payment_details_at if company else None,
            products=products, connected_firms=connected, timeline=timeline, invitations=invitations,
            resend=_resendable(client, company, setup_pending),
        )

    def _timeline(self, s: Session, client: Client, company: Company | None) -> tuple[TimelineEntry, ...]:
        """Events on this client (and on its company, unless another firm's), and the emails about it.

        Emails sent to another firm about the same company (an invitation it received) stay that firm's.
        """
        about_client: ColumnElement[bool] = Event.client_id == client.id
        if company is not None:
            about_client = or_(
                about_client,
                and_(Event.company_id == company.id, or_(Event.firm_id.is_(None), Event.firm_id == client.firm_id)),
            )
        events = s.execute(
            select(Event.at, Event.kind, Event.actor, Event.channel, Event.firm_id, Event.detail)
            .where(about_client).order_by(Event.id)
        ).all()
        # "Link opened" rows are telemetry for the emails' delivery states, not lines of their own.
        entries = [TimelineEntry(at=e.at, kind=e.kind, actor=e.actor, channel=e.channel)
                   for e in events if e.kind != OPENED]
        facts = [LinkFact(e.at, e.kind, e.firm_id, parse_detail(e.detail)) for e in events if e.kind in KINDS]
        if company is not None:
            emails = s.execute(
                select(OutboxMessage.created_at, OutboxMessage.kind, OutboxMessage.subject, OutboxMessage.recipient,
                       OutboxMessage.state, OutboxMessage.attempts, OutboxMessage.last_answer, OutboxMessage.bounce_reason,
                       OutboxMessage.sent_at, OutboxMessage.invitation_id, OutboxMessage.firm_id)
                .outerjoin(Invitation, Invitation.id == OutboxMessage.invitation_id)
                .where(
                    OutboxMessage.company_id == company.id,
                    or_(
                        OutboxMessage.firm_id == client.firm_id,
                        and_(OutboxMessage.firm_id.is_(None),
                             or_(OutboxMessage.invitation_id.is_(None), Invitation.firm_id == client.firm_id)),
                    ),
                )
                .order_by(OutboxMessage.id)
            ).all()
            entries += [
                TimelineEntry(
                    at=m.created_at, kind="email", email_kind=m.kind, subject=m.subject, recipient=m.recipient,
                    state=delivery(m.state, m.kind, m.created_at, facts, m.invitation_id, m.firm_id),
                    attempts=m.attempts,
                    answer=m.bounce_reason if m.state == "bounced" and m.bounce_reason else m.last_answer,
                    sent_at=m.sent_at,
                )
                for m in emails
            ]
        # Newest first; an email queued by an event sorts after it (same instant).
        return tuple(sorted(entries, key=lambda e: (e.at, e.kind == "email"), reverse=True))

    def pending(self, user: UserView, s: Session | None = None) -> Pending:
        """Invitations to the user not yet answered, and their firms' transfers, setups and trials under way."""
        now = self._now()
        firms = _firms(user)
        email = user.email
        with self._reading(s) as s:
            latest = (
                select(OutboxMessage.id)
                .where(OutboxMessage.invitation_id == Invitation.id)
                .order_by(OutboxMessage.id.desc()).limit(1).correlate(Invitation).scalar_subquery()
            )
            invitations = s.execute(
                select(Invitation, Company.name, OutboxMessage.state, OutboxMessage.created_at, Company.admin_email,
                       Company.admin_name)
                .outerjoin(OutboxMessage, OutboxMessage.id == latest)
                .join(Company, Company.id == Invitation.company_id)
                .where(Invitation.email == email, Invitation.state == InvitationState.PENDING,
                       Invitation.expires_at > now)
                .order_by(Invitation.expires_at)
            ).all()
            transfers = s.execute(
                select(BillingTransfer, Company.name, Firm.name, Client.id)
                .join(Company, Company.id == BillingTransfer.company_id)
                .join(Firm, Firm.id == BillingTransfer.firm_id)
                .outerjoin(Client, and_(Client.company_id == Company.id, Client.firm_id == Firm.id))
                .where(_among(BillingTransfer.firm_id, firms), BillingTransfer.state == TransferState.PENDING,
                       BillingTransfer.expires_at > now)
                .order_by(BillingTransfer.expires_at)
            ).all()
            setups = s.execute(
                select(SetupInvitation, Company.name, Firm.name, Client.id)
                .join(Company, Company.id == SetupInvitation.company_id)
                .join(Firm, Firm.id == SetupInvitation.firm_id)
                .outerjoin(Client, and_(Client.company_id == Company.id, Client.firm_id == Firm.id))
                .where(_among(SetupInvitation.firm_id, firms), SetupInvitation.state == SetupState.PENDING,
                       SetupInvitation.expires_at > now)
                .order_by(SetupInvitation.expires_at)
            ).all()
            opened = [
                LinkFact(at, OPENED, None, parse_detail(detail)) for at, detail in s.execute(
                    select(Event.at, Event.detail).where(
                        Event.kind == OPENED,
                        Event.company_id.in_({inv.company_id for inv, *_ in invitations}),
                    )
                )
            ] if invitations else []
            trials = s.execute(
                select(Client.id, Client.name, Firm.name, Company.trial_ends_at, Company.payment_details_at)
                .join(Firm, Firm.id == Client.firm_id)
                .join(Company, Company.id == Client.company_id)
                .where(_among(Client.firm_id, firms), Client.status == ClientStatus.TRIAL)
                .order_by(Company.trial_ends_at)
            ).all()
        return Pending(
            invitations=tuple(
                PendingInvitation(
                    company=name, invited_by=named(inv.invited_by, inviter_name(admin_email, admin_name, name,
                                                                                inv.invited_by)),
                    created_at=inv.created_at, expires_at=inv.expires_at,
                    url=self._links.invitation(self._signer.sign(Purpose.INVITE, [inv.id, inv.nonce])),
                    # Pending, so not acted on yet: queued, sent, bounced or opened.
                    delivery=delivery(state, "invitation", sent, opened, inv.id) if state else None,
                )
                for inv, name, state, sent, admin_email, admin_name in invitations
            ),
            transfers=tuple(
                PendingTransfer(
                    company=company, firm=firm, authorized_by=t.authorized_by, expires_at=t.expires_at,
                    url=self._links.transfer(self._signer.sign(Purpose.TRANSFER, [t.id, t.nonce])), client_id=cid,
                )
                for t, company, firm, cid in transfers
            ),
            setups=tuple(
                PendingSetup(client_id=cid, company=company, firm=firm, email=setup.email,
                             created_at=setup.created_at, expires_at=setup.expires_at)
                for setup, company, firm, cid in setups
            ),
            trials=tuple(PendingTrial(*row) for row in trials),
        )

    def team(self, user: UserView, s: Session | None = None) -> list[TeamMember]:
        """Everyone who shares a firm with the user, with their firms among the user's (one statement)."""
        with self._reading(s) as s:
            rows = s.execute(
                select(User.id, User.name, User.email, Firm.name, Membership.role)
                .join(Membership, Membership.user_id == User.id)
                .join(Firm, Firm.id == Membership.firm_id)
                .where(_among(Membership.firm_id, _firms(user)))
                .order_by(User.name, User.email, Firm.name_key)
            ).all()
        members: dict[int, TeamMember] = {}
        for uid, name, email, firm, role in rows:
            known = members.get(uid)
            firms = (known.firms if known else ()) + ((firm, role),)
            members[uid] = TeamMember(name, email, firms)
        return list(members.values())

    def counts(self, user: UserView, s: Session | None = None) -> NavCounts:
        """The numbers in the navigation, in one statement of subqueries.

        The clients and the trials are sums of the counter's rows. (Pending lists a trial with its
        company; a client is in its trial only with one — a direct-discount company, made with it —
        so the counter's trials are the same clients.)
        """
        now = self._now()
        firms = _firms(user)

        def count(statement: Select[Any]) -> Any:
            return statement.scalar_subquery()

        statement = select(
            count(_counted(firms)),
            count(select(func.count()).select_from(Invitation).where(
                Invitation.email == user.email, Invitation.state == InvitationState.PENDING,
                Invitation.expires_at > now)),
            count(select(func.count()).select_from(BillingTransfer).where(
                _among(BillingTransfer.firm_id, firms), BillingTransfer.state == TransferState.PENDING,
                BillingTransfer.expires_at > now)),
            count(select(func.count()).select_from(SetupInvitation).where(
                _among(SetupInvitation.firm_id, firms), SetupInvitation.state == SetupState.PENDING,
                SetupInvitation.expires_at > now)),
            count(_counted(firms, status=ClientStatus.TRIAL)),
            count(select(func.count(func.distinct(Membership.user_id))).where(_among(Membership.firm_id, firms))),
        )
        with self._reading(s) as s:
            row = s.execute(statement).one()
        clients, invitations, transfers, setups, trials, team = (int(n or 0) for n in row)
        return NavCounts(clients=clients, pending=invitations + transfers + setups + trials, team=team)
