"""SQL connector: any SQLAlchemy URL, with the table and column mapping in YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.sources.raw import RawFrame, SourceError, as_text, check_columns


@dataclass(frozen=True)
class EntityMapping:
    """Where one entity lives: a table (optionally with a WHERE) or a full query, and column renames."""

    __pydantic_config__ = {"extra": "forbid"}

    table: str | None = None
    query: str | None = None
    where: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        if self.query is not None and self.where is not None:
            raise ValueError("where only applies to table; put the condition in the query")


@dataclass(frozen=True)
class SqlMapping:
    """The mapping file: a URL (optional, else the settings' source_url) and one entry per entity."""

    __pydantic_config__ = {"extra": "forbid"}

    entities: dict[Entity, EntityMapping]
    url: str | None = None

    def __post_init__(self) -> None:
        missing = [e.value for e in ENTITY_ORDER if e not in self.entities]
        if missing:
            raise ValueError(f"no mapping for {', '.join(missing)}")
        for entity, mapping in self.entities.items():
            unknown = set(mapping.columns) - set(CONTRACT[entity].column_names)
            if unknown:
                raise ValueError(
                    f"{entity.value}: unknown contract column(s) {sorted(unknown)}; "
                    "map contract_name: source_name"
                )


def load_mapping(path: Path) -> SqlMapping:
    """Read and validate a SQL mapping file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return TypeAdapter(SqlMapping).validate_python(data)
    except OSError as exc:
        raise SourceError(str(path), f"cannot read mapping: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise SourceError(str(path), f"invalid mapping: {exc}") from exc


def _query(mapping: EntityMapping) -> str:
    if mapping.query is not None:
        return mapping.query
    sql = f"SELECT * FROM {mapping.table}"
    return f"{sql} WHERE {mapping.where}" if mapping.where else sql


def read_sql_source(url: str, mapping: SqlMapping) -> dict[Entity, RawFrame]:
    """Read every entity through its mapping; a failing query stops the whole extract."""
    engine = create_engine(mapping.url or url)
    out: dict[Entity, RawFrame] = {}
    try:
        with engine.connect() as conn:
            for entity in ENTITY_ORDER:
                entry = mapping.entities[entity]
                label = f"sql:{entry.table or entity.value}"
                try:
                    frame = pd.read_sql(text(_query(entry)), conn)
                except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
                    raise SourceError(
                        label, f"query failed: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}"
                    ) from exc
                reverse = {source: contract for contract, source in entry.columns.items()}
                frame = frame.rename(columns=reverse)
                check_columns(entity, label, list(frame.columns))
                known = [c for c in CONTRACT[entity].column_names if c in frame.columns]
                out[entity] = RawFrame(
                    entity, label, as_text(frame[known]), pd.Series(range(1, len(frame) + 1)), "row"
                )
    except SQLAlchemyError as exc:
        raise SourceError(
            str(engine.url.render_as_string(hide_password=True)), f"cannot connect: {exc}"
        ) from exc
    finally:
        engine.dispose()
    return out
