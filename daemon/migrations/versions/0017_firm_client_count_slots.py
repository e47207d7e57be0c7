"""the roster's counter spread over slots: accepts into one firm no longer wait for each other

0016 keeps one ``firm_client_counts`` row per (firm, status, billing). On PostgreSQL every client
added to a firm updated the SAME row and held it locked until its transaction committed, so the
accepts into one firm committed one after the other (29% of the accept bench's samples waited in the
client INSERT for that row). Each key's count is now spread over ``slot`` rows (``slot`` is part of
the primary key); a number is the SUM over its key's slots, as every reader already sums.

- PostgreSQL: a statement adds its changes to slot ``txid_current() % 16``: the transaction's
  id, not the client's. Transactions open at the same time took their ids one after the other, so up
  to 16 of them write 16 different rows of a key and none waits for another; two transactions in
  different slots share no counter row at all. Within one slot, everything 0016 says still holds:
  a statement's changes are summed per key and applied in ONE upsert in key order (the slot is the
  same for the whole statement, and for the whole transaction), so a transaction's counter rows are
  locked in key order, exactly the rows 0016 would have locked, and no two transactions deadlock on
  them. (A client-id slot would spread single-client inserts as well, but a transaction that moves
  some clients and then adds another would lock its rows across slots out of order: two such
  transactions could deadlock, which 0016's shape never does.) A slot's row is a sum of changes, not a
  set of clients: it may go below 0 (a client added in slot 3 and removed in slot 5); a key's SUM is
  exact and never below 0.
- SQLite: one writer at a time, nothing to spread: its row triggers use slot 0 only.

The upgrade keeps 0016's rows in slot 0; the downgrade folds the slots back into one row per key.
0016's notes stay true with this migration's helpers of the same names: a later migration that
rebuilds ``clients`` on SQLite recreates the triggers with ``create_sqlite_count_triggers`` and then
``rebuild_counts`` (both below, for this shape). PostgreSQL's function is replaced in place: its
triggers, which name it, stay.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

KEY = "firm_id, status, billing"
SLOTS = 16  # up to 16 transactions adding clients to one firm at once never wait for each other

SQLITE_TRIGGERS = {
    "firm_client_counts_insert": f"""CREATE TRIGGER firm_client_counts_insert AFTER INSERT ON clients BEGIN
         INSERT INTO firm_client_counts ({KEY}, slot, clients) VALUES (new.firm_id, new.status, new.billing, 0, 1)
         ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = clients + 1;
       END""",
    "firm_client_counts_delete": """CREATE TRIGGER firm_client_counts_delete AFTER DELETE ON clients BEGIN
         UPDATE firm_client_counts SET clients = clients - 1
         WHERE firm_id = old.firm_id AND status = old.status AND billing = old.billing AND slot = 0;
       END""",
    "firm_client_counts_update": f"""CREATE TRIGGER firm_client_counts_update AFTER UPDATE OF {KEY} ON clients
       WHEN old.firm_id IS NOT new.firm_id OR old.status IS NOT new.status OR old.billing IS NOT new.billing BEGIN
         UPDATE firm_client_counts SET clients = clients - 1
         WHERE firm_id = old.firm_id AND status = old.status AND billing = old.billing AND slot = 0;
         INSERT INTO firm_client_counts ({KEY}, slot, clients) VALUES (new.firm_id, new.status, new.billing, 0, 1)
         ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = clients + 1;
       END""",
}

# 0016's function with the transaction's slot: the rows the statement removed count -1, the rows it
# added +1, summed per key, applied in key order in one statement. (The xid is the transaction's
# own: it has one already, having written the client.)
PG_FUNCTION = f"""CREATE OR REPLACE FUNCTION firm_client_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_slot smallint := mod(txid_current(), {SLOTS});
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO firm_client_counts AS c ({KEY}, slot, clients)
        SELECT {KEY}, this_slot, count(*) FROM added GROUP BY {KEY} ORDER BY {KEY}
        ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = c.clients + excluded.clients;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO firm_client_counts AS c ({KEY}, slot, clients)
        SELECT {KEY}, this_slot, -count(*) FROM removed GROUP BY {KEY} ORDER BY {KEY}
        ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = c.clients + excluded.clients;
    ELSE
        INSERT INTO firm_client_counts AS c ({KEY}, slot, clients)
        SELECT {KEY}, this_slot, sum(n) FROM (
            SELECT {KEY}, -1 AS n FROM removed UNION ALL SELECT {KEY}, 1 AS n FROM added
        ) AS moved
        GROUP BY {KEY} HAVING sum(n) <> 0 ORDER BY {KEY}
        ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = c.clients + excluded.clients;
    END IF;
    RETURN NULL;
END $$"""

# 0016's, to put back on downgrade (a migration is a snapshot: not imported from 0016's module).
PG_FUNCTION_0016 = f"""CREATE OR REPLACE FUNCTION firm_client_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
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

SQLITE_TRIGGERS_0016 = {
    name: sql.replace(", slot, clients", ", clients").replace(", 0, 1)", ", 1)")
    .replace(f"({KEY}, slot)", f"({KEY})").replace(" AND slot = 0", "")
    for name, sql in SQLITE_TRIGGERS.items()
}


def create_sqlite_count_triggers(conn: Connection) -> None:
    for trigger in SQLITE_TRIGGERS.values():
        conn.exec_driver_sql(trigger)


def rebuild_counts(conn: Connection) -> None:
    """The counts from the roster as it is, in slot 0 (run with the triggers in place, in the same
    transaction)."""
    conn.exec_driver_sql("DELETE FROM firm_client_counts")
    conn.exec_driver_sql(
        f"INSERT INTO firm_client_counts ({KEY}, slot, clients) SELECT {KEY}, 0, count(*) FROM clients GROUP BY {KEY}"
    )


def _drop_sqlite_triggers(conn: Connection) -> None:
    for name in SQLITE_TRIGGERS:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")


def upgrade() -> None:
    conn = op.get_bind()
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:
        # No trigger may write the counter between the new key and the new function.
        conn.exec_driver_sql("LOCK TABLE firm_client_counts IN ACCESS EXCLUSIVE MODE")
    else:
        _drop_sqlite_triggers(conn)  # they name the old key; the table is copied below
    with op.batch_alter_table("firm_client_counts") as batch:
        # 0016's rows become slot 0 (the default fills them, then goes: the triggers name the slot).
        batch.add_column(sa.Column("slot", sa.SmallInteger(), nullable=False, server_default="0"))
        batch.drop_constraint("pk_firm_client_counts", type_="primary")
        batch.create_primary_key("pk_firm_client_counts", ["firm_id", "status", "billing", "slot"])
    with op.batch_alter_table("firm_client_counts") as batch:
        batch.alter_column("slot", server_default=None, existing_type=sa.SmallInteger(), existing_nullable=False)
    if postgresql:
        conn.exec_driver_sql(PG_FUNCTION)
    else:
        create_sqlite_count_triggers(conn)


def downgrade() -> None:
    conn = op.get_bind()
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:
        conn.exec_driver_sql("LOCK TABLE firm_client_counts IN ACCESS EXCLUSIVE MODE")
    else:
        _drop_sqlite_triggers(conn)
    # Fold every key's slots into its slot 0, then drop the others and the column.
    conn.exec_driver_sql(
        f"INSERT INTO firm_client_counts ({KEY}, slot, clients) "
        f"SELECT {KEY}, 0, sum(clients) FROM firm_client_counts WHERE slot <> 0 GROUP BY {KEY} "
        f"ON CONFLICT ({KEY}, slot) DO UPDATE SET clients = firm_client_counts.clients + excluded.clients"
    )
    conn.exec_driver_sql("DELETE FROM firm_client_counts WHERE slot <> 0")
    with op.batch_alter_table("firm_client_counts") as batch:
        batch.drop_constraint("pk_firm_client_counts", type_="primary")
        batch.create_primary_key("pk_firm_client_counts", ["firm_id", "status", "billing"])
        batch.drop_column("slot")
    if postgresql:
        conn.exec_driver_sql(PG_FUNCTION_0016)
    else:
        for trigger in SQLITE_TRIGGERS_0016.values():
            conn.exec_driver_sql(trigger)
