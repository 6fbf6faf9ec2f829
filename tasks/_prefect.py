"""Shared Prefect task options: no caching or persisted results (they would hold personal data)."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from config.loader import ConfigError
from config.logging import install_pii_filter
from tasks.domain.pii import assert_no_pii
from tasks.sources.raw import SourceError

# Task results can carry customer rows; Prefect must never persist or cache them.
STEP: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    SourceError,
    ConfigError,
    ValueError,
    KeyError,
    TypeError,
)


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry an I/O step only when its error could pass (a bad file or config never does)."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}


def protect_run(parameters: dict[str, Any]) -> None:
    """Refuse personal data in flow parameters and make sure every log handler masks it (EU-12)."""
    assert_no_pii(parameters)
    install_pii_filter()
