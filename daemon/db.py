"""Database engine, sessions and migrations.

SQLite is the embedded default. It runs in WAL mode (readers never block the
writer) with ``synchronous=FULL`` (a committed transaction survives a power
loss or an OS crash, not only a process crash) and ``foreign_keys=ON``.
``busy_timeout`` makes a second connection wait for the writer instead of
failing at once.

PostgreSQL (``postgresql+psycopg://…``) gets a pooled engine with pre-ping;
the same Alembic migrations build its schema.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

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
    cursor.close()


WRITE = {"cabinet_write": True}


def _sqlite_begin(conn: Any) -> None:
    # A write transaction takes the lock up front, so two writers queue on
    # busy_timeout instead of one failing with "database is locked" when it
    # upgrades a read lock. Reads stay deferred and never block anyone.
    if conn.get_execution_options().get("cabinet_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


# PostgreSQL: each instance keeps a small pool (several instances share the
# server's max_connections). pre-ping replaces a connection the server closed
# (restart, idle timeout) before a request uses it; recycle renews connections
# now and then; pool_timeout bounds how long a request waits when all are busy.
# The cabinet_write execution option only chooses SQLite's BEGIN IMMEDIATE; on
# PostgreSQL nothing listens for it, so it is a no-op (rows lock as they change).
POSTGRESQL_ENGINE_OPTIONS: dict[str, Any] = {
    "pool_pre_ping": True,
    "pool_size": 10,
    "max_overflow": 10,
    "pool_timeout": 30,
    "pool_recycle": 1800,
}


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, **POSTGRESQL_ENGINE_OPTIONS)
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a write transaction, committed on success, rolled back on error."""
    with sessions.begin() as session:
        session.connection(execution_options=WRITE)
        yield session


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE and say how many rows it changed: the guard of every single-use transition."""
    result = session.execute(statement)
    return int(cast(CursorResult[Any], result).rowcount)


def dialect_insert(session: Session) -> Any:
    """The database's own INSERT, which has ``on_conflict_do_nothing``/``_do_update`` (SQLite, PostgreSQL):
    a unique key decides between racing inserts, with no check-then-insert and no IntegrityError."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # SQLite alters a table by copying it; with foreign keys enforced the
            # DROP of the old copy fails. The pragma only works outside a
            # transaction, so it goes straight to the driver before BEGIN.
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
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
