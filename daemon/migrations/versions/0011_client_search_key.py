"""the roster page: a folded name on clients to search and sort by, and indexes to sort a firm's clients

Revision ID: 0011
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from daemon.models import search_key

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("search_key", sa.String(length=600), nullable=True))
    clients = sa.table("clients", sa.column("id", sa.Integer), sa.column("name", sa.String),
                       sa.column("email", sa.String), sa.column("search_key", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(clients.c.id, clients.c.name, clients.c.email)).all()
    for row in rows:
        conn.execute(clients.update().where(clients.c.id == row.id).values(search_key=search_key(row.name)))
    with op.batch_alter_table("clients") as batch:
        batch.alter_column("search_key", existing_type=sa.String(length=600), nullable=False)
    op.create_index("ix_clients_firm_search", "clients", ["firm_id", "search_key"], unique=False)
    op.create_index("ix_clients_firm_created", "clients", ["firm_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_clients_firm_created", table_name="clients")
    op.drop_index("ix_clients_firm_search", table_name="clients")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("search_key")
