"""The renewal cycle: extract, validate, load, segment, plan, consent gate, render, dispatch, summarise."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.runtime import flow_run
from sqlalchemy import select

from flows.renewal_cycle_shard import SHARD_FINISHED, renewal_cycle_shard, shards_on_task_runner
from flows.stages import CUSTOMER_STAGES, named, peak_rss_mb, run_customer_stages, timed
from tasks._prefect import protect_run
from tasks.cycle import fail_cycle, open_cycle, summarise
from tasks.domain.shards import Shard, merge_stats, shards
from tasks.extract import discard_staging, extract
from tasks.load import load, load_beside
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.validate import validate, validation_stats

__all__ = ["named", "peak_rss_mb", "renewal_cycle", "timed"]

ALL_PLAYBOOKS = "all"


def resolve_markets(markets: list[str] | None) -> list[str]:
    """Return the requested market codes (upper-cased, sorted), or every configured market."""
    configured = get_runtime().markets
    return sorted({m.strip().upper() for m in markets if m.strip()}) if markets else sorted(configured)


def local_today(markets: list[str]) -> date:
    """Return today's date in the first market's time zone, the day the cycle is for."""
    zone = get_runtime().markets[markets[0]].timezone if markets else "UTC"
    return datetime.now(ZoneInfo(zone)).date()


def resolve_playbooks(playbook: str) -> list[str]:
    """Return the playbooks to run: the one named, or all of config/cycle.yaml in priority order."""
    return list(get_runtime().cycle.playbooks) if playbook == ALL_PLAYBOOKS else [playbook]


def _run_name() -> str:
    params = flow_run.parameters
    markets = ",".join(sorted({str(m).strip().upper() for m in params.get("markets") or []})) or "all"
    day = params.get("as_of") or "today"
    split = int(params.get("shards") or 1)
    sharded = f" in {split} shards" if split > 1 else ""
    return f"renewal-cycle {markets} {day} {params.get('playbook', ALL_PLAYBOOKS)}{sharded}"


def shard_parameters(
    cycle_id: int, day: date, codes: list[str], books: list[str], dry_run: bool, shard: Shard
) -> dict[str, Any]:
    """Return the parameters of one shard's flow run (keys and codes only, never personal data)."""
    return {
        "cycle_id": cycle_id,
        "as_of": day,
        "markets": codes,
        "playbook_ids": books,
        "dry_run": dry_run,
        "shard_index": shard.index,
        "shard_count": shard.count,
    }


def ingest(cycle_id: int, label: str, out: tuple[dict[str, Any], dict[str, float], dict[str, float]]) -> None:
    """Extract, validate and load the cycle's sources; stats, seconds and peak RSS go into `out`.

    The load copies each validated chunk while validate checks the next, in one transaction committed
    after the last; its seconds are what it took after validate had finished.
    """
    stages, seconds, rss = out
    with timed(seconds, "extract", rss):
        raws = named(extract, label)(cycle_id)
    with load_beside(lambda handoff: named(load, label)(handoff, cycle_id)) as (handoff, loading):
        with timed(seconds, "validate", rss):
            validated = named(validate, label)(raws, handoff)
        stages["validate"] = validation_stats(validated)
        with timed(seconds, "load", rss):
            stages["load"] = loading.result()


def ingest_under(
    context: dict[str, Any], cycle_id: int, label: str
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Run the ingest in this (child) process as task runs of the parent's flow run; return its stats."""
    from prefect.context import hydrated_context

    out: tuple[dict[str, Any], dict[str, float], dict[str, float]] = ({}, {}, {})
    with hydrated_context(context):
        ingest(cycle_id, label, out)
    return out


def ingest_apart(
    cycle_id: int, label: str, out: tuple[dict[str, Any], dict[str, float], dict[str, float]]
) -> None:
    """Run the ingest in a child process that has exited before this one goes on."""
    from prefect.context import serialize_context
    from prefect.utilities.callables import cloudpickle_wrapped_call

    # The run context holds the flow itself, which only cloudpickle can carry (as Prefect's Dask runner
    # does). glibc and Arrow keep most of what the ingest freed (1M: ~1 GB); an exiting process does not.
    call = cloudpickle_wrapped_call(ingest_under, serialize_context(), cycle_id, label)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = pickle.loads(pool.submit(call).result())
    for mine, theirs in zip(out, parts, strict=True):
        mine.update(theirs)


def shards_elsewhere(shards: int) -> bool:
    """Say whether the shards run in other processes (a work pool or a Dask cluster), not this one."""
    settings = get_runtime().settings
    return shards > 1 and bool(settings.shard_deployment or settings.dask_address)


def run_shards(
    cycle_id: int, day: date, codes: list[str], books: list[str], dry_run: bool, count: int
) -> list[dict[str, Any]]:
    """Run every shard (on a work pool or a Dask cluster when configured) and return their stats."""
    settings = get_runtime().settings
    if settings.shard_deployment:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        run_ids = []
        for shard in shards(count):
            run = run_deployment(
                settings.shard_deployment,
                parameters=shard_parameters(cycle_id, day, codes, books, dry_run, shard),
                timeout=0,
                # A retried parent finds the shard runs it already started instead of starting more.
                idempotency_key=f"renewal-cycle-{cycle_id}-shard-{shard.index}-of-{count}",
            )
            assert isinstance(run, FlowRun)  # the sync call in a sync flow returns the run, not a coroutine
            run_ids.append(run.id)
        wait_for_runs(run_ids, settings.shard_timeout_seconds)
    elif settings.dask_address:
        from prefect_dask.task_runners import DaskTaskRunner

        # DaskTaskRunner subclasses the unparameterised TaskRunner, which mypy cannot match to the flow's.
        runner: Any = DaskTaskRunner(address=settings.dask_address)
        shards_on_task_runner.with_options(task_runner=runner)(
            [shard_parameters(cycle_id, day, codes, books, dry_run, shard) for shard in shards(count)]
        )
    else:
        for shard in shards(count):
            renewal_cycle_shard(**shard_parameters(cycle_id, day, codes, books, dry_run, shard))
    return shard_results(cycle_id, count)


def wait_for_runs(run_ids: list[Any], timeout: float, poll: float = 2.0) -> None:
    """Wait until every flow run is final; raise naming the runs that did not complete."""
    from prefect.client.orchestration import get_client

    pending, failed = set(run_ids), []
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while pending:
            for run_id in sorted(pending, key=str):
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    pending.discard(run_id)
                    if not run.state.is_completed():
                        failed.append(f"{run.name} ({run.state.name})")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} shard run(s) still running after {timeout:.0f}s")
            if pending:
                time.sleep(poll)
    if failed:
        raise RuntimeError(f"shard run(s) did not complete: {', '.join(sorted(failed))}")


def shard_results(cycle_id: int, count: int) -> list[dict[str, Any]]:
    """Return each shard's stats as its flow run recorded them in the audit log (the latest per shard)."""
    a = s.audit_log
    with get_runtime().engine.connect() as conn:
        rows = read_frame(
            conn,
            select(a.c.subject_key, a.c.details)
            .where(a.c.action == SHARD_FINISHED, a.c.cycle_id == cycle_id)
            .order_by(a.c.at),
        )
    latest = dict(zip(rows["subject_key"], rows["details"], strict=True))
    missing = [shard.label for shard in shards(count) if shard.label not in latest]
    if missing:
        raise RuntimeError(f"cycle {cycle_id}: shard(s) {', '.join(missing)} recorded no result")
    return [latest[shard.label] for shard in shards(count)]


def merge_shards(
    parts: list[dict[str, Any]], out: tuple[dict[str, Any], dict[str, float], dict[str, float]]
) -> None:
    """Add the shards' stats to the cycle's: counts summed, seconds and peak RSS the largest shard's."""
    stages, seconds, rss = out
    for stage in CUSTOMER_STAGES:
        stages[stage] = merge_stats(p["stages"][stage] for p in parts if stage in p["stages"])
        seconds[stage] = max(float(p["seconds"].get(stage, 0.0)) for p in parts)
    for key in {k for p in parts for k in p["peak_rss_mb"]}:
        rss[f"shard-{key}"] = max(float(p["peak_rss_mb"].get(key, 0.0)) for p in parts)


@flow(name="renewal-cycle", flow_run_name=_run_name, retries=0)
def renewal_cycle(
    as_of: date | None = None,
    markets: list[str] | None = None,
    dry_run: bool = False,
    playbook: str = ALL_PLAYBOOKS,
    shards: int = 1,
) -> dict[str, Any]:
    """Run one cycle for `as_of` (default: today in the market's zone) and return its summary.

    `playbook` is one playbook id, or "all" for every playbook of config/cycle.yaml in priority order.
    With `shards` > 1 the customers are split by a hash of their key and each shard runs segment to
    dispatch as its own flow run (of `RENEWALS_SHARD_DEPLOYMENT` when set); the summary is the same.
    """
    protect_run(
        {"as_of": as_of, "markets": markets, "dry_run": dry_run, "playbook": playbook, "shards": shards}
    )
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
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
        "shards": shards,
        "status": "completed",
        "stages": stages,
        "seconds": seconds,
        "peak_rss_mb": rss,
    }
    try:
        if shards_elsewhere(shards):
            # This process only waits for the shards from here on: it need not hold the ingest's memory.
            ingest_apart(cycle_id, label, (stages, seconds, rss))
        else:
            ingest(cycle_id, label, (stages, seconds, rss))
        if shards == 1:
            run_customer_stages(cycle_id, day, codes, books, dry_run, label, None, (stages, seconds, rss))
        else:
            with timed(seconds, "shards", rss):
                parts = run_shards(cycle_id, day, codes, books, dry_run, shards)
            merge_shards(parts, (stages, seconds, rss))
    except Exception as exc:
        fail_cycle(cycle_id, base, exc)
        raise
    finally:
        # Staged source rows hold personal data; they never outlive the run.
        discard_staging(cycle_id)
    summary: dict[str, Any] = named(summarise, label)(cycle_id, base)
    return summary
