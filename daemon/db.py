"""Database engine, sessions and migrations.

SQLite is the embedded default. It runs in WAL mode (readers never block the
writer) with ``synchronous=FULL`` (a committed transaction survives a power
loss or an OS crash, not only a process crash) and ``foreign_keys=ON``.
``busy_timeout`` makes a second connection wait for the writer instead of
failing at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
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


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a write transaction, committed on success, rolled back on error."""
    with sessions.begin() as session:
        session.connection(execution_options=WRITE)
        yield session


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.connect() as connection, connection.execution_options(**WRITE).begin():
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
