"""The limiter never lets more than `rate` units start in any 1-second window, nor too many run at once."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

import pytest

from tasks.channels.ratelimit import ConcurrencyLimiter, Limiter, SlidingWindowLimiter


class VirtualClock:
    """A shared clock that moves only when a thread sleeps: full speed, exact bounds."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def heaviest_window(starts: list[tuple[float, int]], per: float = 1.0) -> float:
    """Return the most units that started in any half-open window [t, t + per)."""
    starts = sorted(starts)
    times = [t for t, _ in starts]
    prefix = [0]
    for _, units in starts:
        prefix.append(prefix[-1] + units)
    worst = 0
    for i, (t, _) in enumerate(starts):
        j = bisect_left(times, t + per)
        worst = max(worst, prefix[j] - prefix[i])
    return worst


def hammer(limiter: Limiter, threads: int, per_thread: int, units: list[int]) -> list[tuple[float, int]]:
    starts: list[tuple[float, int]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(per_thread):
            u = units[(n + i) % len(units)]
            with limiter.acquire(u) as started, lock:
                starts.append((started, u))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return starts


@pytest.mark.parametrize(("rate", "units"), [(10, [1]), (25, [1, 2, 3]), (7, [3, 1])])
def test_no_window_holds_more_than_the_rate_with_concurrent_threads_on_a_virtual_clock(
    rate: int, units: list[int]
) -> None:
    clock = VirtualClock()
    limiter = SlidingWindowLimiter(rate, max_concurrency=8, clock=clock, sleep=clock.sleep)
    starts = hammer(limiter, threads=8, per_thread=40, units=units)
    assert len(starts) == 320
    assert heaviest_window(starts) <= rate
    # The window is also used, not merely respected: the first second admits a full window.
    assert heaviest_window(starts) >= rate - max(units) + 1


def test_no_window_holds_more_than_the_rate_on_the_real_clock() -> None:
    limiter = SlidingWindowLimiter(40, max_concurrency=6)
    began = time.monotonic()
    starts = hammer(limiter, threads=6, per_thread=12, units=[1, 2])
    elapsed = time.monotonic() - began
    assert heaviest_window(starts) <= 40
    # 108 units at 40 per second cannot finish before two full windows after the first burst.
    assert elapsed >= 2.0


def test_a_sliding_window_stops_the_double_burst_a_token_bucket_allows() -> None:
    clock = VirtualClock()
    limiter = SlidingWindowLimiter(10, clock=clock, sleep=clock.sleep)
    first = []
    for _ in range(10):
        with limiter.acquire(1) as started:
            first.append(started)
    clock.sleep(0.999)
    with limiter.acquire(1) as late:
        pass
    assert late >= first[0] + 1.0


def test_the_window_check_itself_sees_a_breach() -> None:
    assert heaviest_window([(0.0, 1), (0.5, 1), (0.99, 1)]) == 3
    assert heaviest_window([(0.0, 1), (1.0, 1), (2.0, 2)]) == 2


def test_concurrency_never_exceeds_the_cap() -> None:
    limiter = SlidingWindowLimiter(10_000, max_concurrency=3)
    running = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        for _ in range(5):
            with limiter.acquire():
                with lock:
                    running += 1
                    peak = max(peak, running)
                time.sleep(0.005)
                with lock:
                    running -= 1

    pool = [threading.Thread(target=work) for _ in range(10)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert peak == 3


def test_the_slot_is_released_when_the_call_raises() -> None:
    limiter = ConcurrencyLimiter(1)
    with pytest.raises(RuntimeError), limiter.acquire():
        raise RuntimeError
    with limiter.acquire() as started:
        assert started > 0


def test_more_units_than_the_rate_are_refused_up_front() -> None:
    limiter = SlidingWindowLimiter(2)
    with pytest.raises(ValueError), limiter.acquire(3):
        pass
    with pytest.raises(ValueError), limiter.acquire(0):
        pass
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0)
