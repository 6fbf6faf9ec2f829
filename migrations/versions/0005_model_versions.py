"""Risk models: model_versions (candidates, the active model per kind, retired ones) and plain-word reasons.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 16:36:27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    op.create_table('model_versions',
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('algorithm', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('trained_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('train_from', sa.Date(), nullable=False),
    sa.Column('train_to', sa.Date(), nullable=False),
    sa.Column('validation_from', sa.Date(), nullable=False),
    sa.Column('validation_to', sa.Date(), nullable=False),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.Column('n_validation', sa.Integer(), nullable=False),
    sa.Column('base_rate_train', sa.Float(), nullable=False),
    sa.Column('base_rate_validation', sa.Float(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('comparison', sa.JSON(), nullable=True),
    sa.Column('calibration', sa.JSON(), nullable=False),
    sa.Column('top_features', sa.JSON(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('report_md', sa.Text(), nullable=False),
    sa.Column('artifact', sa.LargeBinary(), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_model_versions'))
    )
    # Partial unique index: at most one active model per kind (PostgreSQL and SQLite both support it).
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index('uq_model_versions_active', ['kind'], unique=True, postgresql_where=ACTIVE, sqlite_where=ACTIVE)

    with op.batch_alter_table('segment_assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk_reasons', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('segment_assignments', schema=None) as batch_op:
        batch_op.drop_column('risk_reasons')

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_model_versions_active', postgresql_where=ACTIVE, sqlite_where=ACTIVE)

    op.drop_table('model_versions')
