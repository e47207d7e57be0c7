"""SQLite's roster search: the FTS5 trigram table without its per-row column sizes (``columnsize=0``)

FTS5 keeps, for every row it indexes, each column's size in tokens (the ``clients_search_docsize``
shadow table: one more b-tree row written per client inserted, one more deleted per client whose name
or address changes), for ranking by relevance (``bm25``) alone. The search never ranks: it asks which
rows hold its words (``MATCH``) and orders the roster itself (``daemon.client_search``,
``daemon.workspace``). ``columnsize=0`` stops keeping them; the matches are the same.

The table is made again with the option (an FTS5 table's options are fixed when it is made), with
0015's triggers, and filled from the roster (``rebuild``: it reads ``clients``, whose rows the index
only points to). Without FTS5's trigram tokenizer 0015 made no table, and there is none to make now.
PostgreSQL: nothing (its index is GIN's, migration 0022).

The downgrade makes 0015's table again, column sizes and all.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.engine import Connection

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

# 0015's, unchanged: the table is made again under the same name, so the same triggers keep it.
TRIGGERS = (
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
OPTIONS = "search_key, email, content='clients', content_rowid='id', tokenize='trigram'"  # 0015's


def rebuild(conn: Connection, options: str) -> None:
    """clients_search made again with ``options``, its triggers, filled from the roster; nothing without it."""
    present = conn.exec_driver_sql(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'clients_search'").scalar()
    if not present:  # this SQLite had no trigram tokenizer at 0015: the search scans
        return
    for trigger in ("insert", "delete", "update"):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS clients_search_{trigger}")
    conn.exec_driver_sql("DROP TABLE clients_search")
    conn.exec_driver_sql(f"CREATE VIRTUAL TABLE clients_search USING fts5({options})")
    for trigger in TRIGGERS:
        conn.exec_driver_sql(trigger)
    conn.exec_driver_sql("INSERT INTO clients_search (clients_search) VALUES ('rebuild')")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, f"{OPTIONS}, columnsize=0")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        rebuild(conn, OPTIONS)
