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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Insert, Update
from sqlalchemy.engine import Dialect

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
        returning = list(compiled.statement._returning) if compiled.statement._returning else []
        super().__init__(compiled, dialect, returning)


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
        The one-row statement's SQL with its ``VALUES`` group repeated, each row's binds processed as
        ``one``'s are (compiling a statement per number of rows took SQLAlchemy 6–24 ms each). Positional
        parameter styles only (SQLite's): what it is for.
        """
        if not rows:
            return []
        compiled = self.compiled(connection.dialect)
        group = _values_group(compiled)
        parameters = [value for row in rows for value in compiled.parameters(row)]
        sql = compiled.sql.replace(group, ", ".join([group] * len(rows)), 1)
        found = _run(connection, sql, parameters, False, _fetch_all if compiled.row is not None else _no_rows)
        return [compiled.typed(row) for row in found]


def _run(connection: Connection, sql: str, parameters: Any, executemany: bool, result: Callable[[Any], T]) -> T:
    """``sql`` on the connection's own DBAPI cursor (the statement is part of the caller's transaction),
    heard by the engine's listeners; ``result`` reads what it gave before the cursor closes. A driver
    error goes through the connection's handler, as from ``Connection.execute``."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        _heard(connection, cursor, sql, parameters, executemany)
        if executemany:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        found = result(cursor)
        cursor.close()
    except connection.dialect.loaded_dbapi.Error as exc:
        connection._handle_dbapi_exception(exc, sql, parameters, cursor, None)  # raises
        raise  # pragma: no cover - the handler always raises
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


def _values_group(compiled: _Compiled) -> str:
    """The one-row INSERT's ``(?, ?, …)``: every parameter of the statement, found once in its SQL."""
    names = compiled.names
    group = "(" + ", ".join("?" * len(names)) + ")" if names is not None else ""
    if not group or compiled.fixed or compiled.sql.count(group) != 1 or not compiled.sql.startswith("INSERT"):
        raise ValueError("rows() runs a plain INSERT … VALUES with qmark parameters (SQLite)")
    return group
