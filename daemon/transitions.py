"""The one writer of states: a guarded UPDATE whose row count says who won.

Every state in ``daemon.models`` (invitations, billing transfers, client setup
invitations, a client's status) changes here and nowhere else: ``UPDATE …
WHERE id = :id AND state IN (:expected…)``. On PostgreSQL two transactions that
both read "pending" both reach their UPDATE; the second waits for the first's
row lock, re-reads the row and matches nothing, so exactly one wins. The loser
gets ``TransitionLost`` carrying what the row is now, which the domain turns
into the error its adapters show. A test (tests/test_rules.py) checks that no
other code assigns a state.

``Checkpoint`` is the seam the race tests use: it is called between a
transition's read and its write. In production it does nothing; a test passes
one that holds both contenders at that point and releases them together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, bindparam, inspect, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value

from daemon.db import rows_changed
from daemon.errors import InvalidState
from daemon.prepared_write import PreparedWrite
from daemon.models import BillingTransfer, Client, InboundMessage, Invitation, OutboxMessage, SetupInvitation

#: Called with (table, row id, wanted state) just before a transition's UPDATE.
Checkpoint = Callable[[str, int, str], None]

Row = TypeVar("Row", Invitation, BillingTransfer, SetupInvitation, Client, InboundMessage, OutboxMessage)

# The column each stateful model keeps its state in.
STATE_COLUMNS: dict[type[Any], InstrumentedAttribute[str]] = {
    Invitation: Invitation.state,
    BillingTransfer: BillingTransfer.state,
    SetupInvitation: SetupInvitation.state,
    Client: Client.status,
    # Outbox rows also change state under a worker's claim token (mailer/outbox.py); these are the
    # changes made outside that claim (a bounce report, an operator's retry).
    OutboxMessage: OutboxMessage.state,
    InboundMessage: InboundMessage.state,
}


def no_checkpoint(table: str, row_id: int, wanted: str) -> None:
    """Production's checkpoint: nothing waits."""


class TransitionLost(InvalidState):
    """The row was not in an expected state when the UPDATE ran: someone else changed it first."""

    def __init__(self, table: str, row_id: int, wanted: str, expected: tuple[str, ...], current: str | None) -> None:
        super().__init__(
            f"{table} {row_id} is {current or 'gone'}, not {' or '.join(expected)}: cannot make it {wanted}",
            current=current,
        )
        self.table = table
        self.row_id = row_id
        self.wanted = wanted
        self.expected = expected


def state_column(model: type[Any]) -> InstrumentedAttribute[str]:
    return STATE_COLUMNS[model]


def transition(
    s: Session,
    model: type[Row],
    row_id: int,
    expected: Iterable[str],
    to: str,
    *,
    where: Iterable[ColumnElement[bool]] = (),
    checkpoint: Checkpoint = no_checkpoint,
    **values: Any,
) -> None:
    """Move one row from one of ``expected`` to ``to`` (setting ``values`` too), or raise ``TransitionLost``.

    ``where`` adds conditions the row must still meet (an expiry date, a column
    still empty). A row loaded in ``s`` is refreshed, so callers read the new state.
    States are a ``daemon.models`` state enum's members, or plain strings for the outbox's (it has no enum).
    """
    column = state_column(model)
    table = model.__tablename__
    expected_values = tuple(str(state) for state in expected)
    checkpoint(table, row_id, str(to))
    # RETURNING the row's columns refreshes the caller's loaded copy in the same statement: a separate
    # re-read (which also dropped its loaded relationships) was two more trips inside the write lock.
    fresh = s.execute(
        update(model)
        .where(model.id == row_id, column.in_(expected_values), *where)
        .values({column.key: str(to), **values})
        .returning(*model.__table__.columns)
        .execution_options(synchronize_session=False)
    ).all()
    if len(fresh) != 1:
        # Re-read the row (and refresh the caller's copy): after a loss, it says who won.
        row = s.get(model, row_id, populate_existing=True)
        raise TransitionLost(table, row_id, str(to), expected_values, getattr(row, column.key, None))
    _refresh_loaded(s, model, row_id, fresh[0], values.keys())


class Transition:
    """``transition`` as one Core statement built once, for a hot path that writes without a Session.

    A write that read everything it needs before taking the write lock (``Roster.accept_invitation``)
    runs it on its connection: no flush or identity map inside the lock, and no statement built per
    call (each run only binds). ``where`` carries every condition that earlier read relied on, so a
    row that changed since is lost, never overwritten. ``values`` and ``where`` may hold
    ``bindparam``s, bound by ``run``'s keywords (named unlike the table's columns).
    """

    def __init__(
        self,
        model: type[Row],
        expected: Iterable[StrEnum],
        to: StrEnum,
        *,
        where: Iterable[ColumnElement[bool]] = (),
        values: Mapping[str, Any],
        returning: bool = True,
    ) -> None:
        column = state_column(model)
        table = model.__table__
        self._table = model.__tablename__
        self._to = str(to)
        self._expected = tuple(str(state) for state in expected)
        # Compiled once per engine and run on the connection's cursor (``PreparedWrite``): OR of
        # equalities, not IN, whose expanding parameter is rendered at each execution.
        statement = (
            update(table)
            .where(
                table.c.id == bindparam("transition_row_id"),
                or_(*(table.c[column.key] == state for state in self._expected)),
                *where,
            )
            .values({column.key: self._to, **values})
        )
        self._statement = PreparedWrite(statement.returning(*table.columns if returning else [table.c.id]))
        # ``returning=False``, for a caller that already knows the row's columns: on SQLite the row count
        # alone says who won (RETURNING's rows are built apart, then typed by the driver: a third of the
        # statement's cost). PostgreSQL keeps a RETURNING of the id: in psycopg's pipeline mode
        # (``daemon.db.pipelined``) a row count is known only once a result is read, and the row is that.
        self._counted = None if returning else PreparedWrite(statement)
        self._current = select(table.c[column.key]).where(table.c.id == bindparam("transition_row_id"))

    def run(
        self, connection: Connection, row_id: int, checkpoint: Checkpoint = no_checkpoint, **binds: Any
    ) -> Any:
        """Move the row; returns it (a named tuple of its columns) as it is now (None when built with
        ``returning=False``), or raises ``TransitionLost`` saying what it is."""
        checkpoint(self._table, row_id, self._to)
        params = {"transition_row_id": row_id, **binds}
        if self._counted is not None and connection.dialect.name == "sqlite":
            fresh, moved = None, self._counted.changed(connection, params) == 1
        else:
            fresh = self._statement.one(connection, params)
            moved = fresh is not None
        if not moved:
            current = connection.scalar(self._current, {"transition_row_id": row_id})
            raise TransitionLost(self._table, row_id, self._to, self._expected, current)
        return fresh if self._counted is None else None

    def send(
        self, connection: Connection, row_id: int, checkpoint: Checkpoint = no_checkpoint, **binds: Any
    ) -> Callable[[], Any]:
        """``run`` in two halves, in psycopg's pipeline mode (``daemon.db.pipelined``): the UPDATE sent now,
        and the function returned reads its outcome, as ``run`` returns or raises it. A statement sent in
        between comes back in the same round trip. The row count still decides: no row, ``TransitionLost``."""
        checkpoint(self._table, row_id, self._to)
        read = self._statement.send(connection, {"transition_row_id": row_id, **binds})

        def outcome() -> Any:
            fresh = read()
            if fresh is None:
                current = connection.scalar(self._current, {"transition_row_id": row_id})
                raise TransitionLost(self._table, row_id, self._to, self._expected, current)
            return fresh if self._counted is None else None

        return outcome

    def run_many(self, connection: Connection, rows: list[tuple[int, dict[str, Any]]],
                 checkpoint: Checkpoint = no_checkpoint) -> None:
        """``run`` for several rows (each its id and binds) in one executemany, built with
        ``returning=False``, on SQLite (whose driver sums executemany's row counts): every row moves, or
        ``TransitionLost`` (naming the first row) says one did not, and the caller undoes the lot (its
        savepoint)."""
        assert self._counted is not None and connection.dialect.name == "sqlite"
        for row_id, _ in rows:
            checkpoint(self._table, row_id, self._to)
        moved = self._counted.many(connection, [{"transition_row_id": row_id, **binds} for row_id, binds in rows])
        if moved != len(rows):
            raise TransitionLost(self._table, rows[0][0], self._to, self._expected, None)


class TransitionEach:
    """``Transition`` for a batch of rows, each to its own state, in one executemany.

    Each parameter set names its row (``b_id``) and the state it moves to (``b_state``), plus the
    ``bindparam``s of ``values``. Every row must still be in ``expected``; the caller holds the rows'
    locks (``SELECT … FOR UPDATE``), so a row lost since is a bug, and ``run`` raises
    ``TransitionLost`` for it where the driver reports executemany's row count.
    """

    def __init__(self, model: type[Row], expected: Iterable[StrEnum], *, values: Mapping[str, Any]) -> None:
        column = state_column(model)
        table = model.__table__
        self._table = model.__tablename__
        self._expected = tuple(str(state) for state in expected)
        self._statement = (
            update(table)
            # OR of equalities, not IN: an IN list's expanding parameter cannot run as an executemany.
            .where(table.c.id == bindparam("b_id"), or_(*(table.c[column.key] == state for state in self._expected)))
            .values({column.key: bindparam("b_state"), **values})
        )

    def run(self, connection: Connection, rows: list[dict[str, Any]]) -> int:
        moved = int(connection.execute(self._statement, rows).rowcount)
        if connection.dialect.supports_sane_multi_rowcount and moved != len(rows):
            raise TransitionLost(self._table, rows[0]["b_id"], str(rows[0]["b_state"]), self._expected, None)
        return moved


def _refresh_loaded(s: Session, model: type[Any], row_id: int, fresh: Any, changed: Iterable[str]) -> None:
    """Give the session's copy of the row (if it holds one) the values the UPDATE returned."""
    loaded = s.identity_map.get(s.identity_key(model, row_id))
    if loaded is None:
        return
    mapper = inspect(model)
    for prop in mapper.column_attrs:
        set_committed_value(loaded, prop.key, fresh._mapping[prop.columns[0]])
    # A relationship whose foreign key just changed is loaded again when next read.
    changed = set(changed)
    stale = [rel.key for rel in mapper.relationships if any(c.key in changed for c in rel.local_columns)]
    if stale:
        s.expire(loaded, stale)


def transition_all(
    s: Session,
    model: type[Row],
    where: Iterable[ColumnElement[bool]],
    expected: Iterable[StrEnum],
    to: StrEnum,
    **values: Any,
) -> int:
    """Move every row matching ``where`` and in one of ``expected`` to ``to``; returns how many moved.

    For changes that follow from another transition (a company's clients become
    active when its transfer completes): rows already elsewhere are left alone.
    """
    column = state_column(model)
    expected_values = tuple(str(state) for state in expected)
    return rows_changed(
        s,
        update(model)
        .where(column.in_(expected_values), *where)
        .values({column.key: str(to), **values})
        .execution_options(synchronize_session="fetch"),
    )
