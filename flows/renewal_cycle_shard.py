"""One shard of a renewal cycle: segment to dispatch for the customers whose key hashes to the shard."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, task
from prefect.futures import wait
from prefect.runtime import flow_run

from flows.stages import peak_rss_mb, release_memory, run_customer_stages, use_system_allocator
from tasks._prefect import STEP, protect_run
from tasks.domain.shards import Shard
from tasks.runtime import get_runtime
from tasks.store.repository import audit

SHARD_FINISHED = "shard.finished"


def _run_name() -> str:
    params = flow_run.parameters
    markets = ",".join(params.get("markets") or []) or "all"
    return (
        f"renewal-cycle-shard {markets} {params.get('as_of')} "
        f"{int(params.get('shard_index', 0)) + 1}/{params.get('shard_count')}"
    )


def run_shard(
    cycle_id: int,
    as_of: date,
    markets: list[str],
    playbook_ids: list[str],
    dry_run: bool,
    shard_index: int,
    shard_count: int,
) -> dict[str, Any]:
    """Run the per-customer stages of an open cycle for one shard; record its stats in the audit log."""
    use_system_allocator()
    shard = Shard(shard_index, shard_count)
    label = f"{','.join(markets)} {as_of.isoformat()} {','.join(playbook_ids)} shard {shard.label}"
    result: dict[str, Any] = {"stages": {}, "seconds": {}, "peak_rss_mb": {}}
    run_customer_stages(
        cycle_id,
        as_of,
        markets,
        playbook_ids,
        dry_run,
        label,
        shard,
        (result["stages"], result["seconds"], result["peak_rss_mb"]),
    )
    result["peak_rss_mb"]["shard"] = round(peak_rss_mb(), 1)
    # The parent may be on another machine: the store, not a Prefect result, carries the counts back.
    with get_runtime().engine.begin() as conn:
        audit(
            conn,
            SHARD_FINISHED,
            cycle_id=cycle_id,
            subject_type="shard",
            subject_key=shard.label,
            details=result,
        )
    return result


@flow(name="renewal-cycle-shard", flow_run_name=_run_name, retries=0)
def renewal_cycle_shard(
    cycle_id: int,
    as_of: date,
    markets: list[str],
    playbook_ids: list[str],
    dry_run: bool,
    shard_index: int,
    shard_count: int,
) -> dict[str, Any]:
    """Run the per-customer stages of an open cycle for one shard; its stats go to the audit log."""
    params: dict[str, Any] = {
        "cycle_id": cycle_id,
        "as_of": as_of,
        "markets": markets,
        "playbook_ids": playbook_ids,
        "dry_run": dry_run,
        "shard_index": shard_index,
        "shard_count": shard_count,
    }
    protect_run(params)
    return run_shard(**params)


@task(name="shard", task_run_name="shard {params[shard_index]} of {params[shard_count]}", **STEP)
def shard_task(params: dict[str, Any]) -> None:
    """Run one shard as a task, on whatever task runner the calling flow has (Dask for a cluster)."""
    run_shard(**params)
    # A Dask worker outlives its shard and waits beside the parent's summary on the same machine.
    release_memory()


@flow(name="renewal-cycle-shards-on-dask", retries=0)
def shards_on_task_runner(shard_params: list[dict[str, Any]]) -> None:
    """Submit every shard to this flow's task runner and wait for all of them."""
    futures = [shard_task.submit(params) for params in shard_params]
    wait(futures)
    for future in futures:
        future.result()
