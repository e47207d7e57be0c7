"""the workspace at 100,000 clients: an index to count and filter a firm's clients by status

Pending and the navigation count a firm's clients in their trial period, and the roster filters by
status; without it each reads every client of the firm. Status first: with the firm first, SQLite's
planner took this index for the plain roster too (same selectivity on firm_id) and sorted the whole
roster instead of reading (firm_id, search_key) in order.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_clients_status_firm", "clients", ["status", "firm_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_clients_status_firm", table_name="clients")
