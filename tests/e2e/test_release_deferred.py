"""The hourly release-deferred flow sends deferred messages whose slot has come, after a fresh check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from flows.release_deferred import release_deferred
from flows.renewal_cycle import renewal_cycle
from tests.e2e.conftest import AS_OF, wire

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]


def test_deferred_messages_whose_slot_has_come_are_rechecked_and_sent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'renewals.db'}"
    wire(tmp_path, url, customers=800, seed=21)
    renewal_cycle(as_of=AS_OF)
    engine = create_engine(url)
    with engine.begin() as conn:
        deferred = conn.execute(text("SELECT count(*) FROM messages WHERE status = 'deferred'")).scalar_one()
        # Their allowed slot is now: the next hourly run must take them.
        conn.execute(
            text(
                "UPDATE messages SET deferred_until = '2000-01-01 00:00:00.000000' WHERE status = 'deferred'"
            )
        )
    assert deferred > 0

    summary = release_deferred()

    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM messages WHERE status = 'deferred' AND deferred_until < '2001-01-01'")
        ).scalar_one()
        released = conn.execute(
            text("SELECT count(*) FROM decisions WHERE stage = 'release' AND cycle_id = :c"),
            {"c": summary["cycle_id"]},
        ).scalar_one()
    engine.dispose()
    assert left == 0
    assert released == deferred == summary["stages"]["consent-gate"]["decided"]
    assert summary["markets"] == sorted(summary["markets"]) and "all" not in summary["markets"]
    outcomes = summary["stages"]["consent-gate"]["by_status"]
    assert sum(outcomes.values()) == deferred
    # Allowed ones were rendered and sent; the rest were deferred again to a new slot or blocked.
    assert summary["stages"]["dispatch"]["sent"] == summary["stages"]["render"]["rendered"]
