"""Retry transient provider failures: capped exponential backoff, jitter, and the provider's Retry-After."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from tasks.channels.errors import Classified, ErrorClass, retry_hint
from tasks.channels.ratelimit import PermitUnavailable

T = TypeVar("T")


class Jitter(StrEnum):
    """How the backoff is randomised so that parallel workers do not retry in lockstep."""

    FULL = "full"
    """Uniform in [0, backoff]: spreads retries most, AWS's recommended default."""
    EQUAL = "equal"
    """Uniform in [backoff/2, backoff]: never retries almost at once."""
    NONE = "none"


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """The end of a retried call: its value, or the last failure; how many tries and seconds it took."""

    value: T | None
    error: Classified | None
    attempts: int
    waited: float = 0.0


def parse_retry_after(value: str, now: float) -> float | None:
    """Return the seconds to wait for a Retry-After value (delta-seconds or HTTP date), or None if invalid."""
    delay, until = retry_hint({"Retry-After": value})
    if delay is not None:
        return delay
    return None if until is None else max(0.0, until - now)


def parse_rate_limit_reset(value: str, now: float) -> float | None:
    """Return the seconds to wait for a SendGrid X-RateLimit-Reset value (unix time), or None if invalid."""
    _, until = retry_hint({"X-RateLimit-Reset": value})
    return None if until is None else max(0.0, until - now)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries TRANSIENT failures only; PERMANENT and AMBIGUOUS ones (which may have been sent) never."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: Jitter = Jitter.FULL
    max_server_delay: float = 120.0
    """A provider asking for a longer pause than this fails the message rather than parking a worker."""
    clock: Callable[[], float] = field(default=time.time, compare=False)
    """Wall clock (unix seconds), for Retry-After dates and X-RateLimit-Reset."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")

    def backoff(self, attempt: int) -> float:
        """Return the jittered pause after the `attempt`-th failed try (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 62))
        if self.jitter is Jitter.FULL:
            return ceiling * self.rand()
        if self.jitter is Jitter.EQUAL:
            return ceiling / 2 + ceiling / 2 * self.rand()
        return ceiling

    def server_delay(self, failure: Classified) -> float | None:
        """Return the pause the provider asked for, in seconds from now, if it asked."""
        if failure.retry_after is not None:
            return max(0.0, failure.retry_after)
        if failure.retry_at is not None:
            return max(0.0, failure.retry_at - self.clock())
        return None

    def delay(self, attempt: int, failure: Classified) -> float | None:
        """Return how long to wait before the next try, or None when the failure must not be retried."""
        if failure.error_class is not ErrorClass.TRANSIENT or attempt >= self.max_attempts:
            return None
        server = self.server_delay(failure)
        if server is None:
            return self.backoff(attempt)
        if server > self.max_server_delay:
            return None
        return max(server, self.backoff(attempt))

    def run(
        self,
        call: Callable[[int], T],
        classify: Callable[[Exception], Classified],
        abort: Callable[[], Classified | None] | None = None,
    ) -> Attempt[T]:
        """Call `call(attempt)` until it returns, fails for good, or `abort()` returns a reason to stop."""
        waited = 0.0
        attempt = 0
        while True:
            stop = abort() if abort is not None else None
            if stop is not None:
                return Attempt(None, stop, attempt, waited)
            attempt += 1
            try:
                return Attempt(call(attempt), None, attempt, waited)
            except PermitUnavailable:
                # Not a provider failure: the call never started, and the caller stops its whole batch.
                raise
            except Exception as exc:
                failure = classify(exc)
            pause = self.delay(attempt, failure)
            if pause is None:
                return Attempt(None, failure, attempt, waited)
            self.sleep(pause)
            waited += pause


NO_RETRY = RetryPolicy(max_attempts=1)
