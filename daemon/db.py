"""Database engine, sessions and migrations.

SQLite is the embedded default. It runs in WAL mode (readers never block the
writer) with ``synchronous=FULL`` (a committed transaction survives a power
loss or an OS crash, not only a process crash) and ``foreign_keys=ON``.
``busy_timeout`` makes a second connection wait for the writer instead of
failing at once.

Writes on SQLite go through one writer with group commit (``GroupWriter``):
SQLite has one write lock per database, and threads polling for it
(``busy_timeout`` backs off 1–100 ms) leave it idle after each release. So
inside one process, write transactions queue on a plain lock, each runs in a
SAVEPOINT of one shared transaction, and one COMMIT (one fsync) makes a whole
group durable; every caller still gets its own success or failure, and none
returns before its group is durable.

PostgreSQL (``postgresql+psycopg://…``) gets a pooled engine, its connections
checked on checkout without a round trip (``_postgresql_alive``), and short
transactions of its own per caller; the same Alembic migrations build its schema.

A hot page's one-statement read (``daemon.reads.ReadConnections``) skips the
pool: it runs on a kept connection, in autocommit on PostgreSQL, where a lone
SELECT is its own snapshot: one round trip, no BEGIN, ROLLBACK or pre-ping.
"""

from __future__ import annotations

import select
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, cast

from sqlalchemy import Connection, CursorResult, Engine, Executable, RootTransaction, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.orm import Session, sessionmaker

    from daemon.checkpoints import Checkpointer
    from daemon.reads import ReadConnections

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens transactions lazily; let SQLAlchemy emit BEGIN itself so
    # "BEGIN IMMEDIATE" below takes the write lock at the start of a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # The statement journal in memory: a write unit and each accept of a batch run in a SAVEPOINT
    # (GroupWriter), and every page a savepoint changes is first copied to that journal so that a
    # ROLLBACK TO can put it back. On disk (the default) it spills to a temporary file past 64 KiB:
    # a write() per page, about a third of SQLite's time in a batch of accepts. It only ever serves a
    # rollback inside the transaction; durability is the WAL's, unchanged.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


WRITE = {"cabinet_write": True}


def _sqlite_begin(conn: Any) -> None:
    # A write transaction takes the lock up front, so two writers queue on
    # busy_timeout instead of one failing with "database is locked" when it
    # upgrades a read lock. Reads stay deferred and never block anyone.
    options = conn.get_execution_options()
    if options.get("cabinet_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


class _ImmediateTransaction(RootTransaction):
    """The group writer's transaction: ``BEGIN IMMEDIATE`` sent straight to the driver.

    ``Connection.begin`` runs the engine's ``begin`` listeners, and ``_sqlite_begin`` sent the BEGIN through
    ``exec_driver_sql``: an execution context, a cursor and the cursor events for two words of SQL, a quarter
    of a group's instructions (``bench/callgrind_group.py``). This is still SQLAlchemy's root transaction of
    the connection (a Session joins it; its COMMIT and ROLLBACK, and their events, are SQLAlchemy's, and an
    error inside it is not "auto-rolled back" as one outside a transaction would be); only its BEGIN skips
    the machinery, and a failed BEGIN is raised as SQLAlchemy's error (``raise_as_sqlalchemy``), through the
    engine's ``handle_error`` listeners, as before."""

    __slots__ = ()

    def _connection_begin_impl(self) -> None:
        connection = self.connection
        driver = connection.connection.driver_connection
        assert driver is not None  # a connection just checked out or kept valid (the writer drops invalid ones)
        try:
            driver.execute("BEGIN IMMEDIATE")
        except connection.dialect.loaded_dbapi.Error as exc:
            raise_as_sqlalchemy(connection, exc, "BEGIN IMMEDIATE")


# PostgreSQL: each instance keeps a small pool (several instances share the
# server's max_connections). A connection the server closed (restart, idle
# timeout, terminated backend) is replaced before a request uses it by
# ``_postgresql_alive``, not by SQLAlchemy's pre-ping (a round trip per checkout);
# recycle renews connections now and then; pool_timeout bounds how long a request
# waits when all are busy. The cabinet_write execution option only chooses
# SQLite's BEGIN IMMEDIATE; on PostgreSQL nothing listens for it, so it is a
# no-op (rows lock as they change).
POSTGRESQL_ENGINE_OPTIONS: dict[str, Any] = {
    "pool_pre_ping": False,
    "pool_size": 10,
    "max_overflow": 10,
    "pool_timeout": 30,
    "pool_recycle": 1800,
}


# SQLite: `serve` runs database work in this many threads (daemon/service.py), and the pool keeps
# as many connections. With SQLAlchemy's default (5, overflow 10) every connection beyond the fifth
# was closed when returned and a new one opened (connect and four PRAGMAs) on the next request:
# 2.6 % of the link GET's CPU in the profile.
# Last in, first out: the group writer handed its connection back between groups, and the pool's
# default (first in, first out) then gave the next group the longest-idle of 32 connections, whose
# statement cache had not seen the batch's statements: SQLite prepared them again (15.7k instructions
# an accept against 9.9k, bench/callgrind_accept.py); the one just returned has them. (The writer keeps
# its connection from group to group now, GroupWriter._begin_group; the other threads' still go back.)
SQLITE_THREADS = 32
SQLITE_ENGINE_OPTIONS: dict[str, Any] = {"pool_size": SQLITE_THREADS, "max_overflow": 8, "pool_use_lifo": True}


SQLITE_READONLY = 8  # sqlite3's primary result code; extended codes carry it in their low byte


def _sqlite_read_only_connection(context: Any) -> None:
    """A write refused as read-only: drop the pool's connections instead of keeping them.

    SQLite opens a file it cannot write (read-only mount, immutable file, full permissions
    fault) read-only, silently, and such a connection stays read-only after the file is
    writable again. Pooled, it would refuse writes until a restart; treated as a lost
    connection, the pool is emptied and the next use opens the file afresh.
    """
    code = getattr(context.original_exception, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_READONLY:
        context.is_disconnect = True


def _postgresql_alive(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection, on checkout: replaced if the server has let it go.

    SQLAlchemy's pre-ping asks the server (``SELECT 1``): a round trip per checkout, a sixth of the
    accept batch's time in its thread. This asks the socket instead. An idle connection between two
    transactions is sent nothing, so anything the server sent since (a restart's or a terminated
    backend's FATAL message, then EOF), or a hang-up, means it is gone; the pool then opens another
    (``DisconnectionError``). A silently dead peer (no FIN) is found by the first statement, as the
    ping would have found it, after its time-out: SQLAlchemy then invalidates the pool."""
    if dbapi_connection.closed or dbapi_connection.broken:
        raise DisconnectionError("connection closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):  # readable, hung up or in error: never so while healthy and idle
        raise DisconnectionError("the server sent something to an idle connection, or closed it")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        in_memory = make_url(url).database in (None, "", ":memory:")  # one connection, no pool to size
        engine = create_engine(url, connect_args={"check_same_thread": False},
                               **({} if in_memory else SQLITE_ENGINE_OPTIONS))
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "handle_error", _sqlite_read_only_connection)
        return engine
    if url.startswith("postgresql"):
        engine = create_engine(url, **POSTGRESQL_ENGINE_OPTIONS)
        event.listen(engine, "checkout", _postgresql_alive)
        return engine
    return create_engine(url, pool_pre_ping=True)


# Seconds a background unit gives way to foreground units at most (``GroupWriter``): a second of
# accepts or stores without a pause delays an outbox mark or inbound processing by that much, far
# inside an outbox lease (minutes).
MAX_GIVE_WAY = 1.0


class _Group:
    """Write transactions committed together: their callers wait for ``done``."""

    def __init__(self) -> None:
        self.members = 0
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class GroupWriter:
    """SQLite's single writer in this process, with group commit.

    Each write transaction (a *unit*) takes a FIFO-ish lock, runs on the one
    write connection inside a SAVEPOINT of the current group's transaction,
    and releases the lock. The unit that finds nobody queued behind it (or a
    full or old group) commits the group: one fsync for all its units. A unit
    that fails rolls back to its savepoint only; a COMMIT that fails (disk
    full) fails every unit of that group, so nobody is told "done" for work
    that is not durable; so does a unit that loses the connection (a file
    found read-only), at once, and the units queued behind it start a new group.

    Background units (inbound processing, the outbox worker's claims and marks)
    give way: one does not start while a foreground unit (an SMTP store, a
    click) waits, and ``contended`` tells a long background unit to end early
    so that the waiting one runs next, in the same group. A background unit
    waits until no foreground unit is queued, but ``max_give_way`` seconds at
    most: under an unbroken stream of foreground units it then queues with
    them, so that background work (a "sent" mark, whose lease would otherwise
    run out) is late, never starved. A write with a tighter deadline (a lease
    renewal) is not a background unit.
    """

    def __init__(self, engine: Engine, max_group: int = 64, max_age: float = 0.05,
                 max_give_way: float | None = MAX_GIVE_WAY) -> None:
        from sqlalchemy.orm import Session  # see make_sessionmaker

        self._session = Session
        self._engine = engine
        self._max_group = max_group
        self._max_age = max_age
        self.max_give_way = max_give_way  # None: no limit (tests that step through the queue)
        self._lock = threading.Lock()
        self._queue = threading.Condition()  # guards _waiting and _urgent
        self._waiting = 0
        self._urgent = 0  # foreground units waiting for the lock
        self._owner: int | None = None
        # The write connection, kept from group to group (see _begin_group); dropped when it fails, when the engine
        # is disposed (``_engine_disposed``) and on ``close``.
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._group: _Group | None = None
        self._checkpoints: Checkpointer | None = None
        self._disposed = False  # the engine was disposed while a group was open: drop the connection once it ends
        event.listen(engine, "engine_disposed", self._engine_disposed)

    def checkpoint_in_background(self, bound: int | None = None, limit: int | None = None) -> Checkpointer | None:
        """Take WAL checkpoints out of this writer's COMMITs, onto a thread (``daemon.checkpoints``; ``bound``
        and ``limit`` in pages), until ``close``: `cabinet serve`, where accepts queue behind the writer.
        Short-lived commands keep SQLite's own. None for an in-memory database (no WAL)."""
        from daemon.checkpoints import BOUND, Checkpointer

        database = self._engine.url.database
        if database in (None, "", ":memory:"):
            return None
        with self._lock:
            if self._checkpoints is None:
                self._checkpoints = Checkpointer(database, bound or BOUND, limit)
        return self._checkpoints

    @property
    def keeps_connection(self) -> bool:
        """Whether the writer holds its connection between groups: checked out of the pool, with no
        transaction open on it (``_begin_group``)."""
        return self._connection is not None and self._group is None

    def _begin(self) -> tuple[Connection, _Group]:
        if self._group is None:
            try:
                self._begin_group()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # The kept connection was found lost at its BEGIN (closed under the writer): nothing of the
                # group ran on it yet, so the group begins once more, on a fresh connection.
                self._begin_group()
            self._group = _Group()
        assert self._connection is not None  # an open group keeps its connection until it ends (_finish)
        return self._connection, self._group

    def _begin_group(self) -> None:
        """The kept connection (another when it is gone), then its group's BEGIN IMMEDIATE (lock held)."""
        checkpoints = self._checkpoints
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated or self._disposed:
            # Kept from group to group, not checked out of the pool and returned each time: a checkout's events
            # and record, and a return's reset (a ROLLBACK), were half of a group's instructions
            # (bench/callgrind_group.py); and the batch's statements stay in this connection's cache.
            self._drop_connection()
            connection = self._connection = self._engine.connect().execution_options(**WRITE)
            if checkpoints is not None:
                checkpoints.adopt(connection)
        if checkpoints is not None and checkpoints.overdue:  # the thread fell behind: SQLite's way, once
            checkpoints.catch_up(connection)
        self._transaction = _ImmediateTransaction(connection)  # what Connection.begin() would make

    def _finish(self, group: _Group, lost: BaseException | None = None) -> None:
        """Commit the group (lock held); its callers learn the outcome through ``group``. ``lost``: what a
        unit lost the connection with; the group's transaction went with it, and its callers are told that
        (not the ORM's "invalid transaction" error a COMMIT on the dead connection would raise)."""
        self._group = None
        transaction, self._transaction = self._transaction, None
        try:
            assert transaction is not None
            if lost is not None:
                raise lost
            transaction.commit()
            if self._checkpoints is not None:
                self._checkpoints.committed()
        except BaseException as exc:
            group.error = exc
            try:
                # None only if the assert above failed: the AttributeError is swallowed with the rest.
                transaction.rollback()  # type: ignore[union-attr]
            except Exception:
                pass
            if self._connection is not None:
                self._connection.invalidate()  # a connection that failed to commit is not reused
                self._connection = None
        else:
            if self._disposed:  # the engine let the pool go while this group ran: so does the writer
                self._drop_connection()
        finally:
            group.done.set()

    def _drop_connection(self) -> None:
        """Close the kept connection (lock held): invalidated, so closed at once, not handed back to a pool
        that may be the disposed one, where it would stay open until collected."""
        self._disposed = False
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()

    def _engine_disposed(self, _engine: Engine) -> None:
        """``engine.dispose()``: the writer lets its connection go with the pool's, at once if no unit holds
        it (nothing waits for the lock here: ``dispose`` may be called by a unit's own thread), otherwise
        once the group ends; the next group opens a connection from the new pool."""
        if self._lock.acquire(blocking=False):
            try:
                if self._group is None:
                    self._drop_connection()
                else:
                    self._disposed = True
            finally:
                self._lock.release()
        else:
            self._disposed = True

    def _should_commit(self, group: _Group) -> bool:
        with self._queue:
            nobody_waiting = self._waiting == 0
        return nobody_waiting or group.members >= self._max_group or time.monotonic() - group.started >= self._max_age

    def contended(self) -> bool:
        """Whether a foreground unit is waiting for the lock (a background unit should end soon)."""
        return self._urgent > 0

    @contextmanager
    def unit(self, background: bool = False) -> Iterator[Session]:
        """A write transaction in a Session (a SAVEPOINT of the group); returns once its group is durable."""
        with self._slot(background) as (connection, group):
            session = self._session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
            try:
                with session.begin():
                    yield session
                group.members += 1
            finally:
                session.close()

    @contextmanager
    def core_unit(self, background: bool = False) -> Iterator[Connection]:
        """A write transaction on the write connection itself, for Core statements only (no Session to
        build, begin and close inside the lock): a SAVEPOINT of the group, as ``unit`` (``background`` too).

        The SAVEPOINT and its RELEASE go to the driver itself: through ``begin_nested`` each was a
        compiled statement and a transaction object, a tenth of an accept's CPU for two words of SQL.
        """
        with self._slot(background) as (connection, group):
            with savepoint(connection, "core_unit"):
                yield connection
            group.members += 1

    @contextmanager
    def _slot(self, background: bool = False) -> Iterator[tuple[Connection, _Group]]:
        """The write lock and the group's connection; on the way out, commit the group if nobody is
        queued behind, release the lock, then wait (outside it) until the group is durable."""
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError("a write transaction inside another one on the same thread would wait for itself")
        with self._queue:
            if background:  # behind every foreground unit waiting, for a while
                self._queue.wait_for(lambda: self._urgent == 0, timeout=self.max_give_way)
            else:
                self._urgent += 1
            self._waiting += 1
        self._lock.acquire()
        with self._queue:
            self._waiting -= 1
            if not background:
                self._urgent -= 1
                if self._urgent == 0:
                    self._queue.notify_all()
        self._owner = me
        group: _Group | None = None
        try:
            try:
                connection, group = self._begin()
            except BaseException:
                self._transaction, self._group = None, None
                if self._connection is not None:  # a connection that cannot begin is not reused
                    self._connection.invalidate()
                    self._connection = None
                raise
            lost: BaseException | None = None
            try:
                yield connection, group
            except BaseException as exc:
                lost = exc if connection.invalidated else None
                raise
            finally:
                # A unit that lost the connection (SQLite found its file read-only, see
                # _sqlite_read_only_connection) lost the group's transaction with it: the group ends now,
                # failing its members with that unit's fault, so that the units queued behind start afresh
                # instead of each failing on the dead connection until one finds nobody behind it.
                if connection.invalidated or self._should_commit(group):
                    self._finish(group, lost)
        finally:
            self._owner = None
            self._lock.release()
        # Outside the lock: the next unit runs while this caller waits for durability.
        group.wait()

    def close(self) -> None:
        with self._lock:
            if self._group is not None:
                self._finish(self._group)
            if self._connection is not None:  # back to the pool, which the engine's dispose then closes
                self._connection.close()
                self._connection = None
            self._disposed = False
            # After the last group: everything into the database file, the WAL emptied.
            checkpoints, self._checkpoints = self._checkpoints, None
            if checkpoints is not None:
                checkpoints.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Cabinet's session factory; on SQLite its ``writer`` attribute is the GroupWriter writes go through.

    The ORM is imported here, not with this module: a command that only reads through Core on the
    engine (`cabinet client list --json`) spent a fifth of its start-up importing it."""
    from sqlalchemy.orm import sessionmaker

    from daemon.reads import ReadConnections

    sessions = sessionmaker(engine, expire_on_commit=False)
    # Carried by the session factory that every part already gets; sessionmaker declares no such attributes.
    if engine.dialect.name == "sqlite":
        sessions.writer = GroupWriter(engine)  # type: ignore[attr-defined]
    sessions.reads = ReadConnections(engine)  # type: ignore[attr-defined]
    return sessions


def read_connections(sessions: sessionmaker[Session]) -> ReadConnections:
    """The kept connections of Cabinet's session factory for one-statement reads (``PreparedRead``)."""
    return cast("ReadConnections", sessions.reads)  # type: ignore[attr-defined]  # set by make_sessionmaker


def checkpoint_in_background(sessions: sessionmaker[Session]) -> Checkpointer | None:
    """SQLite: WAL checkpoints on a thread of their own until the sessions close (``GroupWriter``); None
    on PostgreSQL, which has no WAL file to keep small here."""
    writer = getattr(sessions, "writer", None)
    return writer.checkpoint_in_background() if writer is not None else None


def close_sessions(sessions: sessionmaker[Session]) -> None:
    writer = getattr(sessions, "writer", None)
    if writer is not None:
        writer.close()


@contextmanager
def write_transaction(sessions: sessionmaker[Session], background: bool = False) -> Iterator[Session]:
    """A session in a write transaction, committed on success, rolled back on error.

    On SQLite it is a unit of the group writer (returns once durable); on
    PostgreSQL a short transaction of its own from the pool. A ``background``
    transaction (work nobody waits for) lets waiting foreground ones go first.
    """
    writer = getattr(sessions, "writer", None)
    if writer is not None:
        with writer.unit(background) as session:
            yield session
        return
    with sessions.begin() as session:
        session.connection(execution_options=WRITE)
        yield session


def writes_waiting(sessions: sessionmaker[Session]) -> bool:
    """Whether foreground writes wait for SQLite's one writer (a background transaction should end);
    always False on PostgreSQL, where transactions do not queue on one lock."""
    writer = getattr(sessions, "writer", None)
    return writer is not None and writer.contended()


def connections_kept(sessions: sessionmaker[Session]) -> int:
    """Connections Cabinet keeps checked out of the pool between transactions, with none open on them:
    SQLite's group writer's (``GroupWriter.keeps_connection``); none on PostgreSQL. What the pool's
    ``checkedout()`` counts beyond the connections in use."""
    writer = getattr(sessions, "writer", None)
    return int(writer is not None and writer.keeps_connection)


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    """The engine behind Cabinet's session factory, for Core statements on a plain connection (a hot
    read that needs no Session, identity map or unit of work)."""
    return cast(Engine, sessions.kw["bind"])


@contextmanager
def write_connection(sessions: sessionmaker[Session], background: bool = False) -> Iterator[Connection]:
    """``write_transaction`` for Core statements only: a connection, no Session.

    On SQLite a unit of the group writer (``GroupWriter.core_unit``); on PostgreSQL a
    short transaction of its own from the pool (``background`` changes nothing there).
    """
    writer = getattr(sessions, "writer", None)
    if writer is not None:
        with writer.core_unit(background) as connection:
            yield connection
        return
    with engine_of(sessions).connect() as connection:
        with connection.execution_options(**WRITE).begin():
            yield connection


@contextmanager
def savepoint(connection: Connection, name: str, release: bool = True,
              sync: Callable[[], None] | None = None) -> Iterator[None]:
    """A SAVEPOINT on a Core write connection, straight to the driver (``GroupWriter.core_unit``'s, and
    each of a batch of accepts'): an exception undoes only what ran inside it, and is raised on.

    ``release=False`` leaves it in place when the block succeeds (and after it is rolled back to): a
    statement, and on PostgreSQL a round trip, saved for each of a batch's savepoints. What ran inside
    stays part of the enclosing transaction either way, and the next SAVEPOINT of the same name hides
    this one; the enclosing transaction's end (or an enclosing savepoint's release) ends them all.

    ``sync``: the connection is in psycopg's pipeline mode (``pipelined``). A statement's error read with
    its result (not at a sync) leaves the pipeline aborted, and the server would skip the ROLLBACK TO
    sent after it: the pipeline is synced first (one round trip, on that failure only)."""
    pooled = connection.connection
    driver = pooled.driver_connection
    assert driver is not None
    if sync is None:
        driver.execute(f"SAVEPOINT {name}")
    else:  # a batch's accepts, one SAVEPOINT each: on the cursor the connection keeps for it
        kept_cursor(pooled, driver, f"SAVEPOINT {name}").execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        try:
            if sync is not None:
                settled(driver, sync)
            driver.execute(f"ROLLBACK TO SAVEPOINT {name}")
            if release:
                driver.execute(f"RELEASE SAVEPOINT {name}")
        except Exception:  # noqa: BLE001 - a lost connection: the transaction's COMMIT fails and says so
            pass
        raise
    if release:
        driver.execute(f"RELEASE SAVEPOINT {name}")


def _pipeline_aborted(driver: Any) -> bool:
    from psycopg import pq

    return bool(driver.pgconn.pipeline_status == pq.PipelineStatus.ABORTED)


def settled(driver: Any, sync: Callable[[], None]) -> None:
    """In psycopg's pipeline mode (``pipelined``'s ``sync``), after a statement's error: a pipeline left
    aborted by an error read with a result (not at a sync) is synced, so that the server runs what is
    sent next (a ROLLBACK TO) and psycopg's pipeline ends without an error of its own. The error was
    raised already; the sync's is not. ``driver``: the connection's DBAPI connection.

    Synced until it is no longer aborted: psycopg's ``sync`` reads what has come back while it sends, and
    when that holds an error (the skipped statements' "pipeline aborted") it raises without waiting for
    the rest, the sync's own result among it, which would then be read (and raised) at some later sync.
    Each pass either reads an error it then raises, of which there are only as many as statements were
    sent, or reads everything up to its sync: a few passes at most, none of them waiting on time."""
    while not (driver.closed or driver.broken) and _pipeline_aborted(driver):
        try:
            sync()
        except Exception:  # noqa: BLE001 - the error already raised, or "pipeline aborted"
            pass


@contextmanager
def pipelined(connection: Connection, transaction: bool = False) -> Iterator[Callable[[], None]]:
    """PostgreSQL: the connection in psycopg's pipeline mode; yields ``sync``, which waits for what was
    sent and raises the first error among it (as ``Connection.execute`` raises it).

    A statement whose result is not read (an INSERT without RETURNING, a SAVEPOINT) costs no round
    trip of its own: it goes with the next one whose result is read, or with ``sync``. A batch of
    accepts syncs at the end of each accept, inside its savepoint, so an error is that accept's.
    Elsewhere (SQLite) statements run one by one as before, and ``sync`` does nothing.

    ``transaction``: the block is one transaction, for a connection in autocommit at the driver
    (``isolation_level="AUTOCOMMIT"``). Its BEGIN is sent with the first statements (psycopg's own BEGIN
    waits for a sync of its own: a round trip), and its COMMIT with the pipeline's closing sync, which
    the pipeline's end sends anyway: together with whatever the block sent last, unsynced. That sync's
    error is raised here: the COMMIT's own (the transaction is then over, nothing of it kept), or that
    of a statement sent after the block's last ``sync`` (the server then skipped the COMMIT: the
    transaction is left open and failed, for the caller to roll back to a savepoint and commit, or to
    roll back). A block that raises is rolled back."""
    pooled = connection.connection
    driver = pooled.driver_connection
    if connection.dialect.name != "postgresql" or driver is None:
        yield lambda: None
        return
    error = connection.dialect.loaded_dbapi.Error
    if transaction:
        assert driver.autocommit, "a pipelined transaction sends its own BEGIN: autocommit at the driver"
    raised: BaseException | None = None
    failed: Exception | None = None
    try:
        with driver.pipeline() as pipeline:
            def sync() -> None:
                try:
                    pipeline.sync()
                except error as exc:
                    raise_as_sqlalchemy(connection, exc)

            # On cursors the connection keeps (``kept_cursor``): psycopg's ``execute`` makes a cursor each time.
            if transaction:
                kept_cursor(pooled, driver, "BEGIN").execute("BEGIN")
            try:
                yield sync
            except BaseException as exc:
                # Not raised through psycopg's pipeline, whose end would log ("error ignored terminating") the
                # "pipeline aborted" it reads after the block's error. Ended as after a block that went well,
                # it reads everything sent all the same (the connection is fit for what follows), and raises
                # what it read instead of logging it: ignored below, the block's error is the one raised.
                raised = exc
            else:
                if transaction:
                    try:
                        kept_cursor(pooled, driver, "COMMIT").execute("COMMIT")
                    except error as exc:
                        # An earlier statement's error, read as the COMMIT was sent (psycopg reads what has
                        # come back whenever it sends): the server skips the COMMIT, and the pipeline's end
                        # reads the rest. This error is the one raised, not the COMMIT's "pipeline aborted".
                        failed = exc
    except error as exc:
        if raised is None:
            raise_as_sqlalchemy(connection, failed or exc)
    finally:
        # Rolled back once out of the pipeline: in an aborted pipeline the server would skip a ROLLBACK.
        if transaction and raised is not None:
            try:
                driver.rollback()
            except Exception:  # noqa: BLE001 - a lost connection: its transaction is gone with it
                pass
    if raised is not None:
        raise raised
    if failed is not None:
        raise_as_sqlalchemy(connection, failed)


# Where a pooled PostgreSQL connection keeps its write cursors (its pool record's ``info``, which the pool
# clears when it replaces the DBAPI connection).
_KEPT_CURSORS = "cabinet.prepared_write.cursors"


def kept_cursor(pooled: Any, driver: Any, sql: str) -> Any:
    """PostgreSQL: the cursor the pooled connection ``pooled`` (a SQLAlchemy ``Connection.connection``)
    keeps for ``sql`` on its DBAPI connection ``driver``, made on first use.

    psycopg builds a cursor's adapters when it is made, and its parameter dumpers and row loaders (a
    ``Transformer``) on each execute of another query than the cursor's last: a new cursor per statement
    paid both every time, as a kept read connection's cursors no longer do (``daemon.reads``). A kept
    cursor holds its last result (a RETURNING row or none) until its next execute, and goes with its
    connection; its statement's SQL is one of a fixed few per connection (the prepared writes', and a
    pipelined transaction's BEGIN, SAVEPOINT and COMMIT). The cursors are found by the DBAPI connection
    too, so one the pool replaced never gets another's. ``driver`` is the one the caller took at its
    start: once the pool has let it go (invalidated, lost), a new cursor of it, which says so as before."""
    if pooled.dbapi_connection is not driver:
        return driver.cursor()
    kept = pooled.info.get(_KEPT_CURSORS)
    if kept is None or kept[0] is not driver:
        kept = pooled.info[_KEPT_CURSORS] = (driver, {})
    cursor = kept[1].get(sql)
    if cursor is None or cursor.closed:
        cursor = kept[1][sql] = driver.cursor()
    return cursor


def transaction_failed(connection: Connection) -> bool:
    """PostgreSQL: the connection's transaction is open and failed (a statement's error), not over."""
    from psycopg import pq

    if connection.invalidated:  # lost: its transaction went with it
        return False
    driver = connection.connection.driver_connection
    return driver is not None and not driver.closed and driver.info.transaction_status == pq.TransactionStatus.INERROR


def driver_commands(connection: Connection, *commands: str) -> None:
    """Plain commands on the connection's driver, one by one; an error raised as SQLAlchemy's."""
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        for command in commands:
            driver.execute(command)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise_as_sqlalchemy(connection, exc)


def raise_as_sqlalchemy(connection: Connection, exc: Exception, sql: str | None = None, parameters: Any = None,
                        cursor: Any = None) -> NoReturn:
    """A driver's error from a statement run straight on ``connection``'s DBAPI connection, raised as
    ``Connection.execute`` raises it: through the connection's handler (SQLAlchemy's exception, the
    engine's ``handle_error`` listeners, a lost connection invalidated)."""
    connection._handle_dbapi_exception(exc, sql, parameters, cursor, None)  # raises
    raise AssertionError("unreachable: the handler always raises")  # pragma: no cover


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE and say how many rows it changed: the guard of every single-use transition."""
    result = session.execute(statement)
    return int(cast(CursorResult[Any], result).rowcount)


def dialect_insert(session: Session) -> Any:
    """The database's own INSERT, which has ``on_conflict_do_nothing``/``_do_update`` (SQLite, PostgreSQL):
    a unique key decides between racing inserts, with no check-then-insert and no IntegrityError."""
    # Imported here: the PostgreSQL dialect was a sixth of a read-only command's start-up on SQLite.
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def alembic_config(url: str) -> AlembicConfig:
    # Alembic is imported only where migrations run (`cabinet init`, `serve`, `db` commands): it is
    # a large share of every other command's start-up.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    from alembic import command

    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # SQLite alters a table by copying it; with foreign keys enforced the
            # DROP of the old copy fails. The pragma only works outside a
            # transaction, so it goes straight to the driver before BEGIN. (driver_connection is None only
            # once invalidated: not a connection just opened.)
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with connection.execution_options(**WRITE).begin():
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")
        finally:
            if sqlite:  # (None: as above)
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
