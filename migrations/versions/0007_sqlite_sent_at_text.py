"""SQLite: send times stored with a "+00:00" offset take the text form of every other timestamp.

Dispatch bound sent_at inside a CASE without a type, so sqlite3's own adapter stored
'2026-11-24 00:05:39.745956+00:00' where SQLAlchemy stores '2026-11-24 00:05:39.745956', and
SQLite compares timestamps as text. The values were in UTC, so dropping the offset is exact.
PostgreSQL stores timestamptz and needs nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 01:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    # Python writes six digits of microseconds, or none when they are zero.
    op.execute(
        "UPDATE messages SET sent_at = CASE WHEN length(sent_at) = 32 THEN substr(sent_at, 1, 26) "
        "ELSE substr(sent_at, 1, 19) || '.000000' END "
        "WHERE sent_at LIKE '%+00:00'"
    )


def downgrade() -> None:
    # The text written back reads as the same instant; there is nothing to undo.
    pass
