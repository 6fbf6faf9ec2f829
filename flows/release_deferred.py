"""Hourly: send deferred messages whose allowed contact slot has come, after a fresh consent check."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.cycle import open_release, summarise
from tasks.dispatch import dispatch
from tasks.gate import release
from tasks.render import render
from tasks.runtime import get_runtime
from tasks.store.repository import utcnow


@flow(name="release-deferred")
def release_deferred(markets: list[str] | None = None) -> dict[str, Any]:
    """Release, render and send every deferred message that is due now (all playbooks)."""
    protect_run({"markets": markets})
    now = utcnow()
    cycle_id = open_release(now.date(), markets)
    stages: dict[str, Any] = {"consent-gate": release(cycle_id, markets)}
    stages["render"] = render(cycle_id, now.date())
    stages["dispatch"] = dispatch(cycle_id, now.date())
    base = {
        "cycle_id": cycle_id,
        "as_of": now.date().isoformat(),
        "markets": sorted({m.strip().upper() for m in markets}) if markets else sorted(get_runtime().markets),
        "playbook": "(deferred release)",
        "dry_run": False,
        "status": "completed",
        "stages": stages,
        "seconds": {},
    }
    return summarise(cycle_id, base)
