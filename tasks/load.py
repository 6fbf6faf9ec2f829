"""Load: bulk-sync canonical frames into the store and record the quarantine."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import IO_RETRIES, STEP
from tasks.domain.contract import Entity
from tasks.dsr import suppressed_addresses
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
    conn: Connection, result: ValidationResult, cycle_id: int, controller: str, hash_key: bytes
) -> dict[str, Any]:
    """Write all entities and the quarantine in one transaction; return inserted/updated/unchanged counts."""
    now = utcnow()
    stats: dict[str, Any] = {}
    for entity, frame in result.clean.items():
        if entity is Entity.CUSTOMERS:
            # EU-07: an address suppressed after an erasure must not come back with a CRM re-import.
            allowed = suppressed_addresses(conn, frame, hash_key)
            stats["suppressed_addresses_dropped"] = int(
                (frame["email"].notna() & allowed["email"].isna()).sum()
                + (frame["phone"].notna() & allowed["phone"].isna()).sum()
            )
            sync = sync_customers(conn, allowed, now)
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
        stats = load_validated(
            conn,
            result,
            cycle_id,
            rt.settings.controller,
            rt.settings.pii_hash_key.get_secret_value().encode(),
        )
    get_run_logger().info("loaded %s", stats)
    return stats
