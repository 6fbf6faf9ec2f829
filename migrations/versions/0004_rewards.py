"""Rewards: the reward ledger, budgets per rule, market and month, voucher codes, points movements.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 15:55:13
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('points_ledger',
    sa.Column('entry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('customer_key', sa.String(length=64), nullable=False),
    sa.Column('lot_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('entry_id', name=op.f('pk_points_ledger'))
    )
    with op.batch_alter_table('points_ledger', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_points_ledger_customer_key'), ['customer_key'], unique=False)
        batch_op.create_index('uq_points_ledger_entry', ['lot_key', 'kind', 'reference'], unique=True)

    op.create_table('reward_budgets',
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('market', sa.String(length=2), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('limit_amount', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('spent', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('granted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('over_budget', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('rule', 'market', 'month', name=op.f('pk_reward_budgets'))
    )
    op.create_table('rewards',
    sa.Column('reward_key', sa.String(length=200), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('rule_version', sa.Integer(), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('customer_key', sa.String(length=64), nullable=False),
    sa.Column('market', sa.String(length=2), nullable=False),
    sa.Column('contract_key', sa.String(length=64), nullable=True),
    sa.Column('event_key', sa.String(length=120), nullable=False),
    sa.Column('event_date', sa.Date(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('fulfilment', sa.String(length=16), nullable=False),
    sa.Column('points', sa.Integer(), nullable=True),
    sa.Column('value', sa.Numeric(precision=18, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('cost_eur', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('budget_month', sa.Date(), nullable=True),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=True),
    sa.Column('fulfilled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fulfilment_ref', sa.String(length=120), nullable=True),
    sa.Column('fulfil_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('fulfil_error', sa.String(length=500), nullable=True),
    sa.Column('redeemed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clawed_back_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clawback_reason', sa.String(length=64), nullable=True),
    sa.Column('clawback_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('message_key', sa.String(length=200), nullable=True),
    sa.Column('cycle_id', sa.BigInteger(), nullable=True),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('reward_key', name=op.f('pk_rewards'))
    )
    with op.batch_alter_table('rewards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rewards_customer_key'), ['customer_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_rewards_cycle_id'), ['cycle_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rewards_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rewards_status'), ['status'], unique=False)

    op.create_table('voucher_codes',
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('market', sa.String(length=2), nullable=False),
    sa.Column('valid_until', sa.Date(), nullable=True),
    sa.Column('source', sa.String(length=500), nullable=False),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reward_key', sa.String(length=200), nullable=True),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_voucher_codes')),
    sa.UniqueConstraint('reward_key', name=op.f('uq_voucher_codes_reward_key'))
    )
    with op.batch_alter_table('voucher_codes', schema=None) as batch_op:
        batch_op.create_index('ix_voucher_codes_pool', ['rule', 'market'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('voucher_codes', schema=None) as batch_op:
        batch_op.drop_index('ix_voucher_codes_pool')

    op.drop_table('voucher_codes')
    with op.batch_alter_table('rewards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rewards_status'))
        batch_op.drop_index(batch_op.f('ix_rewards_run_id'))
        batch_op.drop_index(batch_op.f('ix_rewards_cycle_id'))
        batch_op.drop_index(batch_op.f('ix_rewards_customer_key'))

    op.drop_table('rewards')
    op.drop_table('reward_budgets')
    with op.batch_alter_table('points_ledger', schema=None) as batch_op:
        batch_op.drop_index('uq_points_ledger_entry')
        batch_op.drop_index(batch_op.f('ix_points_ledger_customer_key'))

    op.drop_table('points_ledger')
