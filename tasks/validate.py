"""Validate: canonical frames out, bad rows quarantined with file, line, field and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks._prefect import STEP
from tasks.runtime import get_runtime
from tasks.sources.staging import StagedSource, discard_raw
from tasks.sources.validation import StagedValidation, ValidationResult, validate_staged
from tasks.store.repository import known_keys


@task(name="validate", **STEP)
def validate(staged: StagedSource) -> StagedValidation:
    """Validate every entity chunk by chunk; children of quarantined parents are quarantined too."""
    rt = get_runtime()
    out = Path(staged.directory) / "validated"
    with rt.engine.connect() as conn:
        result = validate_staged(
            staged.entities, rt.markets, out, known_keys=lambda entity: known_keys(conn, entity)
        )
    # The raw chunks are not needed any more; the validated ones wait for the load.
    discard_raw(staged)
    get_run_logger().info(
        "validated: %s rows read, %s rows quarantined (%s)",
        sum(result.rows_read.values()),
        sum(result.quarantined_rows.values()),
        ", ".join(f"{k}={v}" for k, v in sorted(result.problems_by_reason.items())) or "none",
    )
    return result


def validation_stats(result: StagedValidation | ValidationResult) -> dict[str, Any]:
    """Return the counts the summary shows for the validate stage."""
    valid = (
        result.rows_valid
        if isinstance(result, StagedValidation)
        else {e: len(f) for e, f in result.clean.items()}
    )
    return {
        "rows_read": {e.value: n for e, n in result.rows_read.items()},
        "rows_valid": {e.value: n for e, n in valid.items()},
        "rows_quarantined": result.quarantined_rows,
        "problems_by_reason": result.problems_by_reason,
    }
