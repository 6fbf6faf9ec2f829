"""Extract: read every entity from the configured source (files or SQL) as raw text, staged in chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger, task

from config.settings import Settings, SourceKind
from tasks._prefect import IO_RETRIES, STEP
from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.runtime import get_runtime
from tasks.sources.files import check_directory, iter_entity_file, read_directory
from tasks.sources.overlap import prefetch
from tasks.sources.raw import RawFrame, SourceError
from tasks.sources.sql import SqlMapping, SqlSource, load_mapping, read_sql_source
from tasks.sources.staging import RawWriter, StagedSource, discard, entity_order, staging_dir


def extract_sources(settings: Settings) -> dict[Entity, RawFrame]:
    """Read all entities from the source named in settings; any unusable source raises SourceError."""
    if settings.source_kind is SourceKind.FILES:
        return read_directory(settings.resolved_source_dir)
    return read_sql_source(settings.source_url, _mapping(settings))


def _mapping(settings: Settings) -> SqlMapping:
    if settings.source_mapping is None:
        raise SourceError("settings", "source_kind=sql needs RENEWALS_SOURCE_MAPPING (a YAML mapping file)")
    return load_mapping(settings.source_mapping)


def _stage(directory: Path, chunks: dict[Entity, Iterator[RawFrame]]) -> StagedSource:
    staged = []
    for entity, parts in chunks.items():
        writer = RawWriter(directory, entity)
        try:
            for raw in parts:
                writer.add(raw)
            staged.append(writer.finish())
        finally:
            writer.close()
    return StagedSource(str(directory), entity_order(staged))


def stage_sources(settings: Settings, directory: Path) -> StagedSource:
    """Check every entity's columns, then stage all rows in chunks under `directory`.

    A missing file or column stops the run before any row is read; anything else that makes a
    source unusable stops it before anything is loaded, as reading the source whole did.
    """
    discard(directory)
    rows = settings.ingest_chunk_rows
    try:
        if settings.source_kind is SourceKind.FILES:
            paths = check_directory(settings.resolved_source_dir)
            # Files are parsed one chunk ahead in a thread; an SQL source keeps its connection to one thread.
            return _stage(directory, {e: prefetch(iter_entity_file(p, e, rows)) for e, p in paths.items()})
        source = SqlSource(settings.source_url, _mapping(settings))
        try:
            source.check()
            return _stage(directory, {e: source.chunks(e, rows) for e in ENTITY_ORDER})
        finally:
            source.close()
    except BaseException:
        discard(directory)
        raise


@task(name="extract", **STEP, **IO_RETRIES)
def extract(cycle_id: int) -> StagedSource:
    """Read the CRM and billing sources into the cycle's staging directory."""
    settings = get_runtime().settings
    staged = stage_sources(settings, staging_dir(settings.home, cycle_id))
    get_run_logger().info("extracted %s", ", ".join(f"{e}={n}" for e, n in staged.rows.items()))
    return staged


def discard_staging(cycle_id: int) -> None:
    """Delete the cycle's staged rows (they hold personal data and are only needed until the load)."""
    discard(staging_dir(get_runtime().settings.home, cycle_id))
