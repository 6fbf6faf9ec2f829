"""One rate ceiling shared by several dispatch processes: permits taken in chunks from a global limit.

The global limit is a leaky bucket, which is how a Prefect global concurrency limit with slot decay
behaves (read from prefect/server/models/concurrency_limits_v2.py, 3.8): at each update the level
first drops by floor(decay x seconds since the last update), never below zero; a request for n slots
is then granted only if level + n <= limit, and a request for more than `limit` slots is refused
outright (422). A refused request changes nothing (its bookkeeping is rolled back with the 423).

The bound. The updates in any stretch of T seconds free at most decay x T slots between them, the
level ends at most `limit` and starts at least 0, so the grants in any T seconds add up to at most
limit + decay x T. Each process takes `chunk` slots at a time and hands them out locally; a permit
expires `lifetime` seconds after the request that took it was sent, a moment that precedes the grant
(lifetime = chunk / rate, to spend a chunk at the local pace, + `api_seconds` for the request). A
start in a one-second window [s, s + 1) therefore spent a permit granted in (s - lifetime, s + 1), a
stretch of 1 + lifetime seconds, and the window holds at most

    limit + decay x (1 + lifetime)   units, across all processes.

With decay = (rate - limit) / (1 + lifetime + allowance) that is below `rate`, with `allowance`
seconds to spare for what the arithmetic does not see: a start reaching the provider a little after
it was admitted, and the server's transaction clock (updates are timed when their transaction
began). The floor() in the server's decay only ever frees fewer slots, so it cannot break the bound.

The price is throughput: together the processes start at most `decay` units per second in the long
run, 75% of the rate with chunks of 1/20 of it and 0.1 s for the API, less for rates so low that one
call's units are a large share of it. `limit` is two chunks, so one process can take a chunk while
another's still decays, but at least the most units one call needs (an SMS of 3 segments). A process
whose grants keep arriving after their permits expired (an API slower than `api_seconds`) stops with
PermitUnavailable rather than spin.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tasks.channels.ratelimit import PermitUnavailable, SlidingWindowLimiter

CHUNK_SHARE = 1 / 20
"""A process takes this share of the rate per request to the global limit (at least one unit)."""
API_SECONDS = 0.1
"""Part of a permit's lifetime set aside for the request that takes it (a Prefect API round trip)."""
ARRIVAL_ALLOWANCE = 0.05
"""Seconds of slack in the bound, for a start reaching the provider after it was admitted."""

LATE_GRANTS = 5
"""Grants in a row that arrive already expired before a process gives up rather than spin."""

TakeSlots = Callable[[int], "float | None"]
"""Try once to take n slots of the global limit: None when granted, else the seconds to wait before
trying again. Raises PermitUnavailable when the limit cannot be used at all (missing, unreachable)."""


@dataclass
class _Grant:
    """Permits from one grant: usable until `expires`, `left` of them unspent."""

    expires: float
    left: int


@dataclass(frozen=True)
class SharedLimit:
    """The global limit that keeps every process of one sender under `rate`, and how each draws on it."""

    name: str
    rate: float
    chunk: int
    """Slots a process asks for at a time (more only when one call needs more units)."""
    limit: int
    slot_decay_per_second: float
    lifetime: float
    """Seconds a permit may be used for, counted from the moment its request was sent."""
    allowance: float = ARRIVAL_ALLOWANCE

    def heaviest_second(self) -> float:
        """Return the most units that can start in any one-second window, by the bound above."""
        return self.limit + self.slot_decay_per_second * (1.0 + self.lifetime)


def plan_shared_limit(
    name: str,
    rate: float,
    max_units: int = 1,
    *,
    api_seconds: float = API_SECONDS,
    chunk_share: float = CHUNK_SHARE,
    allowance: float = ARRIVAL_ALLOWANCE,
) -> SharedLimit:
    """Return the global limit and permit lifetime that keep all processes under `rate` units per second."""
    if rate <= 0 or max_units < 1 or not 0 < chunk_share < 1 or allowance < 0 or api_seconds < 0:
        raise ValueError("need rate > 0, max_units >= 1, 0 < chunk_share < 1, allowance and api_seconds >= 0")
    chunk = max(1, math.floor(rate * chunk_share))
    limit = max(2 * chunk, max_units)
    if limit >= rate:
        limit = max(chunk, max_units)
    if limit >= rate:
        raise ValueError(
            f"a ceiling of {rate:g}/s is too low to share in chunks: one call may need {max_units} units"
        )
    lifetime = chunk / rate + api_seconds
    decay = (rate - limit) / (1.0 + lifetime + allowance)
    return SharedLimit(name, rate, chunk, limit, decay, lifetime, allowance)


class SharedRateLimiter:
    """A process's share of a global rate limit, in front of its own sliding window and concurrency cap.

    Each call first passes the local limiter (pacing and calls in flight), then spends permits taken
    from the global limit `chunk` at a time; permits not spent within their lifetime are dropped.
    """

    def __init__(
        self,
        local: SlidingWindowLimiter,
        shared: SharedLimit,
        take: TakeSlots,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.local = local
        self.shared = shared
        self._take = take
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._grants: deque[_Grant] = deque()
        self.requests = 0
        self.expired = 0
        self._late = 0

    @property
    def rate(self) -> float:
        """Return the ceiling in units per second (the same locally and across processes)."""
        return self.local.rate

    @contextmanager
    def acquire(self, units: int = 1) -> Iterator[float]:
        """Wait until `units` may start; hold a concurrency slot inside the context; yield the start time."""
        if units > self.shared.limit:
            raise ValueError(
                f"{units} units exceed the global limit {self.shared.name} ({self.shared.limit})"
            )
        with self.local.acquire(units):
            yield self._spend(units)

    def _spend(self, units: int) -> float:
        """Spend `units` live permits, taking more from the global limit first if needed; return the time."""
        with self._lock:
            while True:
                now = self._clock()
                while self._grants and self._grants[0].expires <= now:
                    self.expired += self._grants.popleft().left
                held = sum(g.left for g in self._grants)
                if held >= units:
                    owed = units
                    while owed:
                        grant = self._grants[0]
                        used = min(owed, grant.left)
                        grant.left -= used
                        owed -= used
                        if not grant.left:
                            self._grants.popleft()
                    return now
                wanted = min(self.shared.limit, max(self.shared.chunk, units - held))
                wait = self._request(wanted)
                if wait is not None:
                    self._sleep(max(wait, 1e-3))

    def _request(self, slots: int) -> float | None:
        """Ask the global limit once for `slots`; keep them as permits if granted, else return the wait."""
        # The permits' lifetime counts from before the request left: the grant can only come later.
        asked = self._clock()
        self.requests += 1
        try:
            wait = self._take(slots)
        except PermitUnavailable:
            raise
        except Exception as exc:
            raise PermitUnavailable(
                f"taking {slots} slots of the global limit {self.shared.name} failed ({type(exc).__name__})"
            ) from exc
        if wait is None:
            expires = asked + self.shared.lifetime
            self._late = self._late + 1 if self._clock() >= expires else 0
            if self._late >= LATE_GRANTS:
                raise PermitUnavailable(
                    f"{LATE_GRANTS} grants of {self.shared.name} in a row came back after their permits had "
                    f"expired ({self.shared.lifetime:.3f} s): the Prefect API is slower than the lifetime "
                    "allows; raise RENEWALS_SHARED_RATE_LIMIT_API_SECONDS and run `renewals limits ensure`"
                )
            self._grants.append(_Grant(expires, slots))
        return wait
