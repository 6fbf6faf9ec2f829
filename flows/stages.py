"""The per-customer stages of a cycle (segment to dispatch), shared by the cycle and its shards."""

from __future__ import annotations

import ctypes
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

from tasks.dispatch import dispatch
from tasks.domain.shards import Shard
from tasks.gate import gate
from tasks.plan import plan
from tasks.render import render
from tasks.segment import segment

CUSTOMER_STAGES = ("segment", "plan", "consent-gate", "render", "dispatch")


@contextmanager
def timed(seconds: dict[str, float], stage: str, rss: dict[str, float] | None = None) -> Iterator[None]:
    """Record how long a stage took (wall clock) in `seconds`, and the process's peak RSS after it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(time.perf_counter() - start, 3)
        if rss is not None:
            rss[stage] = round(peak_rss_mb(), 1)


def peak_rss_mb() -> float:
    """Return this process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Hand memory freed by the ingest back to the operating system (Arrow's pool, then glibc's heap)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def use_system_allocator() -> None:
    """Allocate Arrow's buffers from the C heap from now on (buffers already made keep their pool)."""
    import pyarrow as pa

    # A worker runs shard after shard, and mimalloc, Arrow's default pool here, kept what the shards
    # freed: 1M customers in 8 shards on 2 workers peaked at 712 MiB a worker, 638-642 with glibc's heap
    # (which trims what is freed), the shards' time within noise (docs/performance.md).
    previous = pa.default_memory_pool()
    if previous.backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
        # release_memory() trims the default pool only: what the old pool caches must go back now.
        previous.release_unused()


def named(step: Any, label: str) -> Any:
    """Return the task with a run name saying market, day and playbook ("segment DE 2026-11-22 all")."""
    return step.with_options(task_run_name=f"{step.name} {label}")


def run_customer_stages(
    cycle_id: int,
    day: date,
    codes: list[str],
    books: list[str],
    dry_run: bool,
    label: str,
    shard: Shard | None,
    out: tuple[dict[str, Any], dict[str, float], dict[str, float]],
) -> None:
    """Segment, plan, gate, render and dispatch the cycle's customers (one shard's, when given).

    Stats, seconds and peak RSS go into `out` stage by stage, so a failure leaves what was done.
    """
    stages, seconds, rss = out
    with timed(seconds, "segment", rss):
        stages["segment"] = named(segment, label)(cycle_id, day, codes, shard)
    with timed(seconds, "plan", rss):
        stages["plan"] = named(plan, label)(cycle_id, books, day, codes, dry_run, shard)
    with timed(seconds, "consent-gate", rss):
        stages["consent-gate"] = named(gate, label)(cycle_id, codes, None, shard)
    with timed(seconds, "render", rss):
        stages["render"] = named(render, label)(cycle_id, day, shard)
    with timed(seconds, "dispatch", rss):
        stages["dispatch"] = {"skipped": True} if dry_run else named(dispatch, label)(cycle_id, day, shard)
