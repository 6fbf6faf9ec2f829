"""File connector: one CSV or Parquet file per entity in a directory."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.sources.raw import RawFrame, SourceError, as_text, check_columns

SUFFIXES = (".csv", ".csv.gz", ".parquet")


def find_entity_file(directory: Path, entity: Entity) -> Path:
    """Return the one file holding `entity` in `directory`."""
    found = [
        directory / f"{entity.value}{s}" for s in SUFFIXES if (directory / f"{entity.value}{s}").exists()
    ]
    if not found:
        expected = " or ".join(f"{entity.value}{s}" for s in SUFFIXES)
        raise SourceError(str(directory), f"no file for {entity.value}: expected {expected}")
    if len(found) > 1:
        raise SourceError(
            str(directory), f"more than one file for {entity.value}: {', '.join(p.name for p in found)}"
        )
    return found[0]


def _csv_lines(text: str, rows: int) -> pd.Series:
    """Return each record's first line number; exact even when quoted fields hold newlines."""
    newlines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if newlines == rows + 1:
        return pd.Series(range(2, rows + 2), dtype="int64")
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    starts, previous_end = [], reader.line_num
    for row in reader:
        if row:
            starts.append(previous_end + 1)
        previous_end = reader.line_num
    return pd.Series(starts[:rows], dtype="int64")


def read_csv_entity(path: Path, entity: Entity) -> RawFrame:
    """Read one entity CSV as text, failing fast on an unreadable file or missing columns."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        text = data.decode("utf-8-sig")
    except (OSError, EOFError) as exc:
        raise SourceError(str(path), f"cannot read file: {exc}") from exc
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(str(path), f"not UTF-8 text (line {line}, byte {exc.start})") from exc
    if not text.strip():
        raise SourceError(str(path), "file is empty (no header row)")
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, na_values=[], skipinitialspace=False
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise SourceError(str(path), f"not a readable CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    check_columns(entity, str(path), list(frame.columns))
    known = [c for c in CONTRACT[entity].column_names if c in frame.columns]
    return RawFrame(
        entity, str(path), as_text(frame[known]).reset_index(drop=True), _csv_lines(text, len(frame))
    )


def read_parquet_entity(path: Path, entity: Entity) -> RawFrame:
    """Read one entity Parquet file as text, failing fast on an unreadable file or missing columns."""
    try:
        import pyarrow.parquet as pq

        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise SourceError(str(path), f"not a readable Parquet file: {exc}") from exc
    check_columns(entity, str(path), schema_names)
    known = [c for c in CONTRACT[entity].column_names if c in schema_names]
    frame = pd.read_parquet(path, columns=known)
    return RawFrame(
        entity, str(path), as_text(frame).reset_index(drop=True), pd.Series(range(1, len(frame) + 1)), "row"
    )


def read_directory(directory: Path) -> dict[Entity, RawFrame]:
    """Read every entity from `directory`; any unusable file stops the whole extract."""
    if not directory.is_dir():
        raise SourceError(str(directory), "source directory does not exist")
    out: dict[Entity, RawFrame] = {}
    for entity in ENTITY_ORDER:
        path = find_entity_file(directory, entity)
        out[entity] = (
            read_parquet_entity(path, entity) if path.suffix == ".parquet" else read_csv_entity(path, entity)
        )
    return out
