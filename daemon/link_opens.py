"""Recording that an emailed link's page was opened, for the "link opened" delivery state.

A GET must never change domain state, and this does not: it appends one
``link.opened`` row to the events log (telemetry, like a metric) and never
reads it back to decide what a link does. Links, their pages and their actions
behave exactly the same whether or not the row was written; the row only lets
staff see "opened" beside an email (daemon.deliveries) and support see it in
`cabinet link explain`. Only the first open of a link is kept (a reload or a
mail scanner's second fetch adds nothing), also when two instances record it at
the same instant, and a failure to record is logged and otherwise ignored by the
caller: the page is what matters.

"Opened" means the page was fetched: a mail provider's link scanner can do
that too, which is why it is never taken as "received" or "acted on".

Most of a link's GETs are first openings (a link is opened a handful of
times, often first by the recipient's mail scanner), so noting one is on the
product's hot path: the web adapter hands it to ``LinkOpens.note``, which
writes the first openings in flight together (one thread hop, one write unit,
one commit; the conditional insert compiled once, no ORM session) and returns
once its own is durable, as the page waits for it.

Once per link, in the database: the insert is conditional (``NOT EXISTS``), which is enough under
SQLite's single writer. On PostgreSQL two transactions at the same instant both see no row, so a
partial UNIQUE index on the opening (migration 0019) refuses the second, which waits for the first
and then writes nothing (``ON CONFLICT DO NOTHING``); a batch writes its rows in the index's key
order, so two batches never wait for each other in a circle.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _json_string
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

from sqlalchemy import ColumnElement, Insert, bindparam, exists, func, insert, literal, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from daemon.db import engine_of, savepoint, write_connection
from daemon.deliveries import OPENED, parse_detail
from daemon.domain import DomainContext, DomainService
from daemon.prepared_write import PreparedWrite
from mailer.recorder import BatchRecorder
from daemon.errors import CabinetError
from daemon.models import BillingTransfer, Company, Event, Invitation, SetupInvitation
from daemon.tokens import Purpose


@dataclass(frozen=True)
class _Link:
    purpose: str  # as daemon.deliveries names it
    token_purpose: Purpose
    model: type[Any]
    what: str
    tag: str | None = None
    bound: str | None = "nonce"


_LINKS: list[tuple[re.Pattern[str], _Link]] = [
    (re.compile(r"^/invitations/([A-Za-z0-9_\-.]+)$"), _Link("invitation", Purpose.INVITE, Invitation, "invitation")),
    (re.compile(r"^/setup/([A-Za-z0-9_\-.]+)$"), _Link("setup", Purpose.SETUP, SetupInvitation, "invitation")),
    (re.compile(r"^/payment/([A-Za-z0-9_\-.]+)$"), _Link("payment", Purpose.PAYMENT, Company, "trial", bound=None)),
    (re.compile(r"^/company/([A-Za-z0-9_\-.]+)$"),
     _Link("manage", Purpose.MANAGE, Company, "company", tag="company", bound="admin_email")),
    (re.compile(r"^/transfers/([A-Za-z0-9_\-.]+)$"),
     _Link("transfer", Purpose.TRANSFER, BillingTransfer, "billing transfer")),
]


def is_emailed_link(path: str) -> bool:
    return any(pattern.match(path) for pattern, _ in _LINKS)


@dataclass(frozen=True)
class Opening:
    """What a first opening of a link records (a ``link.opened`` event)."""

    to: str
    firm_id: int | None
    company_id: int
    detail: dict[str, Any]


def invitation_detail(invitation_id: int) -> dict[str, Any]:
    """The ``link.opened`` detail of an invitation link (the one shape ``record_openings`` writes for it)."""
    return {"purpose": "invitation", "ref": invitation_id, "invitation_id": invitation_id}


def detail_text(detail: dict[str, Any]) -> str:
    """A ``link.opened`` event's detail as ``_event`` stores it (sorted keys: one opening, one text).

    ``json.dumps(detail, sort_keys=True)``'s text. The hot page's read builds it on every request, and
    ``json.dumps`` with ``sort_keys`` makes an encoder per call: a detail of strings and integers (every
    one ``record_openings`` writes) is written here with json's own string encoder, and an invitation's (the hot
    page's, ``invitation_detail``) straight from its id."""
    if len(detail) == 3 and detail.get("purpose") == "invitation":
        ref, same = detail.get("ref"), detail.get("invitation_id")
        if type(ref) is int and type(same) is int and ref == same:
            return f'{{"invitation_id": {int.__repr__(ref)}, "purpose": "invitation", "ref": {int.__repr__(ref)}}}'
    if all(type(key) is str and (type(value) is int or type(value) is str) for key, value in detail.items()):
        return "{" + ", ".join(
            f"{_json_string(key)}: {_json_string(value) if type(value) is str else int.__repr__(value)}"
            for key, value in sorted(detail.items())
        ) + "}"
    return json.dumps(detail, sort_keys=True)


def opened_before(company_id: ColumnElement[Any], detail: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether this link's opening is already recorded, as a clause a page's own read can carry.

    ``detail`` is the event's whole detail text (``detail_text``): ``_opening`` below parses it instead,
    for every kind of link."""
    return exists().where(Event.kind == OPENED, Event.company_id == company_id, Event.detail == detail)


def _first_opening(postgresql_once: bool = False) -> Insert:
    """One ``link.opened`` row, unless this link's opening is already recorded: the check is part of
    the statement, so it is made again under the write (SQLite's single writer keeps one of two first
    openings at once, even within one batch: each row of an executemany sees the rows before it).

    ``postgresql_once``: PostgreSQL's, which also writes nothing when the row conflicts with one the
    check could not see (another transaction's, written at the same instant) in the index migration 0019
    made, ``uq_events_link_opened``. The ``NOT EXISTS`` stays: a link's later openings (most of them, once
    the first is in) then insert nothing, where a conflict would cost a speculative insert each."""
    events = Event.__table__
    binds = {name: bindparam(name, type_=events.c[name].type) for name in ("at", "actor", "firm_id", "company_id", "detail")}
    values = {"kind": literal(OPENED, events.c.kind.type), "channel": literal("link", events.c.channel.type), **binds}
    first = select(*values.values()).where(~opened_before(binds["company_id"], binds["detail"]))
    if not postgresql_once:
        return insert(events).from_select(list(values), first)
    # The index's own columns and predicate, the kind written out: a bound one could not name a partial index.
    return postgresql.insert(events).from_select(list(values), first).on_conflict_do_nothing(
        index_elements=[events.c.company_id, func.md5(events.c.detail)],
        index_where=events.c.kind == literal_column(f"'{OPENED}'"))


_FIRST_OPENING = PreparedWrite(_first_opening())
_FIRST_OPENING_ONCE = PreparedWrite(_first_opening(postgresql_once=True))


def _in_key_order(rows: list[dict[str, Any]]) -> list[int]:
    """The rows' positions in the order PostgreSQL's batches write them: by company and detail, the
    identity ``uq_events_link_opened`` keeps once (its md5 is a function of the detail: same rows, same
    order). A row that meets another transaction's uncommitted copy waits for that transaction; were
    two batches to hold links X and Y in opposite orders, each would wait for the other's (a deadlock
    PostgreSQL breaks by failing one, after its ``deadlock_timeout``: that batch's rows are then written
    one by one). In one order, a batch only waits for one that holds nothing it needs."""
    return sorted(range(len(rows)), key=lambda n: (rows[n]["company_id"], rows[n]["detail"]))

#: Invitations ``KnownOpenings`` remembers at most; past that it forgets them all at once (their pages then
#: ask the database again, once each).
KNOWN_OPENINGS = 65536


class KnownOpenings:
    """The invitations whose first opening this process knows to be recorded: written by its own
    ``LinkOpens.note`` (durable) or read on their page (``Roster.invitation_link_row``). Their page is read
    without the "opened already?" test: a ``link.opened`` event is never deleted, so one known is there for
    good. Knowing none (a new process, another instance's openings, a forgotten batch) only costs that test
    again; what records a first opening, once, is the guarded insert (``_first_opening``), as before."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: set[int] = set()  # read by the hot page (``id in known.ids``, no Python call)

    def add(self, invitation_id: int) -> None:
        if len(self.ids) >= KNOWN_OPENINGS:
            self.ids.clear()  # bounded; the busy links come back after one read each
        self.ids.add(invitation_id)


# First openings written in one write unit at most (the accepts' batch size, daemon.accepts).
BATCH = 64
# PostgreSQL: batches written at once, each in its own thread, mostly waiting for round trips. SQLite
# has one writer: its batches are written one at a time.
POSTGRESQL_WRITERS = 4


class LinkOpens(DomainService):
    def __init__(self, ctx: DomainContext) -> None:
        super().__init__(ctx)
        postgresql = engine_of(ctx.sessions).dialect.name == "postgresql"
        writers = POSTGRESQL_WRITERS if postgresql else 1
        # PostgreSQL's statement keeps one opening per link across transactions; SQLite's single writer
        # does with the plain statement.
        self._first_opening = _FIRST_OPENING_ONCE if postgresql else _FIRST_OPENING
        # max_age=0: a batch is written at once; the openings noted while it is written make the next one.
        self._batches: BatchRecorder[Opening, Exception | None] = BatchRecorder(
            self.record_openings, size=BATCH, max_age=0, writers=writers)
        self.known = KnownOpenings()

    async def note(self, opening: Opening) -> None:
        """Record a first opening a read found missing, with the others in flight; returns once it is
        durable, raises what its write (or its batch's commit) failed with."""
        outcome = await self._batches.add(opening)
        if outcome is not None:
            raise outcome
        detail = opening.detail
        if detail.get("purpose") == "invitation":  # durable now: its page need not ask again
            self.known.add(detail["ref"])

    def opening_of(self, path: str) -> Opening | None:
        """What a first opening of the emailed link at ``path`` records, or None (not an emailed link, not
        valid, or opened before). Reads only."""
        for pattern, link in _LINKS:
            match = pattern.match(path)
            if match:
                break
        else:
            return None
        # Read first, outside any write: a reload, a forged or an expired link writes nothing (on
        # SQLite a write would queue behind the single writer for every page view).
        with self._sessions() as s:
            return self._opening(s, link, match.group(1))

    def record_openings(self, openings: Sequence[Opening]) -> list[Exception | None]:
        """Append the ``link.opened`` events reads found missing, in one write unit, each by the
        conditional statement ``_first_opening`` (checked again under the write: SQLite's single writer
        keeps one of two first openings at once; on PostgreSQL, where two at the same instant both pass
        the check, the index of migration 0019 keeps the first and the other writes nothing). One
        outcome per opening, None when written or found written: all of them in one executemany;
        should that fail, each alone in a SAVEPOINT, so one bad row (a company deleted since the read)
        fails alone. Returns once they are durable; a failed commit raises."""
        now = self._clock.now()
        rows = [
            {"at": now, "actor": opening.to, "firm_id": opening.firm_id, "company_id": opening.company_id,
             "detail": detail_text(opening.detail)}
            for opening in openings
        ]
        # Written in key order on either database (only PostgreSQL's concurrent batches need it).
        order = _in_key_order(rows)
        first_opening = self._first_opening
        outcomes: list[Exception | None] = [None] * len(rows)
        with write_connection(self._sessions) as connection:
            if len(rows) == 1:
                # Alone, its error is the unit's, which the unit undoes: no savepoint of its own (on
                # PostgreSQL two round trips of five).
                first_opening.one(connection, rows[0])
                return outcomes
            try:
                with savepoint(connection, "link_openings"):
                    first_opening.many(connection, [rows[n] for n in order])
                return outcomes
            except Exception:
                if connection.invalidated:
                    raise  # the connection is gone: the unit fails
            for n in order:
                try:
                    with savepoint(connection, "link_opening"):
                        first_opening.one(connection, rows[n])
                except Exception as exc:  # noqa: BLE001 - this opening's outcome, not the batch's
                    if connection.invalidated:
                        raise
                    outcomes[n] = exc
        return outcomes

    def _opening(self, s: Session, link: _Link, token: str) -> Opening | None:
        """What a first opening of this link records, or None (not a valid link, or opened before)."""
        try:
            row = self._row_from_token(
                s, link.token_purpose, token, link.model, what=link.what, max_age=self._max_age(link),
                tag=link.tag, bound=link.bound,
            )
        except CabinetError:
            return None  # expired, replaced or forged: the page said so, nothing was opened
        company_id = row.id if isinstance(row, Company) else row.company_id
        firm_id = getattr(row, "firm_id", None)
        if isinstance(row, Company):
            to = row.admin_email
        elif isinstance(row, BillingTransfer):
            to = "firm staff"  # the link went to every member of the firm: which one opened it is unknown
        else:
            to = row.email
        if isinstance(row, Invitation):
            detail = invitation_detail(row.id)
        else:
            detail = {"purpose": link.purpose, "ref": row.id}
        earlier = s.scalars(select(Event.detail).where(Event.kind == OPENED, Event.company_id == company_id)).all()
        for text in earlier:
            seen = parse_detail(text)
            if seen.get("purpose") == link.purpose and seen.get("ref") == row.id:
                return None
        return Opening(to, firm_id, company_id, detail)

    def _max_age(self, link: _Link) -> timedelta:
        policy = self._policy
        return {
            Purpose.INVITE: policy.invitation_ttl,
            Purpose.SETUP: policy.setup_ttl,
            Purpose.PAYMENT: policy.trial_length + timedelta(days=1),  # as Onboarding reads it
            Purpose.MANAGE: policy.manage_link_ttl,
            Purpose.TRANSFER: policy.transfer_window,
        }[link.token_purpose]
