"""Pin the UTC clock the gate and the store read (`tasks.store.repository.utcnow`), here and in subprocesses.

Send windows are judged by that clock, so a cycle run twice, or whole and then in shards, decides
differently when a market's window opens between the runs; pinned to 10:00 UTC (no window opens or closes
between 08:00 and 13:00 UTC), they decide the same whatever hour the suite runs at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from tasks.store.repository import shift_clock

SHIFT_ENV = "TESTS_CLOCK_SHIFT_SECONDS"
# Holds a sitecustomize that applies SHIFT_ENV in every Python process started with it on PYTHONPATH.
SITE = Path(__file__).resolve().parent / "pinned_clock"


@contextmanager
def pinned_clock(hour: int = 10) -> Iterator[datetime]:
    """Run `utcnow` as if the UTC clock read `hour`:00 today, in this process and the ones it starts."""
    wall = datetime.now(UTC)
    offset = datetime.combine(wall.date(), time(hour), UTC) - wall
    saved = {name: os.environ.get(name) for name in (SHIFT_ENV, "PYTHONPATH")}
    shift_clock(offset)
    os.environ[SHIFT_ENV] = repr(offset.total_seconds())
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), saved["PYTHONPATH"]) if p)
    try:
        yield wall + offset
    finally:
        shift_clock(timedelta(0))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
