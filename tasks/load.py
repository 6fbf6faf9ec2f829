"""Load: bulk-sync canonical frames into the store and record the quarantine."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import IO_RETRIES, STEP
from tasks.domain.contract import Entity
from tasks.runtime import get_runtime
from tasks.sources.validation import ValidationResult
from tasks.store.repository import (
    append_consents,
    audit,
    insert_quarantine,
    sync_customers,
    sync_entity,
    utcnow,
)


def load_validated(
    conn: Connection, result: ValidationResult, cycle_id: int, controller: str
) -> dict[str, Any]:
    """Write all entities and the quarantine in one transaction; return inserted/updated/unchanged counts."""
    now = utcnow()
    stats: dict[str, Any] = {}
    for entity, frame in result.clean.items():
        if entity is Entity.CUSTOMERS:
            sync = sync_customers(conn, frame, now)
        elif entity is Entity.CONSENTS:
            sync = append_consents(conn, frame, controller, now)
        else:
            sync = sync_entity(conn, entity, frame, now)
        stats[entity.value] = {
            "inserted": sync.inserted,
            "updated": sync.updated,
            "unchanged": sync.unchanged,
        }
    stats["quarantine_entries"] = insert_quarantine(conn, result.quarantine, cycle_id, now)
    audit(conn, "source.loaded", cycle_id=cycle_id, details=stats)
    return stats


@task(name="load", **STEP, **IO_RETRIES)
def load(result: ValidationResult, cycle_id: int) -> dict[str, Any]:
    """Sync the validated data into the store."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        stats = load_validated(conn, result, cycle_id, rt.settings.controller)
    get_run_logger().info("loaded %s", stats)
    return stats
