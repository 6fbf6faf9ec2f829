"""Retry: exponential backoff with jitter, the provider's pause honoured, only transient failures retried."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from python_http_client.exceptions import TooManyRequestsError
from twilio.base.exceptions import TwilioRestException

from tasks.channels.errors import Classified, ErrorClass, classify_sendgrid, classify_twilio
from tasks.channels.retry import Jitter, RetryPolicy, parse_rate_limit_reset, parse_retry_after

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC).timestamp()
TRANSIENT = Classified(ErrorClass.TRANSIENT, "20429")


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def policy(**overrides: object) -> RetryPolicy:
    options: dict[str, object] = {
        "max_attempts": 6,
        "base_delay": 0.5,
        "max_delay": 4.0,
        "jitter": Jitter.NONE,
        "clock": lambda: NOW,
        "sleep": Sleeps(),
    }
    options.update(overrides)
    return RetryPolicy(**options)  # type: ignore[arg-type]


def test_backoff_doubles_from_the_base_and_stops_at_the_cap() -> None:
    p = policy()
    assert [p.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_run_sleeps_the_backoff_sequence_between_tries_without_sleeping_for_real() -> None:
    sleeps = Sleeps()
    p = policy(max_attempts=5, sleep=sleeps)
    calls: list[int] = []

    def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 5:
            raise TwilioRestException(429, "/", "busy", 20429, "POST")
        return "SM1"

    outcome = p.run(flaky, classify_twilio)
    assert (outcome.value, outcome.error, outcome.attempts) == ("SM1", None, 5)
    assert sleeps.calls == [0.5, 1.0, 2.0, 4.0]
    assert calls == [1, 2, 3, 4, 5]
    assert outcome.waited == pytest.approx(7.5)


def test_the_last_failure_is_returned_when_attempts_run_out() -> None:
    sleeps = Sleeps()
    outcome = policy(max_attempts=3, sleep=sleeps).run(
        lambda _: (_ for _ in ()).throw(TwilioRestException(503, "/", "down", 503, "POST")), classify_twilio
    )
    assert outcome.value is None and outcome.error is not None
    assert (outcome.error.code, outcome.attempts, len(sleeps.calls)) == ("503", 3, 2)


@pytest.mark.parametrize("error_class", [ErrorClass.PERMANENT, ErrorClass.AMBIGUOUS])
def test_permanent_and_ambiguous_failures_are_never_retried(error_class: ErrorClass) -> None:
    sleeps = Sleeps()
    p = policy(sleep=sleeps)
    failure = Classified(error_class, "X")
    assert p.delay(1, failure) is None
    outcome = p.run(lambda _: (_ for _ in ()).throw(RuntimeError()), lambda _: failure)
    assert (outcome.attempts, sleeps.calls) == (1, [])


@pytest.mark.parametrize("seed", range(5))
def test_full_jitter_stays_between_zero_and_the_backoff(seed: int) -> None:
    rng = random.Random(seed)
    p = policy(jitter=Jitter.FULL, rand=rng.random)
    for attempt in range(1, 8):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        samples = [p.backoff(attempt) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.9 and min(samples) < ceiling * 0.1


@pytest.mark.parametrize("seed", range(5))
def test_equal_jitter_stays_between_half_and_the_whole_backoff(seed: int) -> None:
    rng = random.Random(seed)
    p = policy(jitter=Jitter.EQUAL, rand=rng.random)
    for attempt in range(1, 8):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        samples = [p.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)


def test_jitter_extremes_are_exact() -> None:
    assert policy(jitter=Jitter.FULL, rand=lambda: 0.0).backoff(3) == 0.0
    assert policy(jitter=Jitter.FULL, rand=lambda: 1.0).backoff(3) == 2.0
    assert policy(jitter=Jitter.EQUAL, rand=lambda: 0.0).backoff(3) == 1.0


def test_retry_after_in_seconds_wins_over_a_shorter_backoff() -> None:
    failure = classify_twilio(TwilioRestException(429, "/", "busy", 20429, "POST"), {"Retry-After": "3"})
    assert policy().delay(1, failure) == 3.0
    assert policy(base_delay=4.0, max_delay=8.0).delay(1, failure) == 4.0


def test_retry_after_as_an_http_date_counts_from_the_wall_clock() -> None:
    until = datetime.fromtimestamp(NOW + 30, UTC)
    headers = {"Retry-After": format_datetime(until, usegmt=True)}
    failure = classify_twilio(TwilioRestException(429, "/", "busy", 429, "POST"), headers)
    assert policy().delay(1, failure) == pytest.approx(30.0)
    assert parse_retry_after(format_datetime(until, usegmt=True), NOW) == pytest.approx(30.0)
    assert parse_retry_after("12", NOW) == 12.0
    assert parse_retry_after("later", NOW) is None


def test_sendgrid_rate_limit_reset_epoch_sets_the_pause() -> None:
    exc = TooManyRequestsError(429, "Too Many", b"", {"X-RateLimit-Reset": str(int(NOW) + 12)})
    assert policy().delay(1, classify_sendgrid(exc)) == pytest.approx(12.0)
    assert parse_rate_limit_reset(str(int(NOW) + 5), NOW) == 5.0
    assert parse_rate_limit_reset(str(int(NOW) - 5), NOW) == 0.0


def test_a_pause_longer_than_the_limit_fails_instead_of_parking_a_worker() -> None:
    failure = Classified(ErrorClass.TRANSIENT, "429", retry_after=3600)
    assert policy(max_server_delay=120).delay(1, failure) is None


def test_abort_stops_before_the_next_try() -> None:
    halt = Classified(ErrorClass.PERMANENT, "401", halt=True)
    calls: list[int] = []
    outcome = policy().run(calls.append, classify_twilio, abort=lambda: halt)
    assert (outcome.error, outcome.attempts, calls) == (halt, 0, [])


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=5, max_delay=1)


def test_transient_is_retried_exactly_until_max_attempts() -> None:
    p = policy(max_attempts=3)
    assert p.delay(1, TRANSIENT) is not None
    assert p.delay(2, TRANSIENT) is not None
    assert p.delay(3, TRANSIENT) is None
