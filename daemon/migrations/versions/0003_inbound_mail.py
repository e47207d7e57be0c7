"""inbound mail, VERP references, bounces

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 21:37:45.673933
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get values for the new NOT NULL columns before the constraint applies.
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('message_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('digest', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('kind', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('outcome', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE inbound SET next_attempt_at = received_at")
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.alter_column('next_attempt_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column('digest', existing_type=sa.String(length=64), server_default=None)
        batch_op.alter_column('attempts', existing_type=sa.Integer(), server_default=None)
        batch_op.create_index(batch_op.f('ix_inbound_digest'), ['digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_inbound_state_next', ['state', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounce_reason', sa.Text(), nullable=True))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ref', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('company_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('firm_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('bounced_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('bounce_reason', sa.Text(), nullable=True))
    # Messages queued before this migration get a reference of their own.
    op.execute("UPDATE outbox SET ref = 'm' || CAST(id AS VARCHAR(20))")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.alter_column('ref', existing_type=sa.String(length=24), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_outbox_ref'), ['ref'])
        batch_op.create_foreign_key(batch_op.f('fk_outbox_firm_id_firms'), 'firms', ['firm_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_outbox_company_id_companies'), 'companies', ['company_id'], ['id'])


def downgrade() -> None:

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_outbox_company_id_companies'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_outbox_firm_id_firms'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_outbox_ref'), type_='unique')
        batch_op.drop_column('bounce_reason')
        batch_op.drop_column('bounced_at')
        batch_op.drop_column('firm_id')
        batch_op.drop_column('company_id')
        batch_op.drop_column('ref')

    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.drop_column('bounce_reason')

    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_state_next')
        batch_op.drop_index(batch_op.f('ix_inbound_message_id'))
        batch_op.drop_index(batch_op.f('ix_inbound_digest'))
        batch_op.drop_column('processed_at')
        batch_op.drop_column('last_error')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('outcome')
        batch_op.drop_column('kind')
        batch_op.drop_column('digest')
        batch_op.drop_column('message_id')


