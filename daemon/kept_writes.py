"""PostgreSQL connections kept in autocommit for a hot write that is one statement (the inbound store).

A store through the pool (``daemon.db.write_connection``) was BEGIN, the INSERT and COMMIT: three round
trips, plus SQLAlchemy's execution context around the INSERT. One statement on an autocommit connection
is its own transaction, committed (durable, with the server's ``synchronous_commit``) when its answer
comes back: one round trip, and the caller answers the SMTP client only after it. What
``daemon.reads.ReadConnections`` does for a page's read, for a write:

- Kept outside the pool, opened by it (its ``connect`` events run), then detached; one cursor each.
- One user at a time per connection, any number of threads: a connection is taken from the idle ones
  (``deque.pop``, atomic) and given back when its statement is done (``append``); a second thread storing
  meanwhile takes another, or opens one. At most ``KEPT`` are kept idle; one more is closed when given back.
- A connection the server let go while it was idle (a restart, an idle timeout, a terminated backend)
  is found before use by asking its socket, not the server (as ``daemon.db._postgresql_alive`` does for
  the pool): it is dropped, and another opened. One that turns out lost during its statement drops every
  idle one (their server went too) and the statement runs once more on a fresh connection. That is
  safe only for a statement whose second run leaves what the first did (an ``INSERT … ON CONFLICT DO
  NOTHING`` whose caller reads its rows back by key): a lost answer does not say whether it committed.
  A failure on the fresh connection is the caller's (the SMTP client is answered 451 and sends again).
- ``engine.dispose()`` closes the idle ones (an engine's connections never outlive it); those in use
  are closed when their statement ends.

Errors are SQLAlchemy's (``DBAPIError.instance``), as ``Connection.execute`` raises them; the engine's
``before_cursor_execute`` listeners hear of each statement (tests count with them).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError

from daemon.db import close_quietly as _close, idle_postgresql_alive as _alive

# Idle connections kept: the SMTP listener writes one store at a time (``mailer.recorder.BatchRecorder``,
# one writer); a second for a store from elsewhere at the same moment (a command, another thread).
KEPT = 2


class KeptWrites:
    """``run(sql, parameters)``: one statement, its own transaction, on a kept autocommit connection."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("kept autocommit writes are PostgreSQL's (SQLite writes through its group writer)")
        self.engine = engine
        self.dialect = engine.dialect
        self._error = engine.dialect.loaded_dbapi.Error
        # (generation, DBAPI connection, its cursor), last used on the right
        self._idle: deque[tuple[int, Any, Any]] = deque()
        self._generation = 0  # moved on by ``drop_all``: a connection of an earlier one is closed, not kept
        event.listen(engine, "engine_disposed", self.drop_all)

    def drop_all(self, *_: Any) -> None:
        """Close every idle connection; those in use are closed when their statement ends."""
        self._generation += 1
        while True:
            try:
                _, connection, _ = self._idle.pop()
            except IndexError:
                return
            _close(connection)

    def _take(self) -> tuple[int, Any, Any, bool]:
        """(generation, DBAPI connection, its cursor, whether it was kept idle before: may have been lost)."""
        while True:
            try:
                generation, connection, cursor = self._idle.pop()
            except IndexError:
                break
            if generation == self._generation and _alive(connection):
                return generation, connection, cursor, True
            _close(connection)
        generation = self._generation
        try:
            pooled = self.engine.raw_connection()  # the pool's "connect" events run, then it is taken out
        except self._error as exc:
            raise DBAPIError.instance(None, None, exc, self._error, dialect=self.dialect) from exc
        connection = pooled.dbapi_connection
        pooled.detach()
        connection.autocommit = True
        return generation, connection, connection.cursor(), False

    def _give_back(self, generation: int, connection: Any, cursor: Any) -> None:
        if generation == self._generation and len(self._idle) < KEPT:
            self._idle.append((generation, connection, cursor))
        else:
            _close(connection)

    def run(self, sql: str, parameters: Any) -> list[Any]:
        """``sql`` (the driver's own SQL and parameters) as its own transaction: committed when this
        returns; its rows, if it returns any. Run a second time when the kept connection is found lost
        during it (see the module's docstring: for a statement that may run twice)."""
        for attempt in (1, 2):
            generation, connection, cursor, kept = self._take()
            try:
                listeners = self.engine.dispatch.before_cursor_execute
                if listeners:  # none outside tests: no iteration through SQLAlchemy's empty-listener object
                    for listener in listeners:
                        listener(None, cursor, sql, parameters, None, False)
                cursor.execute(sql, parameters)
                found = cursor.fetchall() if cursor.description is not None else []
            except self._error as exc:
                lost = self.dialect.is_disconnect(exc, connection, cursor)
                _close(connection)
                if lost:
                    self.drop_all()  # its siblings went with it (a server restart)
                    if attempt == 1 and kept:
                        continue  # kept until the server dropped it: once more, on a fresh connection
                raise DBAPIError.instance(sql, parameters, exc, self._error, connection_invalidated=lost,
                                          dialect=self.dialect) from exc
            except BaseException:
                _close(connection)
                raise
            self._give_back(generation, connection, cursor)
            return found
        raise AssertionError("unreachable")  # the second attempt returns or raises

