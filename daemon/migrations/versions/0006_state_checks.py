"""states kept to their lists by CHECK constraints; idempotency keys

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of daemon.models' state enums as of this revision (a migration never imports them:
# the enums may grow later, with a migration of their own).
CHECKS = {
    "invitations": ("state", ("pending", "accepted", "declined", "revoked", "expired", "superseded", "bounced")),
    "billing_transfers": ("state", ("pending", "completed", "expired", "revoked", "declined", "superseded")),
    "setup_invitations": ("state", ("pending", "accepted")),
    "clients": ("status", ("active", "trial", "setup pending", "discount lapsed")),
}

# SQLite rebuilds a table to add a constraint; its partial unique indexes are recreated as they were.
PARTIAL = {
    "invitations": ("uq_invitations_pending", ["company_id", "email"]),
    "billing_transfers": ("uq_billing_transfers_pending", ["company_id"]),
}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, (column, states) in CHECKS.items():
        listed = ", ".join(f"'{state}'" for state in states)
        partial = PARTIAL.get(table)
        if sqlite and partial:
            op.drop_index(partial[0], table_name=table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_check_constraint(op.f(f"ck_{table}_{column}"), f"{column} IN ({listed})")
        if sqlite and partial:
            op.create_index(
                partial[0], table, partial[1], unique=True, sqlite_where=sa.text("state = 'pending'")
            )
    op.create_table(
        "request_keys",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_request_keys")),
    )
    op.create_index(op.f("ix_request_keys_created_at"), "request_keys", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_request_keys_created_at"), table_name="request_keys")
    op.drop_table("request_keys")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, (column, _states) in CHECKS.items():
        partial = PARTIAL.get(table)
        if sqlite and partial:
            op.drop_index(partial[0], table_name=table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f"ck_{table}_{column}"), type_="check")
        if sqlite and partial:
            op.create_index(
                partial[0], table, partial[1], unique=True, sqlite_where=sa.text("state = 'pending'")
            )
