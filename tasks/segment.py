"""Segment: score and segment every active contract of the cycle's markets."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import STEP
from tasks.domain.contract import Entity
from tasks.domain.segmentation import SegmentationConfig, segment_contracts
from tasks.domain.summary import counts
from tasks.runtime import get_runtime
from tasks.store.repository import marketing_objectors, read_segment_inputs, write_segments


def segment_cycle(
    conn: Connection, cycle_id: int, as_of: date, markets: list[str], config: SegmentationConfig
) -> dict[str, Any]:
    """Compute and store the segment rows of the cycle's open contracts; return counts."""
    inputs = read_segment_inputs(conn, markets)
    contracts = inputs[Entity.CONTRACTS]
    open_contracts = contracts[contracts["status"] == "active"].reset_index(drop=True)
    segments = segment_contracts(
        open_contracts,
        inputs[Entity.CUSTOMERS],
        inputs[Entity.INSTALMENTS],
        inputs[Entity.ACTIVITY],
        as_of,
        config,
    )
    segments["profiling_objection"] = segments["customer_key"].isin(marketing_objectors(conn, markets))
    write_segments(conn, cycle_id, segments)
    return {
        "contracts": len(segments),
        "customers": int(segments["customer_key"].nunique()),
        "by_segment": counts(segments["segment"]),
        "by_risk_band": counts(segments["risk_band"]),
        "by_renewal_window": counts(segments["renewal_window"]),
        "by_dpd_bucket": counts(segments["dpd_bucket"]),
        "inactive": int(segments["inactive"].sum()),
        "model_version": str(segments["model_version"].iloc[0]) if len(segments) else "",
        "profiling_objections": int(segments["profiling_objection"].sum()),
    }


@task(name="segment", **STEP)
def segment(cycle_id: int, as_of: date, markets: list[str]) -> dict[str, Any]:
    """Score and segment the cycle's contracts."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        stats = segment_cycle(conn, cycle_id, as_of, markets, rt.segmentation)
    get_run_logger().info("segmented %s contracts: %s", stats["contracts"], stats["by_segment"])
    return stats
