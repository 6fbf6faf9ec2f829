"""The hour a benchmark runs its cycle at: send windows are judged by the clock, so sends depend on it."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from tasks.store.repository import shift_clock

HELP = (
    "run the cycle as if the UTC clock read HH:MM today, so messages sent do not depend on the hour the "
    "benchmark starts ('now': the wall clock)"
)


def pin_hour(at: str) -> timedelta:
    """Shift this process's clock to today at `at` (HH:MM, UTC) and return the shift, for other processes."""
    if at == "now":
        return timedelta(0)
    wall = datetime.now(UTC)
    moment = datetime.strptime(at, "%H:%M").time()
    offset = datetime.combine(wall.date(), moment, UTC) - wall
    shift_clock(offset)
    return offset


def described(at: str) -> str:
    """Return how a benchmark's output names the clock it ran on."""
    return "the wall clock" if at == "now" else f"clock at {at} UTC"


def hour(text: str) -> str:
    """Check an --at value (HH:MM or 'now') for argparse."""
    if text != "now":
        try:
            datetime.strptime(text, "%H:%M")
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not HH:MM (00:00-23:59) or 'now'") from None
    return text
