"""Grant rewards after a billing sync: claw back, expire, grant within budget, fulfil, notify, summarise."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks._prefect import protect_run
from tasks.dispatch import dispatch
from tasks.gate import gate
from tasks.rewards import (
    REWARDS_PLAYBOOK,
    adopt,
    claw_back,
    close_rewards,
    expire,
    fulfil,
    grant,
    open_rewards,
    render_rewards,
    resolve_markets,
)


def _run_name() -> str:
    params = flow_run.parameters
    markets = ",".join(params.get("markets") or ["all"])
    dry = " dry-run" if params.get("dry_run") else ""
    return f"grant-rewards {markets} {params.get('as_of') or 'today'}{dry}"


@flow(name="grant-rewards", flow_run_name=_run_name, retries=0)
def grant_rewards(
    as_of: date | None = None, markets: list[str] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Grant the rewards earned by `as_of` (default: today, UTC), tell the customers, return the summary."""
    protect_run({"as_of": as_of, "markets": markets, "dry_run": dry_run})
    codes = resolve_markets(markets)
    day = as_of or datetime.now(UTC).date()
    cycle_id = open_rewards(day, codes, dry_run)
    stages: dict[str, Any] = {}
    base: dict[str, Any] = {
        "cycle_id": cycle_id,
        "as_of": day.isoformat(),
        "markets": codes,
        "playbook": REWARDS_PLAYBOOK,
        "dry_run": dry_run,
        "status": "completed",
        "stages": stages,
    }
    try:
        # Clawbacks first, so a streak's reversed payments are free again before new streaks are counted.
        stages["claw-back"] = claw_back(day, codes, dry_run)
        stages["expire"] = expire(day, codes, dry_run)
        stages["grant"] = grant(cycle_id, day, codes, dry_run)
        if not dry_run:
            stages["fulfil"] = fulfil(codes)
            stages["adopted"] = adopt(cycle_id, codes)
            stages["consent-gate"] = gate(cycle_id, codes, REWARDS_PLAYBOOK)
            stages["render"] = render_rewards(cycle_id, codes)
            stages["dispatch"] = dispatch(cycle_id, day)
    except Exception as exc:
        close_rewards(cycle_id, {**base, "status": "failed", "error": str(exc)[:1000]})
        raise
    return close_rewards(cycle_id, base)
