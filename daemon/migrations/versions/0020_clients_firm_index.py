"""clients: the firm_id-only index goes (four other indexes begin with firm_id)

Every client written (an accept adds one) updated eleven indexes on PostgreSQL, nine on SQLite.
``ix_clients_firm_id (firm_id)`` answers nothing the others do not: ``ix_clients_firm_search``
(firm_id, search_key, id), ``ix_clients_firm_created`` (firm_id, created_at, id) and the two unique
constraints (firm_id, company_id) and (firm_id, name_key) all begin with firm_id, and either database
reads a firm's clients (and checks the foreign key when a firm goes) from any of them. Measured on
PostgreSQL 15 (``bench/pg_accept_work.py``'s cluster, 400 client INSERTs, full-page writes off): 48
bytes of WAL less per client, one index entry less per insert and per non-HOT update.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_clients_firm_id", table_name="clients")


def downgrade() -> None:
    op.create_index("ix_clients_firm_id", "clients", ["firm_id"], unique=False)
