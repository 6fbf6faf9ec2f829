"""Dispatch claims: a partial index of the rendered messages in (cycle, customer) order.

Each claim takes the next batch of a cycle's rendered messages in customer key order. Through the
status and cycle indexes PostgreSQL collected every rendered message of the cycle and sorted them
for every batch (55-100 ms a claim at 1M customers); walking this index takes a few milliseconds.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RENDERED = sa.text("status = 'rendered'")


def upgrade() -> None:
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["cycle_id", "customer_key"],
        postgresql_where=RENDERED,
        sqlite_where=RENDERED,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_claim", table_name="messages")
