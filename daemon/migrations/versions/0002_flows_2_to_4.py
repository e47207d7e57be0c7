"""billing transfers, products, trials, client setup

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 21:24:39.432402
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


# The product catalogue is data: a later migration can add or rename products without code changes.
CATALOGUE = [
    ("qbo-simple-start", "QuickBooks Online Simple Start", "quickbooks"),
    ("qbo-essentials", "QuickBooks Online Essentials", "quickbooks"),
    ("qbo-plus", "QuickBooks Online Plus", "quickbooks"),
    ("qbo-advanced", "QuickBooks Online Advanced", "quickbooks"),
    ("payroll-core", "QuickBooks Online Payroll Core", "payroll"),
    ("payroll-premium", "QuickBooks Online Payroll Premium", "payroll"),
    ("payroll-elite", "QuickBooks Online Payroll Elite", "payroll"),
]

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('products',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products'))
    )
    products = sa.table(
        "products", sa.column("id", sa.String), sa.column("name", sa.String),
        sa.column("kind", sa.String), sa.column("position", sa.Integer),
    )
    op.bulk_insert(
        products,
        [{"id": pid, "name": name, "kind": kind, "position": n} for n, (pid, name, kind) in enumerate(CATALOGUE)],
    )
    op.create_table('sent_reminders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('ref_id', sa.Integer(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sent_reminders')),
    sa.UniqueConstraint('kind', 'ref_id', name=op.f('uq_sent_reminders_kind_ref_id'))
    )
    op.create_table('billing_transfers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.Column('firm_id', sa.Integer(), nullable=False),
    sa.Column('authorized_by', sa.String(length=320), nullable=False),
    sa.Column('authorized_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('nonce', sa.String(length=32), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=320), nullable=True),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_billing_transfers_company_id_companies')),
    sa.ForeignKeyConstraint(['firm_id'], ['firms.id'], name=op.f('fk_billing_transfers_firm_id_firms')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_billing_transfers'))
    )
    with op.batch_alter_table('billing_transfers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_billing_transfers_company_id'), ['company_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_billing_transfers_firm_id'), ['firm_id'], unique=False)
        batch_op.create_index('ix_billing_transfers_state_expires', ['state', 'expires_at'], unique=False)
        batch_op.create_index('uq_billing_transfers_pending', ['company_id'], unique=True, sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))

    op.create_table('company_products',
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_company_products_company_id_companies')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_company_products_product_id_products')),
    sa.PrimaryKeyConstraint('company_id', 'product_id', name=op.f('pk_company_products'))
    )
    op.create_table('setup_invitations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.Column('firm_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('nonce', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_setup_invitations_company_id_companies')),
    sa.ForeignKeyConstraint(['firm_id'], ['firms.id'], name=op.f('fk_setup_invitations_firm_id_firms')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_setup_invitations'))
    )
    with op.batch_alter_table('setup_invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_setup_invitations_company_id'), ['company_id'], unique=False)

    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('primary_admin_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_clients_primary_admin_id_users'), 'users', ['primary_admin_id'], ['id'])

    with op.batch_alter_table('companies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('billing_firm_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('trial_ends_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('payment_details_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('payment_name', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_companies_trial_ends_at'), ['trial_ends_at'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_companies_billing_firm_id_firms'), 'firms', ['billing_firm_id'], ['id'])


def downgrade() -> None:

    with op.batch_alter_table('companies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_companies_billing_firm_id_firms'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_companies_trial_ends_at'))
        batch_op.drop_column('payment_name')
        batch_op.drop_column('payment_details_at')
        batch_op.drop_column('trial_ends_at')
        batch_op.drop_column('billing_firm_id')

    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_clients_primary_admin_id_users'), type_='foreignkey')
        batch_op.drop_column('primary_admin_id')

    with op.batch_alter_table('setup_invitations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_setup_invitations_company_id'))

    op.drop_table('setup_invitations')
    op.drop_table('company_products')
    with op.batch_alter_table('billing_transfers', schema=None) as batch_op:
        batch_op.drop_index('uq_billing_transfers_pending', sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
        batch_op.drop_index('ix_billing_transfers_state_expires')
        batch_op.drop_index(batch_op.f('ix_billing_transfers_firm_id'))
        batch_op.drop_index(batch_op.f('ix_billing_transfers_company_id'))

    op.drop_table('billing_transfers')
    op.drop_table('sent_reminders')
    op.drop_table('products')

