"""The planner statistics of tables written in bulk since their last ANALYZE are refreshed."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table

from tasks.store.statistics import refresh_statistics


def _loaded_table(engine: Engine, rows: int) -> Table:
    meta = MetaData()
    table = Table("plan_stats_probe", meta, Column("n", Integer, primary_key=True))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"n": n} for n in range(rows)])
    return table


@pytest.mark.postgres
def test_a_table_never_analyzed_is_analyzed_once(pg_engine: Engine) -> None:
    _loaded_table(pg_engine, 500)
    with pg_engine.begin() as conn:
        assert refresh_statistics(conn, ["plan_stats_probe"]) == ["plan_stats_probe"]
    with pg_engine.begin() as conn:
        assert refresh_statistics(conn, ["plan_stats_probe"]) == []


def test_sqlite_has_no_statistics_to_refresh(sqlite_engine: Engine) -> None:
    _loaded_table(sqlite_engine, 10)
    with sqlite_engine.begin() as conn:
        assert refresh_statistics(conn, ["plan_stats_probe"]) == []
