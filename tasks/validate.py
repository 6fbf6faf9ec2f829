"""Validate: canonical frames out, bad rows quarantined with file, line, field and reason."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks._prefect import STEP
from tasks.domain.contract import Entity
from tasks.runtime import get_runtime
from tasks.sources.raw import RawFrame
from tasks.sources.validation import ValidationResult, validate_all
from tasks.store.repository import known_keys


@task(name="validate", **STEP)
def validate(raws: dict[Entity, RawFrame]) -> ValidationResult:
    """Validate every entity; children of quarantined parents are quarantined too."""
    rt = get_runtime()
    with rt.engine.connect() as conn:
        result = validate_all(raws, rt.markets, known_keys=lambda entity: known_keys(conn, entity))
    get_run_logger().info(
        "validated: %s rows read, %s rows quarantined (%s)",
        sum(result.rows_read.values()),
        sum(result.quarantined_rows.values()),
        ", ".join(f"{k}={v}" for k, v in sorted(result.problems_by_reason.items())) or "none",
    )
    return result


def validation_stats(result: ValidationResult) -> dict[str, Any]:
    """Return the counts the summary shows for the validate stage."""
    return {
        "rows_read": {e.value: n for e, n in result.rows_read.items()},
        "rows_valid": {e.value: len(f) for e, f in result.clean.items()},
        "rows_quarantined": result.quarantined_rows,
        "problems_by_reason": result.problems_by_reason,
    }
