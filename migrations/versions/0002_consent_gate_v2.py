"""Consent gate v2: rules evidence, deferral, offer blocks, policy versions, DSR requests, retention tags.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 15:07:42.234568
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dsr_requests',
    sa.Column('request_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('customer_key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.Date(), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_dsr_requests'))
    )
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dsr_requests_customer_key'), ['customer_key'], unique=False)

    op.create_table('policy_versions',
    sa.Column('policy_version', sa.String(length=64), nullable=False),
    sa.Column('gate_version', sa.String(length=32), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('first_used_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('policy_version', name=op.f('pk_policy_versions'))
    )
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bundled', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('written', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('retention_basis', sa.String(length=100), nullable=True))

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention_basis', sa.String(length=100), nullable=True))

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('region', sa.String(length=8), nullable=True))

    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deferred_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('offer_removed', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('effective_purpose', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('notes', sa.String(length=500), nullable=True))
        batch_op.drop_constraint(batch_op.f('uq_decisions_message_stage'), type_='unique')

    with op.batch_alter_table('instalments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention_basis', sa.String(length=100), nullable=True))

    with op.batch_alter_table('segment_assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('profiling_objection', sa.Boolean(), server_default='0', nullable=False))

    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention_basis', sa.String(length=100), nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('has_offer', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('recipient', sa.String(length=24), server_default='customer', nullable=False))
        batch_op.add_column(sa.Column('deferred_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('offer_removed', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('retention_basis', sa.String(length=100), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('retention_basis')
        batch_op.drop_column('offer_removed')
        batch_op.drop_column('deferred_until')
        batch_op.drop_column('recipient')
        batch_op.drop_column('has_offer')

    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_column('retention_basis')

    with op.batch_alter_table('segment_assignments', schema=None) as batch_op:
        batch_op.drop_column('profiling_objection')

    with op.batch_alter_table('instalments', schema=None) as batch_op:
        batch_op.drop_column('retention_basis')

    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_decisions_message_stage'), ['message_key', 'stage'])
        batch_op.drop_column('notes')
        batch_op.drop_column('effective_purpose')
        batch_op.drop_column('offer_removed')
        batch_op.drop_column('deferred_until')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('region')

    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('retention_basis')

    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_column('retention_basis')
        batch_op.drop_column('written')
        batch_op.drop_column('bundled')

    op.drop_table('policy_versions')
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dsr_requests_customer_key'))

    op.drop_table('dsr_requests')
