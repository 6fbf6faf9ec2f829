"""Validate: canonical frames out, bad rows quarantined with file, line, field and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from tasks._prefect import STEP
from tasks.domain.contract import Entity
from tasks.runtime import get_runtime
from tasks.sources.staging import StagedSource, discard_raw
from tasks.sources.validation import Handoff, StagedValidation, ValidationResult, validate_staged
from tasks.store.repository import known_keys


@task(name="validate", **STEP)
def validate(staged: StagedSource, handoff: Handoff | None = None) -> StagedValidation:
    """Validate every entity chunk by chunk into `handoff`; children of quarantined parents go too."""
    rt = get_runtime()
    out = Path(staged.directory) / "validated"

    def known(entity: Entity) -> pd.Index:
        # A connection of its own that ends at once: an open read would hold the load's DDL back.
        with rt.engine.connect() as conn:
            return known_keys(conn, entity)

    result = validate_staged(staged.entities, rt.markets, out, known_keys=known, handoff=handoff)
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
