"""reliability: heartbeat, scheduled job failures, outbox audience, unique inbound digest

Revision ID: 0008
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeat",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_heartbeat")),
    )
    op.create_table(
        "job_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("ref_id", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_failures")),
        sa.UniqueConstraint("job", "ref_id", name=op.f("uq_job_failures_job_ref_id")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audience", sa.String(length=20), nullable=True))
    # Rows stored twice before the constraint (two sessions racing on check-then-insert):
    # the later copies keep their row but get a digest of their own, so the index can be unique.
    conn = op.get_bind()
    duplicates = conn.execute(
        sa.text(
            "SELECT id FROM inbound i WHERE EXISTS "
            "(SELECT 1 FROM inbound e WHERE e.digest = i.digest AND e.id < i.id)"
        )
    ).scalars().all()
    for row_id in duplicates:
        conn.execute(sa.text("UPDATE inbound SET digest = :d WHERE id = :id"), {"d": f"duplicate-of-earlier:{row_id}", "id": row_id})
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_digest")
        batch_op.create_unique_constraint(op.f("uq_inbound_digest"), ["digest"])
    # Stored bodies move to the last column: on SQLite a big value lives in overflow pages, and
    # every column after it (state, digest…) could only be read by walking them.
    for table in ("inbound", "outbox"):
        _move_raw_last(table)


def _move_raw_last(table: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw_last", sa.LargeBinary(), nullable=True))
    op.execute(f"UPDATE {table} SET raw_last = raw")
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.drop_column("raw")
        batch_op.alter_column("raw_last", new_column_name="raw", existing_type=sa.LargeBinary(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_inbound_digest"), type_="unique")
        batch_op.create_index("ix_inbound_digest", ["digest"], unique=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("audience")
    op.drop_table("job_failures")
    op.drop_table("heartbeat")
