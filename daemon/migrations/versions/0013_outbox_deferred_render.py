"""outbox: what to render (template, locale, zone, context), so rendering happens in the worker

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("raw_last", sa.LargeBinary(), nullable=True))
    # The stored bytes stay the last column (see 0008): on SQLite a big value lives in overflow
    # pages, and a column after it could only be read by walking them.
    op.execute("UPDATE outbox SET raw_last = raw")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("raw")
        batch_op.alter_column("raw_last", new_column_name="raw", existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    bind = op.get_bind()
    unrendered = bind.execute(sa.text("SELECT count(*) FROM outbox WHERE raw IS NULL")).scalar()
    if unrendered:
        # The older code cannot render them: let the worker send (and so render) them first.
        raise RuntimeError(f"{unrendered} queued emails are not rendered yet; run `cabinet mail flush` first")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column("content")
