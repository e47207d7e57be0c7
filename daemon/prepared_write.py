"""A hot write's Core INSERT/UPDATE with the least machinery between it and the database driver.

``daemon.prepared`` does this for reads; here the statement runs inside the caller's write
transaction, on its connection's DBAPI cursor. The statement is compiled once per engine (dialect)
into its SQL and parameter style; each execution only processes its binds with the types'
own bind processors and hands them to the driver. RETURNING rows come back typed by the columns'
result processors, as ``Connection.execute`` gives them. Skipped: the execution context, the
compiled-cache lookup and the result object, most of the cost of a statement the driver runs in
a few microseconds (an accept's four writes were ~1.1 ms of CPU inside the write lock).

Driver errors go through the connection's own handler (``handle_error`` listeners, invalidation of a
lost connection, ``DBAPIError.instance``), so fault handling sees what ``Connection.execute`` raises.
The engine's ``before_cursor_execute`` listeners still hear of each statement (tests count them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Insert, Update
from sqlalchemy.engine import Dialect

from daemon.db import kept_cursor, raise_as_sqlalchemy
from daemon.prepared import Compiled

T = TypeVar("T")


class _Compiled(Compiled):
    """One write statement compiled for one dialect."""

    def __init__(self, statement: Insert | Update, dialect: Dialect, column_keys: Sequence[str] | None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a prepared write takes plain bind parameters only (no IN list)")
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            # A Python-side column default needs an execution context: the caller supplies the value.
            raise ValueError("a prepared write needs every column with a Python default given")
        returning = list(statement._returning)  # the statement compiled (``compiled.statement``)
        super().__init__(compiled, dialect, returning)
        self.paramstyle: str = dialect.paramstyle
        self.bind_names = frozenset(compiled.bind_names.values())

    @cached_property
    def values_group(self) -> _ValuesGroup:
        """The INSERT cut around its one ``VALUES`` group (worked out on first use: ``rows``'s statements)."""
        return _values_group(self)


@dataclass(frozen=True)
class _ValuesGroup:
    """A one-row INSERT's SQL cut around its ``VALUES`` group, to write the group once per row.

    ``group`` is in a positional parameter style: SQLite's ``?`` as compiled, or psycopg's ``%s`` for its
    named ``%(name)s`` (the same ``%%`` escaping holds in both: nothing else in the SQL changes).
    ``names``: the group's parameters in order, when the compiled statement's are named (the values of a
    row's named parameters are put in that order); None when they are positional already."""

    head: str
    group: str
    tail: str
    names: tuple[str, ...] | None

    def sql(self, count: int) -> str:
        return self.head + ", ".join([self.group] * count) + self.tail

    def parameters(self, compiled: _Compiled, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Every row's parameters, processed as ``one``'s are, one after the other."""
        if self.names is None:
            return [value for row in rows for value in compiled.parameters(row)]
        names = self.names
        return [parameters[name] for parameters in map(compiled.parameters, rows) for name in names]


class PreparedWrite:
    """``statement`` (a Core INSERT or UPDATE, RETURNING or not) run on a write connection.

    ``column_keys`` names the columns an INSERT without ``values()`` is given at execution (every
    execution must give all of them). ``one(connection, **binds)`` returns the first RETURNING row
    (a named tuple of its columns) or None; ``changed(connection, binds)`` the row count of one without
    RETURNING; ``many(connection, rows)`` runs an executemany; ``rows(connection, rows)`` runs an INSERT's
    rows as one multi-row statement.
    """

    def __init__(self, statement: Insert | Update, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement  # the Core statement, as ``Connection.execute`` would run it
        self._column_keys = tuple(column_keys) if column_keys else None
        # A cache, as SQLAlchemy's compiled cache on each engine is: one entry per engine's dialect,
        # gone with it (weak keys: an id could be reused by another engine's dialect).
        self._by_dialect: WeakKeyDictionary[Dialect, _Compiled] = WeakKeyDictionary()

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect)
        if found is None:
            found = self._by_dialect[dialect] = _Compiled(self.statement, dialect, self._column_keys)
        return found

    def one(self, connection: Connection, binds: dict[str, Any]) -> Any:
        compiled = self.compiled(connection.dialect)
        row = _run(connection, compiled.sql, compiled.parameters(binds), False,
                   _fetch_one if compiled.row is not None else _nothing)
        return None if row is None else compiled.typed(row)

    def changed(self, connection: Connection, binds: dict[str, Any]) -> int:
        """A statement without RETURNING: how many rows it changed (the driver's row count)."""
        compiled = self.compiled(connection.dialect)
        return _run(connection, compiled.sql, compiled.parameters(binds), False, _row_count)

    def many(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """An executemany of ``rows``; returns the rows changed, all executions summed (as SQLite's and
        psycopg's drivers count them)."""
        if not rows:
            return 0
        compiled = self.compiled(connection.dialect)
        return _run(connection, compiled.sql, [compiled.parameters(row) for row in rows], True, _row_count)

    def rows(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """An INSERT's ``rows`` as ONE statement (a multi-row ``VALUES``), not an executemany; returns its
        RETURNING rows (named tuples, in the order the database gives them: match them by a key).

        SQLite ends each statement's work at its end: an executemany runs the statement once per row,
        and a trigger that writes an FTS5 index flushes one segment per row; one statement, one segment.
        On PostgreSQL one statement is one round trip, and its own transaction on an autocommit
        connection (``rows_statement`` for such a connection's cursor).
        """
        if not rows:
            return []
        compiled = self.compiled(connection.dialect)
        sql, parameters = self.rows_statement(connection.dialect, rows)
        found = _run(connection, sql, parameters, False, _fetch_all if compiled.row is not None else _no_rows,
                     keep=False)
        return [compiled.typed(row) for row in found]

    def send(self, connection: Connection, binds: dict[str, Any]) -> Callable[[], Any]:
        """``one`` in two halves, in psycopg's pipeline mode (``daemon.db.pipelined``): the statement sent
        now, its result not waited for; the function returned reads its row (typed; None if none), so that
        statements sent one after the other come back in one round trip. An error is raised by that read.
        The row must be read before the same statement is sent again on the connection (its cursor is kept:
        ``daemon.db.kept_cursor``)."""
        compiled = self.compiled(connection.dialect)
        sql, parameters = compiled.sql, compiled.parameters(binds)
        pooled = connection.connection
        cursor = kept_cursor(pooled, pooled.dbapi_connection, sql)
        error = connection.dialect.loaded_dbapi.Error
        try:
            _heard(connection, cursor, sql, parameters, False)
            cursor.execute(sql, parameters)
        except error as exc:
            raise_as_sqlalchemy(connection, exc, sql, parameters, cursor)

        def row() -> Any:
            try:
                found = cursor.fetchone()
            except error as exc:
                raise_as_sqlalchemy(connection, exc, sql, parameters, cursor)
            return None if found is None else compiled.typed(found)

        return row

    def rows_statement(self, dialect: Dialect, rows: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        """The SQL and the driver's parameters of ``rows`` as one multi-row INSERT (``rows``): the one-row
        statement's SQL with its ``VALUES`` group written once per row, in a positional parameter style,
        each row's binds processed as ``one``'s are (compiling a statement per number of rows took
        SQLAlchemy 6–24 ms each). ``compiled(dialect).typed`` types the rows it returns."""
        compiled = self.compiled(dialect)
        values = compiled.values_group
        return values.sql(len(rows)), values.parameters(compiled, rows)


def _run(connection: Connection, sql: str, parameters: Any, executemany: bool, result: Callable[[Any], T],
         keep: bool = True) -> T:
    """``sql`` on the connection's own DBAPI cursor (the statement is part of the caller's transaction),
    heard by the engine's listeners; ``result`` reads what it gave. A driver error goes through the
    connection's handler, as from ``Connection.execute``. ``keep``: the statement's SQL is one of a fixed
    few, whose cursor PostgreSQL's connection keeps (``daemon.db.kept_cursor``); else (``rows``'s SQL, one per
    number of rows) a cursor of its own, closed after."""
    pooled = connection.connection
    postgresql = keep and connection.dialect.name == "postgresql"
    cursor = kept_cursor(pooled, pooled.dbapi_connection, sql) if postgresql else \
        pooled.dbapi_connection.cursor()  # type: ignore[union-attr]  # None only once invalidated: not in a transaction
    try:
        _heard(connection, cursor, sql, parameters, executemany)
        if executemany:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        found = result(cursor)
        if not postgresql:
            cursor.close()
    except connection.dialect.loaded_dbapi.Error as exc:
        raise_as_sqlalchemy(connection, exc, sql, parameters, cursor)
    return found


def _fetch_one(cursor: Any) -> Any:
    return cursor.fetchone()


def _fetch_all(cursor: Any) -> list[Any]:
    return cursor.fetchall()


def _row_count(cursor: Any) -> int:
    return int(cursor.rowcount)


def _nothing(cursor: Any) -> None:
    return None


def _no_rows(cursor: Any) -> list[Any]:
    return []


def _heard(connection: Connection, cursor: Any, sql: str, parameters: Any, executemany: bool) -> None:
    """The engine's ``before_cursor_execute`` listeners hear of the statement, as they do from ``execute``."""
    for listener in connection.engine.dispatch.before_cursor_execute:
        listener(connection, cursor, sql, parameters, None, executemany)


# psycopg's named parameter, as SQLAlchemy writes it for the ``pyformat`` style.
_NAMED = re.compile(r"%\((\w+)\)s")


def _values_group(compiled: _Compiled) -> _ValuesGroup:
    """The one-row INSERT's ``(?, ?, …)`` (SQLite) or ``(%(a)s, %(b)s::TYPE, …)`` (psycopg, written as
    ``(%s, %s::TYPE, …)``): the group after ``VALUES`` holding every parameter of the statement, once."""
    sql = compiled.sql
    start = sql.find(" VALUES (")
    if not sql.startswith("INSERT") or start < 0 or compiled.fixed:
        raise ValueError("rows() runs a plain INSERT … VALUES whose parameters are all given per row")
    start += len(" VALUES ")
    depth, end = 0, start
    for end in range(start, len(sql)):  # the group's closing parenthesis (a cast may hold its own)
        depth += {"(": 1, ")": -1}.get(sql[end], 0)
        if depth == 0:
            break
    head, group, tail = sql[:start], sql[start:end + 1], sql[end + 1:]
    if compiled.paramstyle == "qmark" and compiled.names is not None:
        if group != "(" + ", ".join("?" * len(compiled.names)) + ")" or "?" in head + tail:
            raise ValueError("rows(): the qmark VALUES group must hold every parameter, once each")
        return _ValuesGroup(head, group, tail, None)
    if compiled.paramstyle == "pyformat" and compiled.names is None:
        names = tuple(_NAMED.findall(group))
        if not names or len(set(names)) != len(names) or _NAMED.search(head + tail) \
                or set(names) != compiled.bind_names:
            raise ValueError("rows(): the VALUES group must hold every named parameter, once each")
        return _ValuesGroup(head, _NAMED.sub("%s", group), tail, names)
    raise ValueError(f"rows() writes SQLite's qmark or psycopg's pyformat parameters, not {compiled.paramstyle}")
