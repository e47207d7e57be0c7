"""outbox: a claim token per row, the retry budget's start and the relay's last answer

Revision ID: 0007
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_answer", sa.Text(), nullable=True))
    # Rows queued before this revision start their retry budget when they were created.
    op.execute("UPDATE outbox SET queued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("last_answer")
        batch_op.drop_column("queued_at")
        batch_op.drop_column("claim_token")
