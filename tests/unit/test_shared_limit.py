"""Several processes drawing on one global rate limit never start more than the rate in any second."""

from __future__ import annotations

import math
import random
import threading

import pytest

from tasks.channels.ratelimit import PermitUnavailable, SlidingWindowLimiter
from tasks.channels.shared_limit import SharedLimit, SharedRateLimiter, plan_shared_limit
from tests.unit.test_ratelimit import VirtualClock, heaviest_window


class FakeGlobalLimit:
    """A Prefect rate limit as its server computes it: floor(decay x elapsed) freed per update, all or none.

    A request spends `latency` seconds on the way there and back, so the grant falls between the two.
    """

    def __init__(self, shared: SharedLimit, clock: VirtualClock, latency: float = 0.0) -> None:
        self.limit, self.decay = shared.limit, shared.slot_decay_per_second
        self.clock, self.latency = clock, latency
        self.level = 0
        self.updated = clock()
        self.grants: list[tuple[float, int]] = []
        self.refusals = 0
        self.exists = True
        self._lock = threading.Lock()

    def take(self, slots: int) -> float | None:
        self.clock.sleep(self.latency)
        with self._lock:
            if not self.exists:
                raise PermitUnavailable("the limit does not exist")
            if slots > self.limit:
                raise PermitUnavailable("422: slots requested is greater than the limit")
            now = self.clock()
            level = max(0, self.level - math.floor(self.decay * (now - self.updated)))
            if level + slots > self.limit:
                self.refusals += 1
                return slots / self.decay
            self.level, self.updated = level + slots, now
            self.grants.append((now, slots))
        self.clock.sleep(self.latency)
        return None


def process(
    shared: SharedLimit, fake: FakeGlobalLimit, clock: VirtualClock, threads: int
) -> SharedRateLimiter:
    local = SlidingWindowLimiter(shared.rate, max_concurrency=threads, clock=clock, sleep=clock.sleep)
    return SharedRateLimiter(local, shared, fake.take, clock=clock, sleep=clock.sleep)


def drain(
    limiters: list[SharedRateLimiter], threads: int, per_thread: int, units: list[int], clock: VirtualClock
) -> list[tuple[float, int]]:
    """Run `threads` senders per process, each starting `per_thread` calls; return every (start, units)."""
    starts: list[tuple[float, int]] = []
    lock = threading.Lock()

    def work(limiter: SharedRateLimiter, seed: int) -> None:
        rand = random.Random(seed)
        for i in range(per_thread):
            u = units[(seed + i) % len(units)]
            with limiter.acquire(u) as started:
                with lock:
                    starts.append((started, u))
                # The provider call itself takes a while.
                clock.sleep(rand.uniform(0.0, 0.002))

    pool = [
        threading.Thread(target=work, args=(limiter, 100 * p + t))
        for p, limiter in enumerate(limiters)
        for t in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return starts


@pytest.mark.parametrize(
    ("rate", "processes", "units", "latency"),
    [
        (100, 2, [1], 0.0),
        (100, 4, [1], 0.003),
        (60, 3, [1, 2, 3], 0.002),
        (10, 2, [1, 3], 0.01),
        (400, 3, [1], 0.0),
    ],
)
def test_processes_sharing_a_limit_never_start_more_than_the_rate_in_any_second(
    rate: int, processes: int, units: list[int], latency: float
) -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("renewals-rate-sms-test", rate, max_units=max(units))
    fake = FakeGlobalLimit(shared, clock, latency)
    limiters = [process(shared, fake, clock, threads=4) for _ in range(processes)]
    starts = drain(limiters, threads=4, per_thread=60, units=units, clock=clock)
    assert len(starts) == processes * 4 * 60
    assert heaviest_window(starts) <= rate
    # Every start spent a permit the global limit granted.
    assert sum(u for _, u in starts) <= sum(n for _, n in fake.grants)
    # And the ceiling is used, not merely respected. The virtual clock adds up every thread's sleeps, so how
    # the threads interleave stretches the span: 0.87-1.0 of the decay normally, down to 0.64 with a thread
    # switch every microsecond; half would mean a limiter that waits twice as long as it must.
    span = max(t for t, _ in starts) - min(t for t, _ in starts)
    assert sum(u for _, u in starts) / span >= 0.5 * shared.slot_decay_per_second


def test_the_planned_limit_keeps_any_second_under_the_rate_with_room_to_spare() -> None:
    for rate in (4, 10, 20, 37.5, 100, 250, 1000, 5000):
        for units in (1, 2, 3):
            shared = plan_shared_limit("x", rate, max_units=units)
            assert shared.slot_decay_per_second > 0
            assert shared.limit >= units
            # The allowance is what is to spare: the bound plus decay x allowance is exactly the rate.
            spare = shared.slot_decay_per_second * shared.allowance
            assert shared.heaviest_second() + spare == pytest.approx(rate)


def test_a_rate_too_low_for_one_call_cannot_be_shared() -> None:
    with pytest.raises(ValueError, match="too low to share"):
        plan_shared_limit("x", 3, max_units=3)


def test_permits_not_spent_within_their_lifetime_are_dropped_and_fresh_ones_taken() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("x", 100)
    fake = FakeGlobalLimit(shared, clock)
    limiter = process(shared, fake, clock, threads=1)
    with limiter.acquire(1):
        pass
    assert limiter.requests == 1 and shared.chunk == 5
    clock.sleep(shared.lifetime)
    with limiter.acquire(1):
        pass
    assert limiter.requests == 2
    assert limiter.expired == shared.chunk - 1


def test_a_permit_lives_from_when_its_request_left_not_from_when_the_grant_came_back() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("x", 100)
    fake = FakeGlobalLimit(shared, clock, latency=0.3 * shared.lifetime)
    limiter = process(shared, fake, clock, threads=1)
    with limiter.acquire(1):
        pass
    # Half a lifetime after the grant came back, the request that took it left 1.1 lifetimes ago.
    clock.sleep(0.5 * shared.lifetime)
    with limiter.acquire(1):
        pass
    assert limiter.requests == 2
    assert limiter.expired == shared.chunk - 1


def test_an_api_slower_than_a_permit_lives_stops_the_sender_instead_of_spinning() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("renewals-rate-sms-x", 100)
    fake = FakeGlobalLimit(shared, clock, latency=0.6 * shared.lifetime)
    limiter = process(shared, fake, clock, threads=1)
    with (
        pytest.raises(PermitUnavailable, match="renewals-rate-sms-x.*SHARED_RATE_LIMIT_API_SECONDS"),
        limiter.acquire(1),
    ):
        pass
    assert limiter.requests == 5


def test_a_call_needing_more_units_than_a_chunk_takes_them_in_one_grant() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("x", 10, max_units=3)
    assert shared.chunk == 1 and shared.limit == 3
    fake = FakeGlobalLimit(shared, clock)
    limiter = process(shared, fake, clock, threads=1)
    with limiter.acquire(3):
        pass
    assert [n for _, n in fake.grants] == [3]


def test_a_call_needing_more_units_than_the_global_limit_is_refused_up_front() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("renewals-rate-sms-x", 100, max_units=3)
    fake = FakeGlobalLimit(shared, clock)
    limiter = process(shared, fake, clock, threads=1)
    with pytest.raises(ValueError, match="renewals-rate-sms-x"), limiter.acquire(shared.limit + 1):
        pass
    assert limiter.requests == 0


def test_a_missing_global_limit_stops_the_call_before_it_starts() -> None:
    clock = VirtualClock()
    shared = plan_shared_limit("x", 100)
    fake = FakeGlobalLimit(shared, clock)
    fake.exists = False
    limiter = process(shared, fake, clock, threads=1)
    started = []
    with pytest.raises(PermitUnavailable, match="does not exist"), limiter.acquire(1) as at:
        started.append(at)
    assert not started


def test_any_failure_to_take_permits_becomes_a_permit_error_naming_the_limit() -> None:
    def unreachable(slots: int) -> float | None:
        raise ConnectionError("refused")

    shared = plan_shared_limit("renewals-rate-email-sendgrid", 100)
    limiter = SharedRateLimiter(SlidingWindowLimiter(100), shared, unreachable)
    with (
        pytest.raises(PermitUnavailable, match="renewals-rate-email-sendgrid.*ConnectionError"),
        limiter.acquire(1),
    ):
        pass
    # The concurrency slot was given back.
    with pytest.raises(PermitUnavailable), limiter.acquire(1):
        pass
