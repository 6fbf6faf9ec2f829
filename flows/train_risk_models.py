"""Weekly training: learn the renewal and repayment risk models from the store; promote one if better."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks._prefect import protect_run
from tasks.runtime import get_runtime
from tasks.train_models import KINDS, read_history, resolve_markets, train_model


def _run_name() -> str:
    params = flow_run.parameters
    markets = ",".join(sorted(str(m).strip().upper() for m in params.get("markets") or [])) or "all"
    return f"train-risk-models {markets} {params.get('as_of') or 'today'}"


@flow(name="train-risk-models", flow_run_name=_run_name, retries=0)
def train_risk_models(
    as_of: date | None = None, markets: list[str] | None = None, promote: bool = True
) -> dict[str, Any]:
    """Train both risk models on history up to `as_of` (default today, UTC); promote the better ones."""
    # Each model is stored as a candidate; with `promote` it becomes active only when its validation ROC
    # AUC beats the active model's on the same rows (renewals with none active: the scorecard's).
    protect_run({"as_of": as_of, "markets": markets, "promote": promote})
    day = as_of or datetime.now(UTC).date()
    codes = resolve_markets(markets, sorted(get_runtime().markets))
    history = read_history(codes)
    models: dict[str, Any] = {
        kind: train_model.with_options(task_run_name=f"train {kind} model {day.isoformat()}")(
            kind, history, day, codes, promote
        )
        for kind in KINDS
    }
    return {"as_of": day.isoformat(), "markets": codes, "promote": promote, **models}
