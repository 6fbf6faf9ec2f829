"""Apply retention periods: purge old message content and stale contact details, keep legal records tagged."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.retention import purge_task


@flow(name="retention-purge")
def retention_purge(as_of: str | None = None) -> dict[str, Any]:
    """Purge what is past its retention as of `as_of` (default now, UTC)."""
    protect_run({"as_of": as_of})
    return purge_task(as_of)
