"""Everything an accept decides on, read in one statement (``Roster.accept_invitation``).

The invitation, its company, the signed-in user, the firm the accept is for, that firm's staff to
tell, the roster entry the company may already have there, and the company's products: one row.
Each statement costs more in the driver and SQLAlchemy's execution path than the index lookups it
runs (five reads and a BEGIN were two thirds of an accept's reading time), and one statement is one
snapshot, so no transaction is needed around it either.

The lists (staff, products) and the optional entry come back as JSON built by the database:
``json_group_array`` over an ordered subquery on SQLite (3.40 has no ORDER BY inside an aggregate;
an aggregate query never flattens an ordered subquery, so its rows arrive in order), ``json_agg``
with its own ORDER BY on PostgreSQL. The statement is built once per dialect; a request only binds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import JSON, Integer, Select, and_, bindparam, exists, func, select, type_coerce
from sqlalchemy.dialects.postgresql import aggregate_order_by

from daemon.domain import told_staff
from daemon.models import Client, Company, CompanyProduct, Firm, Invitation, Membership, Product, User


class StaffMember(NamedTuple):
    """A member of the firm to tell (``domain.StaffFacts``)."""

    email: str
    name: str
    locale: str
    timezone: str


class RosterEntry(NamedTuple):
    """The firm's roster entry for the company: by its company, else by its name with no company yet."""

    id: int
    company_id: int | None
    primary_admin: str | None  # the entry's primary admin's address, if it has one


def _json_list(dialect: str, item: Any, query: Select[Any], order_by: Any, outer: Any) -> Any:
    """``item`` of each of ``query``'s rows in ``order_by`` order, as one JSON array (empty: ``[]`` or
    NULL); ``query`` refers to ``outer``, a FROM of the enclosing statement."""
    if dialect == "postgresql":
        return query.with_only_columns(func.json_agg(aggregate_order_by(item, order_by))).scalar_subquery()
    ordered = query.with_only_columns(item.label("item")).order_by(order_by).correlate(outer).subquery()
    # A JSON row read back from a subquery is text again: json() keeps it an array, not a string.
    items = ordered.c.item if item.type._type_affinity is not JSON else func.json(ordered.c.item)
    return select(func.json_group_array(items)).scalar_subquery()


def _json_row(dialect: str, *columns: Any) -> Any:
    return type_coerce(func.json_build_array(*columns) if dialect == "postgresql" else func.json_array(*columns), JSON)


def accept_read(dialect: str) -> Select[Any]:
    """The accept's one read. Binds: ``id`` (the invitation), ``user_id``, ``firm_id`` (the firm named in
    the request, or None for "my only firm").

    ``firm_id``/``firm_name`` are NULL unless exactly one of the user's firms is chosen (none, or
    several and none named, is a refusal the locked path words); ``staff`` and ``entry`` are read for
    that firm.
    """
    inv, company, user = Invitation.__table__, Company.__table__, User.__table__
    membership, clients, products = Membership.__table__, Client.__table__, CompanyProduct.__table__
    staff_user, admin = User.__table__.alias("staff_user"), User.__table__.alias("primary_admin")
    # The firm the accept is for: the user's membership of the firm the request names, or (no name) their
    # only one; none when they have several and name none. Two plain LEFT JOINs (the membership, then its
    # firm), no aggregate: SQLite wrote the count-and-max subquery this replaced to a temporary table
    # on every accept.
    mine, chosen = Membership.__table__.alias("mine"), Firm.__table__.alias("chosen")
    other = Membership.__table__.alias("other")
    named = bindparam("firm_id", type_=Integer)
    only_one = ~exists().where(other.c.user_id == mine.c.user_id, other.c.firm_id != mine.c.firm_id, named.is_(None))
    staff = _json_list(
        dialect,
        _json_row(dialect, staff_user.c.email, staff_user.c.name, staff_user.c.locale, staff_user.c.timezone),
        select(staff_user.c.id).join(membership, membership.c.user_id == staff_user.c.id)
        .where(*told_staff(chosen.c.id, staff_user)),
        # The members' order is their users' (joined on it), taken from the membership so that SQLite reads
        # it from ix_memberships_firm_user in order: by staff_user.id it sorted them on every accept.
        membership.c.user_id, chosen,
    )

    def entry_where(*found_by: Any) -> Any:
        return (
            select(_json_row(dialect, clients.c.id, clients.c.company_id, admin.c.email))
            .outerjoin(admin, admin.c.id == clients.c.primary_admin_id)
            .where(clients.c.firm_id == chosen.c.id, *found_by)
            .limit(1)
            .scalar_subquery()
        )

    # By its company, else by its name with no company yet: each a lookup by a unique key of the firm's
    # roster, the first found kept. (One lookup of either, ORDER BY the company's absence LIMIT 1, had
    # SQLite build a temporary index per accept to sort at most two rows.)
    entry = type_coerce(func.coalesce(
        entry_where(clients.c.company_id == company.c.id),
        entry_where(clients.c.company_id.is_(None), clients.c.name_key == company.c.name_key),
    ), JSON)
    product_ids = _json_list(
        dialect, Product.__table__.c.id,
        select(Product.__table__.c.id).join(products, products.c.product_id == Product.__table__.c.id)
        .where(products.c.company_id == company.c.id),
        Product.__table__.c.position, company,
    )
    return (
        select(
            inv.c.id.label("invitation_id"), inv.c.nonce, inv.c.state, inv.c.expires_at, inv.c.email,
            # What the accept's result shows of the invitation besides what the accept writes (its UPDATE
            # returns nothing: it re-checks these instead).
            inv.c.invited_by, inv.c.created_at, inv.c.renewal_requested_at,
            company.c.id, company.c.name, company.c.name_key, company.c.kind, company.c.subscription,
            company.c.admin_email, company.c.admin_name, company.c.admin_locale, company.c.admin_timezone,
            company.c.trial_ends_at,
            user.c.id.label("user_id"), user.c.email.label("user_email"), user.c.name.label("user_name"),
            chosen.c.id.label("firm_id"), chosen.c.name.label("firm_name"),
            type_coerce(staff, JSON).label("staff"),
            entry.label("entry"),
            type_coerce(product_ids, JSON).label("products"),
        )
        .select_from(inv)
        .join(company, company.c.id == inv.c.company_id)
        .outerjoin(user, user.c.id == bindparam("user_id"))
        .outerjoin(mine, and_(mine.c.user_id == bindparam("user_id"),
                              mine.c.firm_id == func.coalesce(named, mine.c.firm_id), only_one))
        .outerjoin(chosen, chosen.c.id == mine.c.firm_id)
        .where(inv.c.id == bindparam("id"))
    )


ACCEPT_READ = {dialect: accept_read(dialect) for dialect in ("sqlite", "postgresql")}


def staff_of(row: Any) -> list[StaffMember]:
    return [StaffMember(*member) for member in row.staff or ()]


def entry_of(row: Any) -> RosterEntry | None:
    return RosterEntry(*row.entry) if row.entry else None


def products_of(row: Any) -> tuple[str, ...]:
    return tuple(row.products or ())
