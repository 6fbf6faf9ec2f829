"""The gate reuses next-slot answers within a run, but never across zones or holiday calendars."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from tasks.domain.consent import Counter, Decision, Outcome, Request, decide_message
from tests.unit.test_compliance_cases import MARKETS, consent, person

# Wednesday 23:30 UTC: 00:30 Thursday in Paris, 18:30 Wednesday in New York.
LATE = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
PARIS_8AM_THURSDAY = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
PARIS_8AM_FRIDAY = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def _decide(timezone: str, is_holiday: Callable[[date], bool]) -> Decision:
    who = person("FR", consent("sms"), timezone=timezone)
    request = Request("m1", "sms", "marketing")
    return decide_message(request, who, MARKETS["FR"].rules, LATE, Counter(), is_holiday)


def _no_holidays(day: date) -> bool:
    return day.year < 0


def _thursday_off(day: date) -> bool:
    return day == date(2026, 11, 26)


def test_the_same_moment_is_deferred_to_each_zones_own_morning() -> None:
    assert _decide("Europe/Paris", _no_holidays).deferred_until == PARIS_8AM_THURSDAY
    assert _decide("America/New_York", _no_holidays).outcome is Outcome.ALLOWED


def test_a_second_holiday_calendar_gets_its_own_answer_at_the_same_moment() -> None:
    assert _decide("Europe/Paris", _no_holidays).deferred_until == PARIS_8AM_THURSDAY
    assert _decide("Europe/Paris", _thursday_off).deferred_until == PARIS_8AM_FRIDAY
