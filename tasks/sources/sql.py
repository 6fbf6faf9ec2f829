"""SQL connector: any SQLAlchemy URL, with the table and column mapping in YAML."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.sources.raw import RawFrame, SourceError, as_text, check_columns

# A chunk size larger than any table: read it in one piece.
WHOLE = 1 << 62


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


def _label(mapping: SqlMapping, entity: Entity) -> str:
    return f"sql:{mapping.entities[entity].table or entity.value}"


def _renamed(mapping: SqlMapping, entity: Entity, columns: list[str]) -> list[str]:
    reverse = {source: contract for contract, source in mapping.entities[entity].columns.items()}
    return [reverse.get(c, c) for c in columns]


def _failed(label: str, exc: Exception) -> SourceError:
    return SourceError(label, f"query failed: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}")


class SqlSource:
    """An open SQL source: its queries' columns checked up front, then read entity by entity in chunks."""

    def __init__(self, url: str, mapping: SqlMapping) -> None:
        self.mapping = mapping
        self.engine = create_engine(mapping.url or url)

    def _unreachable(self, exc: SQLAlchemyError) -> SourceError:
        return SourceError(
            str(self.engine.url.render_as_string(hide_password=True)), f"cannot connect: {exc}"
        )

    def check(self) -> None:
        """Raise SourceError when a query fails or lacks a required column (fetches no rows)."""
        try:
            with self.engine.connect() as conn:
                for entity in ENTITY_ORDER:
                    label = _label(self.mapping, entity)
                    try:
                        result = conn.execution_options(stream_results=True).execute(
                            text(_query(self.mapping.entities[entity]))
                        )
                        columns = list(result.keys())
                        result.close()
                    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
                        raise _failed(label, exc) from exc
                    check_columns(entity, label, _renamed(self.mapping, entity, columns))
        except SourceError:
            raise
        except SQLAlchemyError as exc:
            raise self._unreachable(exc) from exc

    def chunks(self, entity: Entity, rows: int) -> Iterator[RawFrame]:
        """Yield one entity's rows as raw frames of up to `rows` rows (at least one frame, maybe empty)."""
        label = _label(self.mapping, entity)
        done = 0
        try:
            with self.engine.connect() as conn:
                try:
                    query = text(_query(self.mapping.entities[entity]))
                    # Nullable dtypes keep an integer column's text the same in every chunk (plain numpy
                    # turns the integers of a chunk with a NULL into floats: "7.0").
                    frames: Iterable[pd.DataFrame]
                    if rows >= WHOLE:
                        frames = [pd.read_sql(query, conn, dtype_backend="numpy_nullable")]
                    else:
                        # A server-side cursor, so only one chunk of the result is in memory at a time.
                        streaming = conn.execution_options(
                            stream_results=True, max_row_buffer=min(rows, 100_000)
                        )
                        frames = pd.read_sql(query, streaming, chunksize=rows, dtype_backend="numpy_nullable")
                    for frame in frames:
                        frame.columns = _renamed(self.mapping, entity, [str(c) for c in frame.columns])
                        check_columns(entity, label, list(frame.columns))
                        known = [c for c in CONTRACT[entity].column_names if c in frame.columns]
                        lines = pd.Series(range(done + 1, done + len(frame) + 1), dtype="int64")
                        done += len(frame)
                        yield RawFrame(
                            entity, label, as_text(frame[known]).reset_index(drop=True), lines, "row"
                        )
                except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
                    raise _failed(label, exc) from exc
        except SourceError:
            raise
        except SQLAlchemyError as exc:
            raise self._unreachable(exc) from exc

    def close(self) -> None:
        """Release the source's connections."""
        self.engine.dispose()


def read_sql_source(url: str, mapping: SqlMapping) -> dict[Entity, RawFrame]:
    """Read every entity through its mapping; a failing query stops the whole extract."""
    source = SqlSource(url, mapping)
    try:
        source.check()
        out: dict[Entity, RawFrame] = {}
        for entity in ENTITY_ORDER:
            parts = list(source.chunks(entity, WHOLE))
            frame = (
                pd.concat([p.frame for p in parts], ignore_index=True) if len(parts) > 1 else parts[0].frame
            )
            out[entity] = RawFrame(
                entity, _label(mapping, entity), frame, pd.Series(range(1, len(frame) + 1)), "row"
            )
        return out
    finally:
        source.close()
