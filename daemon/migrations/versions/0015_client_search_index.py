"""the roster at 100,000 clients: a trigram index for the search box, and an index to count by billing

The search box finds a word anywhere in a client's folded name (``search_key``) or its address,
which a B-tree cannot answer: ``LIKE '%word%'`` read the whole roster. A trigram index can:

- SQLite: ``clients_search``, an FTS5 table with the ``trigram`` tokenizer (SQLite 3.34 or later)
  over ``clients.search_key`` and ``clients.email``. It is an external-content table (it stores
  the trigrams, not a second copy of the text) kept in step by triggers on every insert, delete and
  update of those two columns, whichever code path writes them. A later migration that rebuilds
  ``clients`` (Alembic's batch mode copies the table) drops those triggers with it and must create
  them again (``create_sqlite_search_index``). Without FTS5's trigram tokenizer the migration logs
  it and the search keeps scanning (``daemon.client_search``).
- PostgreSQL: the ``pg_trgm`` extension and GIN ``gin_trgm_ops`` indexes on both columns, which
  ``LIKE '%word%'`` uses as it is. Creating an extension needs a privilege the application's role
  may not have (pg_trgm is "trusted" from PostgreSQL 13: the database's owner may create it): then
  the migration logs it, succeeds, and the search keeps scanning until an operator creates the
  extension and the two indexes by hand (``MANUAL_SQL``, also in README).

The roster's two orders' indexes end in ``id`` as the pages' orders do (a deep page's ``OFFSET``
skips index entries on PostgreSQL too). And ``(billing, firm_id)``, so the roster's count under a
billing filter reads an index, not the roster (billing first, like ``ix_clients_status_firm``, so
the planner keeps reading a page in the order of ``(firm_id, search_key)`` or ``(firm_id,
created_at)``).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

log = logging.getLogger("cabinet.migrations")

SQLITE_TRIGGERS = (
    """CREATE TRIGGER clients_search_insert AFTER INSERT ON clients BEGIN
         INSERT INTO clients_search (rowid, search_key, email) VALUES (new.id, new.search_key, new.email);
       END""",
    # An external-content table forgets a row by being told the values it indexed: the old ones.
    """CREATE TRIGGER clients_search_delete AFTER DELETE ON clients BEGIN
         INSERT INTO clients_search (clients_search, rowid, search_key, email)
         VALUES ('delete', old.id, old.search_key, old.email);
       END""",
    """CREATE TRIGGER clients_search_update AFTER UPDATE OF id, search_key, email ON clients BEGIN
         INSERT INTO clients_search (clients_search, rowid, search_key, email)
         VALUES ('delete', old.id, old.search_key, old.email);
         INSERT INTO clients_search (rowid, search_key, email) VALUES (new.id, new.search_key, new.email);
       END""",
)
ORDERS = {"ix_clients_firm_search": "search_key", "ix_clients_firm_created": "created_at"}
PG_INDEXES = {"ix_clients_search_key_trgm": "search_key", "ix_clients_email_trgm": "email"}
MANUAL_SQL = "CREATE EXTENSION IF NOT EXISTS pg_trgm; " + " ".join(
    f"CREATE INDEX IF NOT EXISTS {name} ON clients USING gin ({column} gin_trgm_ops);"
    for name, column in PG_INDEXES.items()
)


def create_sqlite_search_index(conn: Connection) -> bool:
    """The FTS5 trigram table, its triggers, filled from the roster; False when this SQLite has no trigram."""
    try:
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE clients_search USING fts5("
            "search_key, email, content='clients', content_rowid='id', tokenize='trigram')"
        )
    except DBAPIError as exc:  # no FTS5, or older than 3.34 (no trigram tokenizer)
        version = conn.exec_driver_sql("SELECT sqlite_version()").scalar()
        log.warning("SQLite %s cannot build the roster's search index (%s): the search box will scan the "
                    "roster (fine for a few thousand clients; SQLite 3.34+ with FTS5 indexes it)",
                    version, exc.orig)
        return False
    for trigger in SQLITE_TRIGGERS:
        conn.exec_driver_sql(trigger)
    conn.exec_driver_sql("INSERT INTO clients_search (clients_search) VALUES ('rebuild')")
    return True


def create_postgresql_search_index(conn: Connection) -> bool:
    """pg_trgm and the GIN indexes; False (logged, and nothing else undone) without the privilege."""
    try:
        with conn.begin_nested():  # a failed CREATE EXTENSION must not abort the migration's transaction
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        log.warning("PostgreSQL would not create the pg_trgm extension (%s): the search box will scan the "
                    "roster. To index it, run in Cabinet's database, as its owner or a superuser: %s",
                    str(exc.orig).strip().splitlines()[0], MANUAL_SQL)
        return False
    for name, column in PG_INDEXES.items():
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON clients USING gin ({column} gin_trgm_ops)"))
    return True


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        create_sqlite_search_index(conn)
    elif conn.dialect.name == "postgresql":
        create_postgresql_search_index(conn)
    op.create_index("ix_clients_billing_firm", "clients", ["billing", "firm_id"], unique=False)
    # The page's order ends in id, so the index's too: PostgreSQL can then skip to a deep page on the
    # index alone (SQLite's indexes hold the rowid anyway).
    for name, column in ORDERS.items():
        op.drop_index(name, table_name="clients")
        op.create_index(name, "clients", ["firm_id", column, "id"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    for name, column in ORDERS.items():
        op.drop_index(name, table_name="clients")
        op.create_index(name, "clients", ["firm_id", column], unique=False)
    op.drop_index("ix_clients_billing_firm", table_name="clients")
    if conn.dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS clients_search_{trigger}")
        conn.exec_driver_sql("DROP TABLE IF EXISTS clients_search")
    elif conn.dialect.name == "postgresql":
        for name in PG_INDEXES:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        # The extension stays: other databases' objects on the server may use it, and dropping it needs
        # the privilege that created it.
