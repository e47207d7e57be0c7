"""the roster's numbers kept by the database: how many clients each firm has, per status and billing

Every workspace page shows how many clients the user's firms have (the navigation), and the plain
roster and its status/billing/firm filters say how many they list. Counting them read the firm's
whole index (100,000 entries: 11–14 ms on PostgreSQL) on every page. ``firm_client_counts`` holds
one row per (firm, status, billing) that has ever had a client — a handful per firm — so each of
those numbers is a SUM over a few rows of its primary key.

The rows are kept by triggers on ``clients`` (insert, delete, and an update that moves a client to
another firm, status or billing), in the transaction that changes the client, whichever code writes
it (the domain, the CLI, a merge, a bulk Core insert). A row whose clients all left stays at 0: its
key is then already there for the next one.

- SQLite: row triggers. One writer at a time, so nothing races.
- PostgreSQL: statement triggers over the statement's transition tables. Each statement's changes
  are summed per key and applied in ONE upsert (``INSERT … ON CONFLICT DO UPDATE``) in key order:
  a client moving from one key to another never decrements a row and then waits for another while
  a transaction doing the opposite move holds it (no deadlock), and an increment never races the
  insert of a new key (the upsert waits for it, then adds). Every path that changes clients does it
  in one statement per transaction (``transition_all`` moves a company's clients across firms in
  one UPDATE), so a transaction's counter rows are always locked in key order.

A later migration that rebuilds ``clients`` on SQLite (Alembic's batch mode copies the table) drops
these triggers with it, as it drops 0015's search triggers, and must create them again
(``create_sqlite_count_triggers``, then ``rebuild_counts``: since 0017 spread the counter over slots,
0017's functions of those names, for its shape). PostgreSQL's triggers survive
``ALTER TABLE``. A full ``pg_dump`` restores the counter as dumped (triggers are created after the
data); a data-only restore into a migrated database needs ``--disable-triggers``, as for any table
kept by triggers.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

KEY = "firm_id, status, billing"

SQLITE_TRIGGERS = {
    "firm_client_counts_insert": f"""CREATE TRIGGER firm_client_counts_insert AFTER INSERT ON clients BEGIN
         INSERT INTO firm_client_counts ({KEY}, clients) VALUES (new.firm_id, new.status, new.billing, 1)
         ON CONFLICT ({KEY}) DO UPDATE SET clients = clients + 1;
       END""",
    "firm_client_counts_delete": """CREATE TRIGGER firm_client_counts_delete AFTER DELETE ON clients BEGIN
         UPDATE firm_client_counts SET clients = clients - 1
         WHERE firm_id = old.firm_id AND status = old.status AND billing = old.billing;
       END""",
    "firm_client_counts_update": f"""CREATE TRIGGER firm_client_counts_update AFTER UPDATE OF {KEY} ON clients
       WHEN old.firm_id IS NOT new.firm_id OR old.status IS NOT new.status OR old.billing IS NOT new.billing BEGIN
         UPDATE firm_client_counts SET clients = clients - 1
         WHERE firm_id = old.firm_id AND status = old.status AND billing = old.billing;
         INSERT INTO firm_client_counts ({KEY}, clients) VALUES (new.firm_id, new.status, new.billing, 1)
         ON CONFLICT ({KEY}) DO UPDATE SET clients = clients + 1;
       END""",
}

# One function for the three statement triggers: the rows the statement removed count -1, the rows it
# added +1, summed per key (an update that changed no key sums to 0 and touches nothing), applied in
# key order in one statement.
PG_FUNCTION = f"""CREATE OR REPLACE FUNCTION firm_client_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO firm_client_counts AS c ({KEY}, clients)
        SELECT {KEY}, count(*) FROM added GROUP BY {KEY} ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET clients = c.clients + excluded.clients;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO firm_client_counts AS c ({KEY}, clients)
        SELECT {KEY}, -count(*) FROM removed GROUP BY {KEY} ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET clients = c.clients + excluded.clients;
    ELSE
        INSERT INTO firm_client_counts AS c ({KEY}, clients)
        SELECT {KEY}, sum(n) FROM (
            SELECT {KEY}, -1 AS n FROM removed UNION ALL SELECT {KEY}, 1 AS n FROM added
        ) AS moved
        GROUP BY {KEY} HAVING sum(n) <> 0 ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET clients = c.clients + excluded.clients;
    END IF;
    RETURN NULL;
END $$"""
# (A trigger with transition tables cannot name the columns of an UPDATE OF: every update of
# clients runs it; one that changes no key, a contact edit, sums to nothing.)
PG_TRIGGERS = {
    "firm_client_counts_insert": "AFTER INSERT ON clients REFERENCING NEW TABLE AS added",
    "firm_client_counts_delete": "AFTER DELETE ON clients REFERENCING OLD TABLE AS removed",
    "firm_client_counts_update": "AFTER UPDATE ON clients REFERENCING OLD TABLE AS removed NEW TABLE AS added",
}


def create_sqlite_count_triggers(conn: Connection) -> None:
    for trigger in SQLITE_TRIGGERS.values():
        conn.exec_driver_sql(trigger)


def create_postgresql_count_triggers(conn: Connection) -> None:
    conn.exec_driver_sql(PG_FUNCTION)
    for name, when in PG_TRIGGERS.items():
        conn.exec_driver_sql(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION firm_client_counts_change()")


def rebuild_counts(conn: Connection) -> None:
    """The counts from the roster as it is (run with the triggers in place, in the same transaction)."""
    conn.exec_driver_sql("DELETE FROM firm_client_counts")
    conn.exec_driver_sql(
        f"INSERT INTO firm_client_counts ({KEY}, clients) SELECT {KEY}, count(*) FROM clients GROUP BY {KEY}"
    )


def upgrade() -> None:
    op.create_table(
        "firm_client_counts",
        sa.Column("firm_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("billing", sa.String(length=20), nullable=False),
        sa.Column("clients", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["firm_id"], ["firms.id"], name=op.f("fk_firm_client_counts_firm_id_firms")),
        sa.PrimaryKeyConstraint("firm_id", "status", "billing", name=op.f("pk_firm_client_counts")),
    )
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        # No client may be added or moved between the backfill's read and the triggers' creation.
        conn.exec_driver_sql("LOCK TABLE clients IN SHARE ROW EXCLUSIVE MODE")
        create_postgresql_count_triggers(conn)
    else:
        create_sqlite_count_triggers(conn)
    rebuild_counts(conn)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for name in PG_TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON clients")
        conn.exec_driver_sql("DROP FUNCTION IF EXISTS firm_client_counts_change()")
    else:
        for name in SQLITE_TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("firm_client_counts")
