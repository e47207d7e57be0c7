"""PostgreSQL's roster search: one trigram GIN index over the name and the address, in place of two

Migration 0015 gave ``clients.search_key`` and ``clients.email`` a GIN ``gin_trgm_ops`` index each.
One GIN index over both columns holds the same entries (each keyed by its column) and serves the same
``LIKE '%word%'`` on either column: the search's ``search_key LIKE … OR email LIKE …`` is a
``BitmapOr`` of two scans of it (``EXPLAIN``, 50,000 clients). A client written (an accept adds one)
then goes into one index's pending list, not two: one GIN metapage update instead of two, and one
pending-list merge to pay later (``bench/pg_accept_work.py``: README, "Performance").

Which layout a database has is not always the migrations' doing: without the privilege to create
``pg_trgm``, 0015 logged the SQL for an operator to run by hand (README's, the two indexes then).
So, by what is there:

- ``pg_trgm`` installed (by 0015, or by hand): the one index is made and the two go, whether they were
  there or not (0015 meant them to be);
- no ``pg_trgm``: nothing to replace; the search scans, as it did. README's SQL makes the one index now;
  run by hand from an older README, it makes the two, which ``daemon.client_search`` recognises too.

The index is built while ``clients`` takes no writes (a plain ``CREATE INDEX``): seconds at 100,000
clients. SQLite: nothing (its search index is FTS5's, migration 0023).

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.engine import Connection

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

log = logging.getLogger("cabinet.migrations")

INDEX = "ix_clients_search_trgm"
COLUMNS = ("search_key", "email")
OLD_INDEXES = {"ix_clients_search_key_trgm": "search_key", "ix_clients_email_trgm": "email"}  # 0015's
MANUAL_SQL = ("CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX IF NOT EXISTS "
              f"{INDEX} ON clients USING gin ({', '.join(f'{c} gin_trgm_ops' for c in COLUMNS)});")


def has_pg_trgm(conn: Connection) -> bool:
    return bool(conn.exec_driver_sql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'").scalar())


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    if not has_pg_trgm(conn):
        log.warning("PostgreSQL has no pg_trgm extension in this database: the search box scans the roster. "
                    "To index it, run in Cabinet's database, as its owner or a superuser: %s", MANUAL_SQL)
        return
    columns = ", ".join(f"{column} gin_trgm_ops" for column in COLUMNS)
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {INDEX} ON clients USING gin ({columns})")
    for name in OLD_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or not has_pg_trgm(conn):
        return
    for name, column in OLD_INDEXES.items():
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON clients USING gin ({column} gin_trgm_ops)")
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {INDEX}")
