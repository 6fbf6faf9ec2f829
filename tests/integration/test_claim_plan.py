"""PostgreSQL plans a dispatch claim as an index walk whatever its statistics say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, event, insert, text, update

from tasks.domain.shards import Shard
from tasks.store import schema as s
from tasks.store.bulk import insert_frame
from tasks.store.repository import claim_batch
from tests.support.factories import message_row

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
CUSTOMERS = 3000


def _seed(engine: Engine) -> None:
    """Store customers with two planned messages each in cycle 1 and one in cycle 2, analyzed as planned."""
    with engine.begin() as conn:
        conn.execute(
            insert(s.customers),
            [
                {
                    "customer_key": f"C{i:06d}",
                    "market": "DE",
                    "locale": "de-DE",
                    "timezone": "Europe/Berlin",
                    "row_hash": "h",
                    "loaded_at": NOW,
                }
                for i in range(CUSTOMERS)
            ],
        )
        rows = [
            message_row(
                i,
                f"C{i:06d}",
                NOW,
                message_key=f"pb:K{i:06d}:{n}",
                cycle_id=1 if n < 2 else 2,
                market="DE",
                step=f"T-{n}",
                status="planned",
            )
            for i in range(CUSTOMERS)
            for n in range(3)
        ]
        insert_frame(conn, s.messages, pd.DataFrame(rows))
        # What a cycle meets: statistics taken before its messages were rendered, and not since.
        conn.execute(text("ALTER TABLE messages SET (autovacuum_enabled = false)"))
        conn.execute(text("ANALYZE messages"))
        conn.execute(update(s.messages).where(s.messages.c.cycle_id == 1).values(status="rendered"))


@contextmanager
def claim_plans(engine: Engine) -> Iterator[list[str]]:
    """Collect the plan PostgreSQL picks for each claim statement, in the claim's own transaction."""
    plans: list[str] = []

    def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("WITH head"):
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plans.append(json.dumps(cursor.fetchone()[0]))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)


@pytest.mark.parametrize("shard", [None, Shard(1, 4)])
def test_a_claim_walks_the_claim_index_even_when_statistics_say_nothing_is_rendered(
    pg_engine: Engine, shard: Shard | None
) -> None:
    _seed(pg_engine)
    with claim_plans(pg_engine) as plans:
        for _ in range(2):
            with pg_engine.begin() as conn:
                assert not claim_batch(conn, 1, 500, NOW, owner=1, shard=shard).empty
    assert len(plans) == 2
    for plan in plans:
        assert "ix_messages_claim" in plan
        # Neither collecting every rendered message of the cycle nor sorting them.
        assert "Bitmap Heap Scan" not in plan and '"Sort"' not in plan


def test_the_settings_of_a_claim_end_with_its_transaction(pg_engine: Engine) -> None:
    _seed(pg_engine)
    with pg_engine.connect() as conn:
        with conn.begin():
            claim_batch(conn, 1, 10, NOW, owner=1)
        assert conn.execute(text("SHOW enable_sort")).scalar() == "on"
        assert conn.execute(text("SHOW enable_bitmapscan")).scalar() == "on"
