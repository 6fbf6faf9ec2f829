"""A cycle's first load into a fresh PostgreSQL store leaves the planner statistics of what it loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from flows.renewal_cycle import renewal_cycle
from tests.e2e.conftest import AS_OF, wire
from tests.support.postgres import scratch_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.usefixtures("prefect_harness", "unwire")]

# Plan analyzes what it joins itself; these only the load can have analyzed before segment reads them.
READ_BY_SEGMENT_ONLY = ["activity", "consents", "contracts", "customers"]


def test_the_tables_segment_reads_are_analyzed_by_the_load_before_it(
    tmp_path: Path, pg_admin_dsn: str
) -> None:
    with scratch_database(pg_admin_dsn) as url:
        wire(tmp_path, url, customers=300, seed=3)
        renewal_cycle(as_of=AS_OF, shards=2)
        engine = create_engine(url)
        with engine.connect() as conn:
            analyzed = conn.execute(
                text(
                    "SELECT relname FROM pg_stat_user_tables "
                    "WHERE relname = ANY(:tables) AND last_analyze IS NOT NULL ORDER BY relname"
                ),
                {"tables": READ_BY_SEGMENT_ONLY},
            ).scalars()
            assert list(analyzed) == READ_BY_SEGMENT_ONLY
        engine.dispose()
