"""Connections kept for a hot page's one-statement reads (``daemon.prepared.PreparedRead``), outside the pool.

A read by key is one statement, so it needs no transaction around it. On PostgreSQL the kept
connections are in autocommit: a lone SELECT is its own snapshot, one round trip, where a pooled
connection cost a pre-ping, BEGIN, the SELECT and the ROLLBACK on return. SQLite runs a lone
statement in its own read transaction anyway (its connections have no automatic BEGIN). Taking and
returning a kept connection is a deque's pop and append: no checkout, reset or pool events, which on
SQLite were a sixteenth of the link page's time on the event loop.

The web adapter runs these reads inline on the event loop on SQLite and in a thread on PostgreSQL
(``daemon.web.context.read``). On SQLite the reads run on an event loop share one read transaction per
turn of the loop: the first one takes a kept connection and BEGINs, the others of the same turn run in
that transaction, and a callback the first one queued (``loop.call_soon``) ends it and gives the
connection back. In WAL mode a lone statement takes and drops its read lock (wal-index locking) each
time: in a raw sqlite3 loop the page's statement took 21-23 us alone, 10-17 us inside an open
transaction; through this class, at the link bench's load (about 13 reads a turn), 24 -> 19 us, while
a turn with a single read pays a few us more (BEGIN, COMMIT, the callback). What it keeps:

- a write acknowledged before a read begins is visible to it. The transaction's snapshot is taken at
  its first read, in turn N, and its end was queued then, so it runs first thing in turn N+1, before
  any callback queued in N+1 and before anything the loop learns from its sockets in N+1 (a request
  that arrives, a writer thread's "done" for a 303 or a 250). Only callbacks queued during N before that
  first read can run in N+1 ahead of the end; they were queued before the snapshot was taken, so
  whatever acknowledgement led to them was already committed when it was;
- checkpoints are never starved: no read transaction outlives the loop turn after the one it began in;
- an error drops the connection, and its transaction with it; the next read begins another;
- reads from threads (no running loop) are unaffected: one statement, its own read lock, as before.

Measured on PostgreSQL (link GET, A/B on one machine): awaiting the
statement on the loop instead (psycopg's ``AsyncConnection``, the domain's read in a greenlet) cost
more loop time than the thread hop (its wait machinery was a third of the loop's samples) and served
0.6-0.8x as many pages; blocking the loop for the round trip served 1.0-1.1x as many as before but
under the thread hop's 1.5-2.4x.

On PostgreSQL each kept connection keeps one cursor per statement it has run, dropped with it. psycopg
builds a cursor's adapters on creation and its row loaders and parameter dumpers (a ``Transformer``) on
each execute of another query than its last one: a new cursor per read cost 15-20 us of CPU more than
reusing one per statement (raw psycopg, two statements alternating on one autocommit connection; one
cursor per connection for both saved only half of that); callgrind, the same two statements through
``execute``: 130k instructions per read before, 83k after; the link GET's server CPU, 4 alternating pairs
of bench runs: 0.240 ms per page before, 0.226 after (medians; lower in each pair). The statement
itself is prepared on the server after psycopg's ``prepare_threshold`` (5) executions on the
connection, whichever cursor runs it; binary results counted the same instructions (1% fewer). A
kept cursor holds its last result (the read's rows, a page's few) until its next execute: bounded by
the kept connections times the hot statements. SQLite's reads still take a cursor each.

Nothing is checked before use: a connection is dropped on any error, and a read that finds its
PostgreSQL connection lost (a server restart, an idle timeout, a terminated backend) drops every kept
connection and runs once more on a fresh one. ``engine.dispose()`` and a connection the engine found
lost (a SQLite file reopened read-only, see ``db._sqlite_read_only_connection``) drop them too, so a
read never keeps a file or a server the pool has let go of.

The inbound store's one-statement write on PostgreSQL keeps a set of its own the same way
(``daemon.kept_writes``).
"""

from __future__ import annotations

from asyncio import AbstractEventLoop, _get_running_loop
from collections import deque
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from daemon.db import POSTGRESQL_ENGINE_OPTIONS

# Idle connections kept. SQLite's hot reads run inline on the event loop (one at a time; a thread's
# read now and then). On PostgreSQL each of serve's threads (as many as the pool has connections,
# daemon/service.py) may be reading at once: one each, so a busy server never closes one only to
# open another (a new backend per read) on the next request.
SQLITE_KEPT = 2
POSTGRESQL_KEPT = POSTGRESQL_ENGINE_OPTIONS["pool_size"] + POSTGRESQL_ENGINE_OPTIONS["max_overflow"]


class ReadConnections:
    """``execute`` runs one statement on a kept connection."""

    def __init__(self, engine: Engine, keep: int | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        postgresql = engine.dialect.name == "postgresql"
        self._keep = keep if keep is not None else POSTGRESQL_KEPT if postgresql else SQLITE_KEPT
        # (generation, DBAPI connection, its cursors by SQL or None: SQLite), last used on the right
        self._idle: deque[tuple[int, Any, dict[str, Any] | None]] = deque()
        self._generation = 0
        self._postgresql = postgresql
        self._error = engine.dialect.loaded_dbapi.Error
        # In-memory SQLite lives in one connection: a second one would be another, empty, database.
        self._own = isinstance(engine.pool, QueuePool)
        # SQLite, kept connections: the reads on an event loop share a read transaction per turn
        # (its connection and generation, per loop: a test may run two loops in two threads).
        self._per_turn = self._own and not postgresql
        self._turns: dict[AbstractEventLoop, tuple[int, Any]] = {}
        event.listen(engine, "engine_disposed", self.drop_all)
        event.listen(engine, "handle_error", self._engine_error)

    def drop_all(self, *_event: Any) -> None:
        """Close every idle connection; those in use are closed when their read ends."""
        self._generation += 1
        while self._idle:
            try:
                _, connection, _ = self._idle.pop()
            except IndexError:
                break
            _close(connection)

    def _engine_error(self, context: Any) -> None:
        if context.is_disconnect:
            self.drop_all()

    def statement_seen(self, cursor: Any, sql: str, parameters: Any) -> None:
        """The engine's ``before_cursor_execute`` listeners hear of the statement (tests count with them)."""
        listeners = self.engine.dispatch.before_cursor_execute
        if listeners:  # none outside tests: no iteration through SQLAlchemy's empty-listener object
            for listener in listeners:
                listener(None, cursor, sql, parameters, None, False)

    def lost(self, exc: Exception, sql: str | None, parameters: Any, connection_invalidated: bool) -> DBAPIError:
        """``exc``, a driver error (``self._error``), as SQLAlchemy raises it."""
        error = DBAPIError.instance(
            sql, parameters, exc, self._error, connection_invalidated=connection_invalidated, dialect=self.dialect,
        )
        # A driver error always comes back as a DBAPIError subclass; ``instance`` is typed for any exception
        # (it passes some through unwrapped), so the type says less than that.
        assert isinstance(error, DBAPIError)
        return error

    def _take(self) -> tuple[int, Any, dict[str, Any] | None, Any]:
        """(generation, DBAPI connection, its kept cursors by SQL (PostgreSQL; else None), pooled wrapper
        to close instead, or None)."""
        if not self._own:
            pooled = self.engine.raw_connection()
            return self._generation, pooled.dbapi_connection, None, pooled
        while True:
            try:
                generation, connection, cursors = self._idle.pop()
            except IndexError:
                break
            if generation == self._generation:
                return generation, connection, cursors, None
            _close(connection)
        generation = self._generation
        # Opened by the pool, so its "connect" events run (SQLite's pragmas), then taken out of it.
        pooled = self.engine.raw_connection()
        connection = pooled.dbapi_connection
        assert connection is not None  # None only once invalidated; this one was just checked out
        pooled.detach()
        if self._postgresql:
            connection.autocommit = True
            return generation, connection, {}, None
        return generation, connection, None, None

    def _give_back(self, generation: int, connection: Any, cursors: dict[str, Any] | None) -> None:
        if generation == self._generation and len(self._idle) < self._keep:
            self._idle.append((generation, connection, cursors))
        else:
            _close(connection)

    def execute(self, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        """Up to ``rows`` rows (None: all) of one statement in the driver's own SQL and parameter style.

        Errors are SQLAlchemy's (``DBAPIError``), as ``Connection.execute`` raises them."""
        if self._per_turn:
            loop = _get_running_loop()
            if loop is not None:
                return self._in_turn(loop, sql, parameters, rows)
        for attempt in (1, 2):
            try:
                generation, connection, cursors, pooled = self._take()
            except self._error as exc:  # connecting failed
                raise self.lost(exc, None, None, False) from exc
            cursor = None
            try:
                if cursors is None:
                    cursor = connection.cursor()
                    found = self._run(cursor, sql, parameters, rows)
                    cursor.close()
                else:
                    cursor = cursors.get(sql)
                    if cursor is None:
                        cursor = cursors[sql] = connection.cursor()
                    found = self._run(cursor, sql, parameters, rows)
            except self._error as exc:
                lost = self.dialect.is_disconnect(exc, connection, cursor)
                if pooled is not None:
                    if lost:
                        pooled.invalidate(exc)
                    pooled.close()
                else:
                    _close(connection)
                if lost:
                    self.drop_all()  # its siblings went with it (a server restart): none is tried again
                    if attempt == 1 and pooled is None:
                        continue  # kept idle until the server dropped it: once more, on a fresh connection
                raise self.lost(exc, sql, parameters, lost) from exc
            except BaseException:
                if pooled is not None:
                    pooled.close()
                else:
                    _close(connection)
                raise
            if pooled is not None:
                pooled.close()
            else:
                self._give_back(generation, connection, cursors)
            return found
        raise AssertionError("unreachable")  # the second attempt returns or raises

    def _run(self, cursor: Any, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        """The statement on ``cursor``: up to ``rows`` rows (None: all)."""
        self.statement_seen(cursor, sql, parameters)
        cursor.execute(sql, parameters)
        return cursor.fetchall() if rows is None else cursor.fetchmany(rows)

    def _in_turn(self, loop: AbstractEventLoop, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        """``execute`` on ``loop``'s read transaction for this turn, begun here by the turn's first read."""
        held = self._turns.get(loop)
        if held is not None and held[0] != self._generation:  # dropped meanwhile (engine disposed)
            self._end_turn(loop)
            held = None
        if held is None:
            try:
                generation, connection, _, _ = self._take()
            except self._error as exc:  # connecting failed
                raise self.lost(exc, None, None, False) from exc
            try:
                connection.execute("BEGIN")
            except self._error as exc:
                _close(connection)
                raise self.lost(exc, "BEGIN", None, False) from exc
            held = self._turns[loop] = (generation, connection)
            loop.call_soon(self._end_turn, loop)
        connection = held[1]
        cursor = None
        try:
            cursor = connection.cursor()
            found = self._run(cursor, sql, parameters, rows)
            cursor.close()
        except self._error as exc:
            del self._turns[loop]
            _close(connection)  # its transaction with it; the turn's next read begins another
            lost = self.dialect.is_disconnect(exc, connection, cursor)
            if lost:
                self.drop_all()
            raise self.lost(exc, sql, parameters, lost) from exc
        except BaseException:
            del self._turns[loop]
            _close(connection)
            raise
        return found

    def _end_turn(self, loop: AbstractEventLoop) -> None:
        """End ``loop``'s read transaction (queued by its first read) and give its connection back."""
        held = self._turns.pop(loop, None)
        if held is None:
            return  # ended already: a read failed and dropped it
        generation, connection = held
        try:
            connection.execute("COMMIT")  # a read transaction: nothing to write, its locks released
        except self._error:
            _close(connection)
            return
        self._give_back(generation, connection, None)


def _close(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a connection already lost: nothing left to release
        pass
