"""The renewal cycle: extract, validate, load, segment, plan, consent gate, render, dispatch, summarise."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.runtime import flow_run

from tasks._prefect import protect_run
from tasks.cycle import fail_cycle, open_cycle, summarise
from tasks.dispatch import dispatch
from tasks.extract import extract
from tasks.gate import gate
from tasks.load import load
from tasks.plan import plan
from tasks.render import render
from tasks.runtime import get_runtime
from tasks.segment import segment
from tasks.validate import validate, validation_stats

ALL_PLAYBOOKS = "all"


def resolve_markets(markets: list[str] | None) -> list[str]:
    """Return the requested market codes (upper-cased, sorted), or every configured market."""
    configured = get_runtime().markets
    return sorted({m.strip().upper() for m in markets if m.strip()}) if markets else sorted(configured)


def local_today(markets: list[str]) -> date:
    """Return today's date in the first market's time zone, the day the cycle is for."""
    zone = get_runtime().markets[markets[0]].timezone if markets else "UTC"
    return datetime.now(ZoneInfo(zone)).date()


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


def named(step: Any, label: str) -> Any:
    """Return the task with a run name saying market, day and playbook ("segment DE 2026-11-22 all")."""
    return step.with_options(task_run_name=f"{step.name} {label}")


def resolve_playbooks(playbook: str) -> list[str]:
    """Return the playbooks to run: the one named, or all of config/cycle.yaml in priority order."""
    return list(get_runtime().cycle.playbooks) if playbook == ALL_PLAYBOOKS else [playbook]


def _run_name() -> str:
    params = flow_run.parameters
    markets = ",".join(sorted({str(m).strip().upper() for m in params.get("markets") or []})) or "all"
    day = params.get("as_of") or "today"
    return f"renewal-cycle {markets} {day} {params.get('playbook', ALL_PLAYBOOKS)}"


@flow(name="renewal-cycle", flow_run_name=_run_name, retries=0)
def renewal_cycle(
    as_of: date | None = None,
    markets: list[str] | None = None,
    dry_run: bool = False,
    playbook: str = ALL_PLAYBOOKS,
) -> dict[str, Any]:
    """Run one cycle for `as_of` (default: today in the market's zone) and return its summary.

    `playbook` is one playbook id, or "all" for every playbook of config/cycle.yaml in priority order.
    """
    protect_run({"as_of": as_of, "markets": markets, "dry_run": dry_run, "playbook": playbook})
    codes = resolve_markets(markets)
    day = as_of or local_today(codes)
    books = resolve_playbooks(playbook)
    label = f"{','.join(codes)} {day.isoformat()} {playbook}"
    cycle_id = named(open_cycle, label)(day, codes, books, dry_run)
    stages: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    rss: dict[str, float] = {}
    base: dict[str, Any] = {
        "cycle_id": cycle_id,
        "as_of": day.isoformat(),
        "markets": codes,
        "playbook": playbook,
        "playbook_ids": ",".join(books),
        "dry_run": dry_run,
        "status": "completed",
        "stages": stages,
        "seconds": seconds,
        "peak_rss_mb": rss,
    }
    try:
        with timed(seconds, "extract", rss):
            raws = named(extract, label)()
        with timed(seconds, "validate", rss):
            validated = named(validate, label)(raws)
        stages["validate"] = validation_stats(validated)
        with timed(seconds, "load", rss):
            stages["load"] = named(load, label)(validated, cycle_id)
        with timed(seconds, "segment", rss):
            stages["segment"] = named(segment, label)(cycle_id, day, codes)
        with timed(seconds, "plan", rss):
            stages["plan"] = named(plan, label)(cycle_id, books, day, codes, dry_run)
        with timed(seconds, "consent-gate", rss):
            stages["consent-gate"] = named(gate, label)(cycle_id, codes)
        with timed(seconds, "render", rss):
            stages["render"] = named(render, label)(cycle_id, day)
        with timed(seconds, "dispatch", rss):
            stages["dispatch"] = {"skipped": True} if dry_run else named(dispatch, label)(cycle_id, day)
    except Exception as exc:
        fail_cycle(cycle_id, base, exc)
        raise
    summary: dict[str, Any] = named(summarise, label)(cycle_id, base)
    return summary
