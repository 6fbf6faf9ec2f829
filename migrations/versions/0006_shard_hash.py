"""Shard hash: customers, segment_assignments and messages store the hash of their customer_key.

A sharded cycle filters these tables by the hash; computing MD5 per row in every query made each
shard's work grow with the whole database. PostgreSQL stores the hash as a generated column; on
SQLite the column is NULL and the filter hashes as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 00:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("customers", "segment_assignments", "messages")
# The same hash as tasks.domain.shards.shard_of before the modulo: the first 32 bits of the MD5.
MD5_32 = "CAST(CAST('x' || substr(md5(customer_key), 1, 8) AS BIT(32)) AS BIGINT)"


def _shard_hash() -> sa.Column:
    expr = MD5_32 if op.get_context().dialect.name == "postgresql" else "NULL"
    return sa.Column("shard_hash", sa.BigInteger(), sa.Computed(expr), nullable=True)


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(_shard_hash())


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("shard_hash")
