"""The store's clock runs with the wall clock unless a benchmark shifts it, in its own process only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tasks.store.repository import shift_clock, utcnow


@pytest.fixture
def clock() -> Iterator[None]:
    """Put the clock back on the wall clock after the test."""
    yield
    shift_clock(timedelta(0))


def test_the_clock_is_the_wall_clock_in_utc() -> None:
    before, now, after = datetime.now(UTC), utcnow(), datetime.now(UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after


def test_a_shifted_clock_keeps_running_from_the_moment_it_was_shifted_to(clock: None) -> None:
    shift_clock(timedelta(hours=9, minutes=30))
    first = utcnow()
    assert abs(first - datetime.now(UTC) - timedelta(hours=9, minutes=30)) < timedelta(seconds=1)
    time.sleep(0.01)
    assert utcnow() > first
