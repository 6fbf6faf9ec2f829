"""Extract: read every entity from the configured source (files or SQL) as raw text."""

from __future__ import annotations

from prefect import get_run_logger, task

from config.settings import Settings, SourceKind
from tasks._prefect import IO_RETRIES, STEP
from tasks.domain.contract import Entity
from tasks.runtime import get_runtime
from tasks.sources.files import read_directory
from tasks.sources.raw import RawFrame, SourceError
from tasks.sources.sql import load_mapping, read_sql_source


def extract_sources(settings: Settings) -> dict[Entity, RawFrame]:
    """Read all entities from the source named in settings; any unusable source raises SourceError."""
    if settings.source_kind is SourceKind.FILES:
        return read_directory(settings.resolved_source_dir)
    if settings.source_mapping is None:
        raise SourceError("settings", "source_kind=sql needs RENEWALS_SOURCE_MAPPING (a YAML mapping file)")
    return read_sql_source(settings.source_url, load_mapping(settings.source_mapping))


@task(name="extract", **STEP, **IO_RETRIES)
def extract() -> dict[Entity, RawFrame]:
    """Read the CRM and billing sources."""
    raws = extract_sources(get_runtime().settings)
    get_run_logger().info("extracted %s", ", ".join(f"{e.value}={len(r.frame)}" for e, r in raws.items()))
    return raws
