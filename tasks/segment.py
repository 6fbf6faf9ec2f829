"""Segment: score and segment every active contract of the cycle's markets."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import STEP
from tasks.domain.contract import Entity
from tasks.domain.features import renewal_scoring_frame
from tasks.domain.segmentation import (
    OPEN,
    SCORECARD_VERSION,
    ModelRisk,
    Scorecard,
    SegmentationConfig,
    activity_months,
    scorecard_instalments,
    segment_contracts,
)
from tasks.domain.shards import Shard
from tasks.domain.summary import counts
from tasks.models.explain import scorecard_factors_in_words, top_factors
from tasks.models.training import TrainedModel
from tasks.runtime import get_runtime
from tasks.store.repository import marketing_objectors, read_segment_history, write_segments
from tasks.train_models import active_model


def scorecard_reasons(risk_factors: pd.Series, card: Scorecard) -> pd.Series:
    """Return the scorecard's factors of each row in plain words."""
    # A handful of distinct factor strings cover millions of rows: phrase each once.
    words = {f: scorecard_factors_in_words(f, card) for f in risk_factors.drop_duplicates()}
    return risk_factors.map(words)


def scored_segments(
    conn: Connection,
    as_of: date,
    markets: list[str],
    config: SegmentationConfig,
    model: TrainedModel | None,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """Return the segment rows of the open contracts (of one shard), scored by `model` if given."""
    # The scorecard looks only at the open contracts' own instalments; a model at the whole history.
    scoring = model is not None
    window = activity_months(as_of, config, scoring)
    due = None if scoring else scorecard_instalments(as_of)
    inputs = read_segment_history(conn, markets, window, shard, open_only=not scoring, due_between=due)
    contracts = inputs[Entity.CONTRACTS]
    open_contracts = contracts[contracts["status"] == OPEN].reset_index(drop=True)
    history = (contracts, inputs[Entity.CUSTOMERS], inputs[Entity.INSTALMENTS], inputs[Entity.ACTIVITY])
    risk = None
    if model is not None:
        frame = renewal_scoring_frame(open_contracts, *history, as_of)
        risk = ModelRisk(
            model.version,
            frame["contract_key"],
            pd.Series(model.predict_proba(frame)),
            top_factors(model, frame),
        )
    return segment_contracts(open_contracts, *history[1:], as_of, config, risk)


def segment_cycle(
    conn: Connection,
    cycle_id: int,
    as_of: date,
    markets: list[str],
    config: SegmentationConfig,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Compute and store the segment rows of the cycle's open contracts (of one shard); return counts."""
    model = active_model(conn, "renewal")
    # A function of its own, so the history is freed before the rows are written.
    segments = scored_segments(conn, as_of, markets, config, model, shard)
    by_card = segments["risk_reasons"].isna()
    segments.loc[by_card, "risk_reasons"] = scorecard_reasons(
        segments.loc[by_card, "risk_factors"], config.scorecard
    )
    segments["profiling_objection"] = segments["customer_key"].isin(marketing_objectors(conn, markets, shard))
    write_segments(conn, cycle_id, segments)
    return {
        "contracts": len(segments),
        "customers": int(segments["customer_key"].nunique()),
        "by_segment": counts(segments["segment"]),
        "by_risk_band": counts(segments["risk_band"]),
        "by_renewal_window": counts(segments["renewal_window"]),
        "by_dpd_bucket": counts(segments["dpd_bucket"]),
        "inactive": int(segments["inactive"].sum()),
        "model_version": model.version if model is not None else SCORECARD_VERSION,
        "profiling_objections": int(segments["profiling_objection"].sum()),
    }


@task(name="segment", **STEP)
def segment(cycle_id: int, as_of: date, markets: list[str], shard: Shard | None = None) -> dict[str, Any]:
    """Score and segment the cycle's contracts."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        stats = segment_cycle(conn, cycle_id, as_of, markets, rt.segmentation, shard)
    get_run_logger().info(
        "segmented %s contracts with %s: %s", stats["contracts"], stats["model_version"], stats["by_segment"]
    )
    return stats
