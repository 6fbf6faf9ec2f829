"""Load: bulk-sync canonical frames into the store and record the quarantine."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import IO_RETRIES, STEP
from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.dsr import suppressed_addresses
from tasks.runtime import get_runtime
from tasks.sources.staging import discard, read_clean, read_clean_arrow, read_quarantine
from tasks.sources.validation import EntityChunks, Handoff, StagedValidation, ValidationResult
from tasks.store.bulk import SyncStats
from tasks.store.ingest import (
    ConsentAppend,
    consent_rows,
    crm_consent_arrow,
    customer_rows,
    sync_customer_chunks,
    sync_entity_chunks,
)
from tasks.store.repository import (
    ENTITY_TABLES,
    append_consents,
    audit,
    insert_quarantine,
    sync_customers,
    sync_entity,
    utcnow,
)
from tasks.store.statistics import refresh_statistics

T = TypeVar("T")


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
            stats["suppressed_addresses_dropped"] = _dropped(frame, allowed)
            sync = sync_customers(conn, allowed, now)
        elif entity is Entity.CONSENTS:
            sync = append_consents(conn, frame, controller, now)
        else:
            sync = sync_entity(conn, entity, frame, now)
        stats[entity.value] = _counts(sync)
    stats["quarantine_entries"] = insert_quarantine(conn, result.quarantine, cycle_id, now)
    audit(conn, "source.loaded", cycle_id=cycle_id, details=stats)
    return stats


def _dropped(frame: Any, allowed: Any) -> int:
    return int(
        (frame["email"].notna() & allowed["email"].isna()).sum()
        + (frame["phone"].notna() & allowed["phone"].isna()).sum()
    )


def _counts(sync: SyncStats) -> dict[str, int]:
    return {"inserted": sync.inserted, "updated": sync.updated, "unchanged": sync.unchanged}


def load_staged(
    conn: Connection, validated: StagedValidation | Handoff, cycle_id: int, controller: str, hash_key: bytes
) -> dict[str, Any]:
    """Write the staged chunks and quarantines in one transaction, as `load_validated` writes frames.

    Keys are unique across an entity's chunks (validation quarantined repeats), so syncing chunk by
    chunk gives the same rows and counts; consents are compared with the store as it was before.
    From a handoff, contracts, instalments and activity are written chunk by chunk as validate writes
    them; nothing is committed before the validation has finished.
    """
    handoff = validated if isinstance(validated, Handoff) else Handoff.of(validated)
    now = utcnow()
    recorded_at = pa.scalar(now, pa.timestamp("us", "UTC"))
    stats: dict[str, Any] = {}
    for chunks in handoff.entities():
        entity = chunks.entity
        if entity is Entity.CUSTOMERS:
            # Every customer chunk first: the suppressed addresses are counted over all of them.
            paths = chunks.all()
            # EU-07: an address suppressed after an erasure must not come back with a CRM re-import.
            stats["suppressed_addresses_dropped"] = sum(
                _dropped(f, suppressed_addresses(conn, f, hash_key))
                for f in (read_clean(p, columns=["email", "phone"]) for p in paths)
            )

            def customers(i: int, columns: list[str] | None, paths: tuple[str, ...] = paths) -> pd.DataFrame:
                frame = read_clean(paths[i], columns=columns)
                return frame if columns else customer_rows(suppressed_addresses(conn, frame, hash_key))

            sync = sync_customer_chunks(conn, len(paths), customers, now)
        elif entity is Entity.CONSENTS:
            append = ConsentAppend(conn, now)
            # Whole: held-back rows are put back in file order, which the consent ids keep.
            paths = chunks.all()

            def consents(i: int, _: list[str] | None, paths: tuple[str, ...] = paths) -> pd.DataFrame:
                return consent_rows(read_clean(paths[i]), controller)

            def arrow_consents(i: int, paths: tuple[str, ...] = paths) -> pa.Table:
                return crm_consent_arrow(read_clean_arrow(paths[i]), controller, recorded_at)

            append.add_chunks(len(paths), consents, arrow_consents)
            sync = append.finish()
        else:

            def rows(i: int, columns: list[str] | None, chunks: EntityChunks = chunks) -> pd.DataFrame:
                return read_clean(chunks[i], columns=columns)

            def arrow_rows(i: int, chunks: EntityChunks = chunks) -> pa.Table:
                return read_clean_arrow(chunks[i])

            # Chunk by chunk as validate writes them.
            sync = sync_entity_chunks(conn, entity, chunks.indices(), rows, now, arrow_rows)
        stats[entity.value] = _counts(sync)
    result = handoff.result()
    stats["quarantine_entries"] = sum(
        insert_quarantine(conn, read_quarantine(result.quarantine[e]), cycle_id, now)
        for e in ENTITY_ORDER
        if e in result.quarantine
    )
    audit(conn, "source.loaded", cycle_id=cycle_id, details=stats)
    return stats


@contextmanager
def load_beside(write: Callable[[Handoff], T]) -> Iterator[tuple[Handoff, Future[T]]]:
    """Run `write` in a thread on a handoff the body fills as it validates; a body that fails fails it.

    PostgreSQL's COPY and index builds are about three quarters of a load's CPU (100k customers:
    16.7 s of 22 s), and they run on the other core while this one validates the next entity.
    """
    handoff = Handoff()
    with ThreadPoolExecutor(1, thread_name_prefix="load") as beside:
        # The copied context carries Prefect's run context: a task called there is a run of this flow run.
        writing = beside.submit(contextvars.copy_context().run, write, handoff)
        try:
            yield handoff, writing
        except BaseException:
            handoff.fail()
            raise


@task(name="load", **STEP, **IO_RETRIES)
def load(validated: StagedValidation | Handoff, cycle_id: int) -> dict[str, Any]:
    """Sync the validated data into the store (from a handoff, entity by entity as validate finishes them)."""
    rt = get_runtime()
    handoff = validated if isinstance(validated, Handoff) else Handoff.of(validated)
    with rt.engine.begin() as conn:
        stats = load_staged(
            conn,
            handoff,
            cycle_id,
            rt.settings.controller,
            rt.settings.pii_hash_key.get_secret_value().encode(),
        )
    # Committed: the staged rows are not needed any more.
    discard(handoff.result().directory)
    # Segment and every shard read these next; without statistics PostgreSQL takes a just-loaded
    # table for nearly empty (a 5k-customer shard's history read took 20 s instead of 0.3 s).
    with rt.engine.connect() as conn:
        refresh_statistics(conn, [table.name for table in ENTITY_TABLES.values()])
    get_run_logger().info("loaded %s", stats)
    return stats
