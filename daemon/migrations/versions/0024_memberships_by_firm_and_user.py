"""memberships indexed by (firm_id, user_id), in place of firm_id alone: a firm's staff in order, unsorted

The accept's read (``daemon.accept_read``) lists the firm's staff to tell, in their users' order. With
``ix_memberships_firm_id`` SQLite found the firm's memberships, looked each user up, then sorted the
list in a temporary b-tree (``USE TEMP B-TREE FOR ORDER BY`` in its plan), on every accept. With the
user in the index and the list ordered by the membership's ``user_id`` (the same values: the join is
on it), SQLite reads the index in order, as a covering index, and sorts nothing. Every other lookup of
a firm's memberships uses the index's prefix as it used the old one. Memberships change when staff
are added or removed, not per accept: the index costs no accept anything.

Only indexes: no table is rebuilt, so 0015/0017's triggers are untouched.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_memberships_firm_user", "memberships", ["firm_id", "user_id"], unique=False)
    op.drop_index("ix_memberships_firm_id", table_name="memberships")


def downgrade() -> None:
    op.create_index("ix_memberships_firm_id", "memberships", ["firm_id"], unique=False)
    op.drop_index("ix_memberships_firm_user", table_name="memberships")
