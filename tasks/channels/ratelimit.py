"""Pace provider calls: at most `rate` units start in any 1-second window, at most N calls in flight."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, wait
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


class PermitUnavailable(RuntimeError):
    """No permit to start a call could be had (a shared limit is missing or unreachable): nothing started."""


class Limiter(Protocol):
    """Admits provider calls; a distributed one (Prefect global concurrency limits) can replace it."""

    def acquire(self, units: int = 1) -> AbstractContextManager[float]:
        """Wait until `units` may start; hold a concurrency slot inside the context; yield the start time.

        Raises PermitUnavailable when the call must not start at all; senders then stop the whole batch.
        """
        ...


class SlidingWindowLimiter:
    """Exact sliding-window log: a start is admitted only if the last `per` seconds hold at most `rate` units.

    A token bucket of capacity `rate` lets up to 2 x rate start within one second (a full bucket plus the
    refill), which carriers count as a breach of the sender's MPS; the log never does. With `paced`,
    starts are also spread at least `per / rate` apart: a full window released at once would reach the
    provider as a burst that network jitter can squeeze into its own one-second window.
    """

    def __init__(
        self,
        rate: float,
        max_concurrency: int = 8,
        per: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        paced: bool = True,
    ) -> None:
        if rate <= 0 or per <= 0 or max_concurrency < 1:
            raise ValueError("rate, per and max_concurrency must be positive")
        self.rate = rate
        self.per = per
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.paced = paced
        self._next = float("-inf")

    def _admit(self, units: int) -> float | None:
        """Record a start of `units` now and return its time, or return None after sleeping a bit."""
        with self._lock:
            now = self._clock()
            while self._log and self._log[0][0] <= now - self.per:
                self._used -= self._log.popleft()[1]
            if self.paced and now < self._next:
                wait = self._next - now
            elif self._used + units <= self.rate:
                self._log.append((now, units))
                self._used += units
                self._next = now + units * self.per / self.rate
                return now
            else:
                wait = None
            if wait is None:
                # Wait until enough of the oldest starts leave the window.
                excess = self._used + units - self.rate
                freed = 0
                wake = now
                for at, n in self._log:
                    freed += n
                    wake = at + self.per
                    if freed >= excess:
                        break
                wait = wake - now
        self._sleep(max(wait, 1e-4))
        return None

    @contextmanager
    def acquire(self, units: int = 1) -> Iterator[float]:
        """Wait until `units` may start; hold a concurrency slot inside the context; yield the start time."""
        if units < 1:
            raise ValueError("units must be at least 1")
        if units > self.rate:
            raise ValueError(f"{units} units can never fit a window of {self.rate}")
        # The slot is taken before the rate check, so the recorded start is when the call really starts.
        self._slots.acquire()
        try:
            started = self._admit(units)
            while started is None:
                started = self._admit(units)
            yield started
        finally:
            self._slots.release()


class ConcurrencyLimiter:
    """No rate ceiling, only a cap on calls in flight."""

    def __init__(self, max_concurrency: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._clock = clock

    @contextmanager
    def acquire(self, units: int = 1) -> Iterator[float]:
        """Hold a concurrency slot while the context is open; yield the start time."""
        del units
        with self._slots:
            yield self._clock()


def fan_out(pool: Executor, workers: int, items: Sequence[T], call: Callable[[T], R]) -> list[R]:
    """Return `call(item)` for every item, in order, computed by at most `workers` tasks on `pool`.

    Each task takes the next item when it is free: one task per worker rather than one per item keeps
    the caller's cost per batch flat, and a slow call never holds up the items behind it.
    """
    results: list[R | None] = [None] * len(items)
    # deque.popleft is atomic, so the workers share the queue without a lock.
    queue = deque(enumerate(items))

    def work() -> None:
        while True:
            try:
                index, item = queue.popleft()
            except IndexError:
                return
            results[index] = call(item)

    tasks = [pool.submit(work) for _ in range(min(workers, len(items)))]
    # Every task finishes before anything is raised: no call may still be running once this returns.
    wait(tasks)
    for task in tasks:
        task.result()
    return cast(list[R], results)
