"""The store's shard filter picks exactly the customers the Python hash puts in each shard."""

from __future__ import annotations

from sqlalchemy import Column, Engine, MetaData, String, Table, select

from tasks.domain.shards import Shard, shard_of, shards
from tasks.store.sharding import ShardOf, in_shard

KEYS = [f"C{i:07d}" for i in range(3000)] + ["kündé", "x", "ffffffff", "K-ÉÀ:1"]


def _keys_table(engine: Engine) -> Table:
    meta = MetaData()
    table = Table("shard_keys", meta, Column("k", String(64), primary_key=True))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"k": k} for k in KEYS])
    return table


def test_the_database_computes_the_same_shard_as_python(engine: Engine) -> None:
    table = _keys_table(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.k, ShardOf(table.c.k, 7))).all()
    assert {k: int(n) for k, n in rows} == {k: shard_of(k, 7) for k in KEYS}


def test_shard_filters_split_the_rows_without_overlap_or_gap(engine: Engine) -> None:
    table = _keys_table(engine)
    seen: list[str] = []
    with engine.connect() as conn:
        for shard in shards(4):
            part = [r[0] for r in conn.execute(select(table.c.k).where(in_shard(table.c.k, shard)))]
            assert all(shard_of(k, 4) == shard.index for k in part)
            seen += part
    assert sorted(seen) == sorted(KEYS)


def test_no_shard_filters_nothing(engine: Engine) -> None:
    table = _keys_table(engine)
    with engine.connect() as conn:
        everyone = conn.execute(select(table.c.k).where(in_shard(table.c.k, None))).all()
        single = conn.execute(select(table.c.k).where(in_shard(table.c.k, Shard(0, 1)))).all()
    assert len(everyone) == len(single) == len(KEYS)
