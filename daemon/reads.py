"""Connections kept for a hot page's one-statement reads (``daemon.prepared.PreparedRead``), outside the pool.

A read by key is one statement, so it needs no transaction around it. On PostgreSQL the kept
connections are in autocommit: a lone SELECT is its own snapshot, one round trip, where a pooled
connection cost a pre-ping, BEGIN, the SELECT and the ROLLBACK on return. SQLite runs a lone
statement in its own read transaction anyway (its connections have no automatic BEGIN). Taking and
returning a kept connection is a deque's pop and append: no checkout, reset or pool events, which on
SQLite were a sixteenth of the link page's time on the event loop.

On PostgreSQL the web adapter's reads also stay on the event loop (``ReadConnections.call``): the
domain's synchronous read runs in a greenlet, and its statement goes out on one of psycopg's
``AsyncConnection``s while the loop serves other requests, instead of a thread hop per read
(executor queue, wake-up, GIL hand-over, the loop's self-pipe). SQLite's read is over sooner than
either, and runs inline.

Nothing is checked before use: a connection is dropped on any error, and a read that finds its
PostgreSQL connection lost (a server restart, an idle timeout, a terminated backend) drops every kept
connection and runs once more on a fresh one. ``engine.dispose()`` and a connection the engine found
lost (a SQLite file reopened read-only, see ``db._sqlite_read_only_connection``) drop them too, so a
read never keeps a file or a server the pool has let go of.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

T = TypeVar("T")

# Idle connections kept for reads in threads. SQLite's hot reads run inline on the event loop (one at
# a time; a thread's read now and then); on PostgreSQL a read in each of serve's threads (a POST's).
SQLITE_KEPT = 2
POSTGRESQL_KEPT = 10
# PostgreSQL reads in flight on the event loop at once (a connection each); more wait for one. A read
# is one index lookup on a core the loop does not use: a few keep the server busy.
POSTGRESQL_ON_LOOP = 8


class ReadConnections:
    """``execute`` runs one statement; ``call`` runs a synchronous read from the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        postgresql = engine.dialect.name == "postgresql"
        self._keep = POSTGRESQL_KEPT if postgresql else SQLITE_KEPT
        self._idle: deque[tuple[int, Any]] = deque()  # (generation, DBAPI connection), last used on the right
        self._generation = 0
        self._postgresql = postgresql
        self._error = engine.dialect.loaded_dbapi.Error
        # In-memory SQLite lives in one connection: a second one would be another, empty, database.
        self._own = isinstance(engine.pool, QueuePool)
        self._loop = _LoopConnections(self, POSTGRESQL_ON_LOOP) if postgresql else None
        event.listen(engine, "engine_disposed", self.drop_all)
        event.listen(engine, "handle_error", self._engine_error)

    @property
    def generation(self) -> int:
        return self._generation

    def drop_all(self, *_: Any) -> None:
        """Close every idle connection; those in use are closed when their read ends."""
        self._generation += 1
        while self._idle:
            try:
                _, connection = self._idle.pop()
            except IndexError:
                break
            _close(connection)
        if self._loop is not None:
            self._loop.drop_idle()

    def _engine_error(self, context: Any) -> None:
        if context.is_disconnect:
            self.drop_all()

    def statement_seen(self, cursor: Any, sql: str, parameters: Any) -> None:
        """The engine's ``before_cursor_execute`` listeners hear of the statement (tests count with them)."""
        for listener in self.engine.dispatch.before_cursor_execute:
            listener(None, cursor, sql, parameters, None, False)

    def lost(self, exc: BaseException, sql: str | None, parameters: Any, connection_invalidated: bool) -> DBAPIError:
        return DBAPIError.instance(
            sql, parameters, exc, self._error, connection_invalidated=connection_invalidated, dialect=self.dialect,
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a synchronous read, from the event loop without a thread: inline on SQLite; on
        PostgreSQL in a greenlet whose statements are awaited on the loop. ``fn`` must do no other
        blocking I/O."""
        if self._loop is None:
            return fn(*args)
        return await self._loop.spawn(fn, *args)

    def _take(self) -> tuple[int, Any, Any]:
        """(generation, DBAPI connection, pooled wrapper to close instead, or None)."""
        if not self._own:
            pooled = self.engine.raw_connection()
            return self._generation, pooled.dbapi_connection, pooled
        while True:
            try:
                generation, connection = self._idle.pop()
            except IndexError:
                break
            if generation == self._generation:
                return generation, connection, None
            _close(connection)
        generation = self._generation
        # Opened by the pool, so its "connect" events run (SQLite's pragmas), then taken out of it.
        pooled = self.engine.raw_connection()
        connection = pooled.dbapi_connection
        pooled.detach()
        if self._postgresql:
            connection.autocommit = True
        return generation, connection, None

    def _give_back(self, generation: int, connection: Any) -> None:
        if generation == self._generation and len(self._idle) < self._keep:
            self._idle.append((generation, connection))
        else:
            _close(connection)

    def execute(self, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        """Up to ``rows`` rows (None: all) of one statement in the driver's own SQL and parameter style.

        Errors are SQLAlchemy's (``DBAPIError``), as ``Connection.execute`` raises them."""
        if self._loop is not None and self._loop.here():
            return self._loop.execute(sql, parameters, rows)
        for attempt in (1, 2):
            try:
                generation, connection, pooled = self._take()
            except self._error as exc:  # connecting failed
                raise self.lost(exc, None, None, False) from exc
            cursor = None
            try:
                cursor = connection.cursor()
                self.statement_seen(cursor, sql, parameters)
                cursor.execute(sql, parameters)
                found = cursor.fetchall() if rows is None else cursor.fetchmany(rows)
                cursor.close()
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
                self._give_back(generation, connection)
            return found
        raise AssertionError("unreachable")  # the second attempt returns or raises


class _LoopConnections:
    """PostgreSQL: psycopg ``AsyncConnection``s in autocommit for reads run by ``ReadConnections.call``,
    opened with the engine's own connect arguments (so values come back typed as the engine's do)."""

    def __init__(self, reads: ReadConnections, most: int) -> None:
        import psycopg
        # SQLAlchemy's own bridge (its asyncio engine's): sync code in a greenlet awaits on the loop.
        from sqlalchemy.util.concurrency import await_, greenlet_spawn, in_greenlet

        self.spawn = greenlet_spawn
        self.here = in_greenlet
        self._await = await_

        self._reads = reads
        self._most = most
        args, kwargs = reads.engine.dialect.create_connect_args(reads.engine.url)
        self._connect: Callable[[], Any] = lambda: psycopg.AsyncConnection.connect(*args, autocommit=True, **kwargs)
        self._error = psycopg.Error
        self._idle: deque[tuple[int, Any]] = deque()
        # asyncio objects belong to one loop: a Cabinet served again on a new loop starts afresh.
        self._owner: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Semaphore | None = None

    def drop_idle(self) -> None:
        while self._idle:
            try:
                _, connection = self._idle.pop()
            except IndexError:
                break
            _finish(connection)

    def execute(self, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        return self._await(self._execute(sql, parameters, rows))  # type: ignore[no-any-return]

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._owner is not loop or self._free is None:
            self.drop_idle()  # opened on another loop: unusable on this one
            self._owner, self._free = loop, asyncio.Semaphore(self._most)
        return self._free

    async def _execute(self, sql: str, parameters: Any, rows: int | None) -> list[Any]:
        reads = self._reads
        async with self._slots():
            for attempt in (1, 2):
                kept = True
                generation = reads.generation
                connection = None
                while self._idle:
                    generation, connection = self._idle.pop()
                    if generation == reads.generation:
                        break
                    _finish(connection)
                    connection = None
                if connection is None:
                    kept, generation = False, reads.generation
                    try:
                        connection = await self._connect()
                    except self._error as exc:
                        raise reads.lost(exc, None, None, False) from exc
                try:
                    cursor = connection.cursor()
                    reads.statement_seen(cursor, sql, parameters)
                    await cursor.execute(sql, parameters)
                    found = await (cursor.fetchall() if rows is None else cursor.fetchmany(rows))
                    await cursor.close()
                except self._error as exc:
                    lost = bool(connection.closed or connection.broken)
                    await _close_async(connection)
                    if lost:
                        reads.drop_all()
                        if attempt == 1 and kept:
                            continue  # kept idle until the server dropped it: once more, on a fresh connection
                    raise reads.lost(exc, sql, parameters, lost) from exc
                except BaseException:  # cancelled mid-statement: the connection's state is unknown
                    _finish(connection)
                    raise
                if generation == reads.generation and len(self._idle) < self._most:
                    self._idle.append((generation, connection))
                else:
                    await _close_async(connection)
                return found
        raise AssertionError("unreachable")  # the second attempt returns or raises


def _close(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a connection already lost: nothing left to release
        pass


def _finish(connection: Any) -> None:
    """Close an ``AsyncConnection`` without awaiting (from any thread, or after its loop ended)."""
    try:
        connection.pgconn.finish()
    except Exception:  # noqa: BLE001 - already closed
        pass


async def _close_async(connection: Any) -> None:
    try:
        await connection.close()
    except Exception:  # noqa: BLE001 - a connection already lost: nothing left to release
        pass
