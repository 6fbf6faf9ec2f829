"""The store's shard columns and per-customer reads give what the hash and the rows say."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
from sqlalchemy import Engine, insert, select

from tasks.domain.shards import shard_of, shards
from tasks.store import schema as s
from tasks.store.repository import last_activity, marketing_objectors
from tasks.store.sharding import in_shard

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
STAMP = {"row_hash": "h", "loaded_at": NOW}
KEYS = [f"C{i:07d}" for i in range(40)] + ["kündé", "K-ÉÀ:1"]


def _customers(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(s.customers),
            [
                {"customer_key": k, "market": "DE", "locale": "de-DE", "timezone": "Europe/Berlin", **STAMP}
                for k in KEYS
            ],
        )


def test_each_shard_of_the_customers_is_the_one_python_computes(engine: Engine) -> None:
    _customers(engine)
    cust = s.customers
    with engine.connect() as conn:
        for shard in shards(5):
            found = {
                r[0]
                for r in conn.execute(select(cust.c.customer_key).where(in_shard(cust.c.customer_key, shard)))
            }
            assert found == {k for k in KEYS if shard_of(k, 5) == shard.index}


def test_postgres_stores_the_first_32_bits_of_the_key_md5(pg_engine: Engine) -> None:
    _customers(pg_engine)
    with pg_engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(s.customers.c.customer_key, s.customers.c.shard_hash))]
    stored = dict(rows)
    assert stored == {k: shard_of(k, 2**32) for k in KEYS}


def test_marketing_objectors_of_a_shard_are_its_own_customers(engine: Engine) -> None:
    _customers(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(s.consents),
            [
                {
                    "customer_key": k,
                    "channel": "all",
                    "purpose": "marketing",
                    "status": "withdrawn",
                    "controller": "bank",
                    "lawful_basis": "consent",
                    "captured_at": NOW,
                    "origin": "crm",
                    "recorded_at": NOW,
                    "row_hash": "h",
                }
                for k in KEYS
            ],
        )
        parts = [marketing_objectors(conn, ["DE"], shard) for shard in shards(3)]
    assert [sorted(p) for p in parts] == [sorted(k for k in KEYS if shard_of(k, 3) == i) for i in range(3)]


def test_last_activity_is_each_customers_latest_day_and_skips_customers_without_rows(engine: Engine) -> None:
    rows = [
        ("C1", date(2026, 9, 1), date(2026, 9, 20)),
        ("C1", date(2026, 10, 1), date(2026, 10, 3)),
        ("C2", date(2026, 10, 1), None),
        ("C3", date(2026, 8, 1), date(2026, 8, 31)),
        ('O\'K, "x"', date(2026, 8, 1), date(2026, 8, 2)),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(s.activity),
            [
                {"customer_key": k, "month": m, "transactions": 1, "last_active": d, **STAMP}
                for k, m, d in rows
            ],
        )
        latest = last_activity(conn, ["C1", "C2", "C4", "C1", 'O\'K, "x"'])
    found = {k: (None if pd.isna(v) else pd.Timestamp(v).date()) for k, v in latest.items()}
    assert found == {"C1": date(2026, 10, 3), "C2": None, 'O\'K, "x"': date(2026, 8, 2)}
