"""A firm's client roster as one streamed read: the query behind ``Roster.list_clients`` and
`cabinet client list` (table and ``--json``).

Two statements whatever the roster's size: one reads each client with its company and primary
admin (outer joins), a second the products in the same order, and the two are merged as they
stream, so memory stays flat at 100k clients.

Core only, on lightweight table stubs: `cabinet client list --json` imports SQLAlchemy's core and
none of the ORM models, the domain or the mail stack (start-up was a third of its time at 100k
clients). The roster's rules live here once: a trial's end shows only on direct billing, and the
primary admin is the staff member who took the role, else the company's admin address. Dates come
back from the database as UTC text (``utc_text``) that ``iso`` turns into ``datetime.isoformat()``'s,
so the JSON path never builds a datetime.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator, NamedTuple

from sqlalchemy import Connection, Integer, Row, String, case, column, func, select, table
from sqlalchemy.sql.elements import ColumnElement

from daemon.errors import NotFound
from daemon.names import name_key
from daemon.views import ClientView

# The columns this read needs, by name; tests/test_cli_startup.py holds them to daemon.models.
firms = table("firms", column("id", Integer), column("name", String), column("name_key", String))
clients = table(
    "clients", column("id", Integer), column("firm_id", Integer), column("company_id", Integer),
    column("kind", String), column("name", String), column("name_key", String), column("email", String),
    column("phone", String), column("billing", String), column("status", String), column("connected_at", String),
    column("primary_admin_id", Integer),
)
companies = table(
    "companies", column("id", Integer), column("name", String), column("trial_ends_at", String),
    column("admin_email", String),
)
users = table("users", column("id", Integer), column("email", String))
company_products = table("company_products", column("company_id", Integer), column("product_id", String))
products = table("products", column("id", String), column("position", Integer))

# (id, name, kind, status, billing, company, email, phone, connected_at, trial_ends_at, primary_admin):
# ClientView's fields without the firm and the products, dates as ``utc_text``.
ClientRow = Row[int, str, str, str, str, str | None, str | None, str | None, str | None, str | None, str | None]
Entry = tuple[ClientRow, tuple[str, ...]]  # a client's row and its product ids


class RosterRead(NamedTuple):
    firm: str  # the firm's name as registered (the lookup ignores case and spacing)
    batches: Iterator[list[Entry]]  # the entries in roster order, a database fetch at a time


def read_roster(connection: Connection, firm_name: str, chunk: int = 1000) -> RosterRead:
    """The firm's roster in name order, streamed from ``connection`` (which must stay open while
    ``batches`` is read). An unknown firm raises ``NotFound`` here, before any entry."""
    firm = connection.execute(select(firms.c.id, firms.c.name).where(firms.c.name_key == name_key(firm_name))).first()
    if firm is None:
        raise NotFound("firm.not_found", name=firm_name)
    return RosterRead(firm.name, _batches(connection, firm.id, chunk))


def _batches(connection: Connection, firm_id: int, chunk: int) -> Iterator[list[Entry]]:
    dialect = connection.dialect.name
    company = companies.c
    rows = connection.execute(
        select(
            clients.c.id, clients.c.name, clients.c.kind, clients.c.status, clients.c.billing, company.name,
            clients.c.email, clients.c.phone, utc_text(clients.c.connected_at, dialect),
            case((clients.c.billing == "direct", utc_text(company.trial_ends_at, dialect))),
            func.coalesce(users.c.email, company.admin_email),
        )
        .select_from(clients)
        .outerjoin(companies, company.id == clients.c.company_id)
        .outerjoin(users, users.c.id == clients.c.primary_admin_id)
        .where(clients.c.firm_id == firm_id)
        .order_by(clients.c.name_key)
        .execution_options(yield_per=chunk)
    )
    owned_rows = connection.execute(
        select(clients.c.id, company_products.c.product_id)
        .join(company_products, company_products.c.company_id == clients.c.company_id)
        .join(products, products.c.id == company_products.c.product_id)
        .where(clients.c.firm_id == firm_id)
        .order_by(clients.c.name_key, products.c.position)
        .execution_options(yield_per=chunk)
    )
    pending = next(owned_rows, None)
    for batch in rows.partitions():  # a list per fetch: no per-row call into the result or generator
        entries: list[Entry] = []
        for row in batch:
            owned: tuple[str, ...] = ()
            if pending is not None and pending[0] == row[0]:
                found = []
                while pending is not None and pending[0] == row[0]:
                    found.append(pending[1])
                    pending = next(owned_rows, None)
                owned = tuple(found)
            entries.append((row, owned))
        yield entries


def utc_text(value: ColumnElement[str], dialect: str) -> ColumnElement[str]:
    """A UTC timestamp column as ``YYYY-MM-DD HH:MM:SS.ffffff`` text (NULL stays NULL): how
    SQLAlchemy stores it on SQLite (daemon.models.UTCDateTime), so there it is read as stored;
    PostgreSQL formats its timestamptz so. ``iso`` makes it ``datetime.isoformat()``'s text:
    in Python that is two C string calls, in SQLite's functions it cost 1.5 µs a row."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", value), "YYYY-MM-DD HH24:MI:SS.US", type_=String)
    return value


def iso(text: str) -> str:
    """``utc_text``'s form as ``datetime.isoformat()`` writes the aware datetime: ``T`` between
    date and time, no fraction when there are no microseconds, then ``+00:00``."""
    return text.replace(" ", "T").replace(".000000", "") + "+00:00"  # only the seconds hold a "."


def client_views(connection: Connection, firm_name: str, chunk: int = 1000) -> Iterator[ClientView]:
    """The roster as ``ClientView``s (aware UTC datetimes). Lazy: the firm is looked up on the
    first ``next()``."""
    read = read_roster(connection, firm_name, chunk)
    when = _datetime
    for batch in read.batches:
        for (client_id, name, kind, status, billing, company, email, phone, connected_at, trial_ends_at,
             primary_admin), owned in batch:
            yield ClientView(client_id, read.firm, name, kind, status, billing, company, email, phone,
                             when(connected_at), owned, when(trial_ends_at), primary_admin)


def _datetime(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(iso(text))
