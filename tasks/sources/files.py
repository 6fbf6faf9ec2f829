"""File connector: one CSV or Parquet file per entity in a directory, read whole or in chunks."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.sources.raw import RawFrame, SourceError, as_text, check_columns

SUFFIXES = (".csv", ".csv.gz", ".parquet")
# A chunk size larger than any file: read it in one piece.
WHOLE = 1 << 62
_BLOCK = 16 << 20
_BOM = b"\xef\xbb\xbf"
_CSV: dict[str, Any] = {"dtype": str, "keep_default_na": False, "na_values": [], "skipinitialspace": False}
# Records this short are checked one by one for being blank (spaces only); longer ones never are.
_SHORT_RECORD = 16


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


@dataclass(frozen=True)
class _Piece:
    """Whole CSV records cut from a file: their bytes, byte offset, first line and each record's line."""

    data: bytes
    offset: int
    first_line: int
    lines: np.ndarray


class _RecordCutter:
    """Cut a CSV byte stream into pieces of whole records.

    Fast path: a newline ends a record when the quotes before it pair up, found with numpy over
    whole blocks; blank lines are no records, as in pandas. That pairing is exact unless a quote
    sits inside an unquoted field (pandas reads it as a literal character), so every quote is
    checked to open or close a field; after the first one that does neither, the rest of the file
    is cut by the csv module record by record, which is slower but exact.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buffer = b""
        self.offset = 0
        self.line = 1
        self.eof = False
        self.exact = True
        self.scanned = 0
        self.parity = 0
        self.record_start = 0
        self.starts = np.empty(0, dtype=np.int64)
        self.stops = np.empty(0, dtype=np.int64)
        self._rows: Iterator[tuple[int, bool]] | None = None
        self._carry: tuple[int, bool] | None = None
        self._pending: list[bytes] = []
        self._emitted = 0

    def _read(self) -> bool:
        block = self.stream.read(_BLOCK)
        if not self.offset and not self.buffer and block.startswith(_BOM):
            block = block[len(_BOM) :]
        if not block:
            self.eof = True
            return False
        self.buffer += block
        return True

    def _records(self, ends: np.ndarray, closed: bool = True) -> None:
        starts = np.concatenate(([self.record_start], ends[:-1] + 1)).astype(np.int64)
        lengths = ends - starts
        blank = lengths == 0
        for i in np.flatnonzero((lengths > 0) & (lengths <= _SHORT_RECORD)).tolist():
            blank[i] = not self.buffer[starts[i] : ends[i]].strip(b" \t\r")
        self.starts = np.concatenate((self.starts, starts[~blank]))
        self.stops = np.concatenate((self.stops, ends[~blank] + (1 if closed else 0)))
        self.record_start = int(ends[-1]) + (1 if closed else 0)

    def _scan(self) -> None:
        data = np.frombuffer(self.buffer, dtype=np.uint8)
        view = data[self.scanned :]
        newlines = np.flatnonzero(view == 10) + self.scanned
        quotes = np.flatnonzero(view == 34) + self.scanned
        if len(quotes) and not self._quotes_pair_up(data, quotes):
            self.exact = False
            return
        ends = newlines[(self.parity + np.searchsorted(quotes, newlines)) % 2 == 0]
        self.parity = (self.parity + len(quotes)) % 2
        self.scanned = len(self.buffer)
        if len(ends):
            self._records(ends.astype(np.int64))

    def _quotes_pair_up(self, data: np.ndarray, quotes: np.ndarray) -> bool:
        """Return whether every quote opens a field, closes one, or is half of an escaped pair."""
        opening = (self.parity + np.arange(len(quotes))) % 2 == 0
        before = np.where(quotes > 0, data[np.maximum(quotes - 1, 0)], 10)
        after = np.where(quotes + 1 < len(data), data[np.minimum(quotes + 1, len(data) - 1)], 10)
        opens = np.isin(before, (44, 10, 34))
        closes = np.isin(after, (44, 10, 13, 34))
        return bool(np.all(np.where(opening, opens, closes)))

    def take(self, rows: int) -> _Piece | None:
        """Return the next `rows` records (fewer at the end of the stream), or None when none are left."""
        while self.exact and len(self.starts) < rows and not self.eof:
            if self._read():
                self._scan()
            elif self.record_start < len(self.buffer):
                # The last record has no newline after it.
                self._records(np.array([len(self.buffer)], dtype=np.int64), closed=False)
        if not self.exact:
            return self._take_exactly(rows)
        if not len(self.starts):
            return None
        count = min(rows, len(self.starts))
        stop = int(self.stops[count - 1]) if count < len(self.starts) or not self.eof else len(self.buffer)
        newline_at = np.flatnonzero(np.frombuffer(self.buffer, dtype=np.uint8)[:stop] == 10)
        lines = self.line + np.searchsorted(newline_at, self.starts[:count])
        piece = self._cut(stop, lines.astype(np.int64), len(newline_at))
        self.starts, self.stops = self.starts[count:] - stop, self.stops[count:] - stop
        self.scanned -= stop
        self.record_start -= stop
        return piece

    def _cut(self, stop: int, lines: np.ndarray, newlines: int) -> _Piece:
        piece = _Piece(self.buffer[:stop], self.offset, self.line, lines)
        self.buffer = self.buffer[stop:]
        self.offset += stop
        self.line += newlines
        return piece

    def _physical_lines(self) -> Iterator[str]:
        """Yield the rest of the stream line by line, keeping each line's bytes in `_pending`."""
        data, position = self.buffer, 0
        self.buffer = b""
        while True:
            end = data.find(b"\n", position)
            if end < 0:
                block = self.stream.read(_BLOCK)
                if block:
                    data, position = data[position:] + block, 0
                    continue
                end = len(data) - 1
                if position > end:
                    return
            raw, position = data[position : end + 1], end + 1
            self._pending.append(raw)
            # Undecodable bytes are reported, with their line, when the piece itself is decoded.
            yield raw.decode("utf-8", errors="replace")

    def _csv_rows(self) -> Iterator[tuple[int, bool]]:
        """Yield (lines read before the row, whether pandas counts it as a record) per csv row."""
        reader = csv.reader(self._physical_lines())
        before = 0
        for row in reader:
            yield before, len(row) > 1 or (len(row) == 1 and bool(row[0].strip()))
            before = reader.line_num

    def _take_exactly(self, rows: int) -> _Piece | None:
        if self._rows is None:
            self._rows = self._csv_rows()
        starts: list[int] = []
        next_start = None
        while True:
            item, self._carry = self._carry or next(self._rows, None), None
            if item is None:
                break
            before, is_record = item
            if is_record and len(starts) == rows:
                self._carry, next_start = item, before
                break
            if is_record:
                starts.append(self.line + before - self._emitted)
        if not starts:
            return None
        count = len(self._pending) if next_start is None else next_start - self._emitted
        data = b"".join(self._pending[:count])
        del self._pending[:count]
        piece = _Piece(data, self.offset, self.line, np.asarray(starts, dtype=np.int64))
        self.offset += len(data)
        self.line += data.count(b"\n")
        self._emitted += count
        return piece


def _decode(path: Path, piece: _Piece, final: bool = True) -> str:
    try:
        # Not final: a character cut off at the end of a block is no error.
        return codecs.getincrementaldecoder("utf-8")().decode(piece.data, final=final)
    except UnicodeDecodeError as exc:
        line = piece.first_line + piece.data[: exc.start].count(b"\n")
        raise SourceError(
            str(path), f"not UTF-8 text (line {line}, byte {piece.offset + exc.start})"
        ) from exc


def _open(path: Path, stack: ExitStack) -> IO[bytes]:
    try:
        if path.suffix == ".gz":
            return stack.enter_context(cast(IO[bytes], gzip.open(path, "rb")))
        return stack.enter_context(path.open("rb"))
    except OSError as exc:
        raise SourceError(str(path), f"cannot read file: {exc}") from exc


def _shift_lines(message: str, shift: int) -> str:
    return re.sub(r"line (\d+)", lambda m: f"line {int(m.group(1)) + shift}", message)


def _parse(path: Path, text: str, strip: bool = True) -> pd.DataFrame:
    try:
        frame: pd.DataFrame = pd.read_csv(io.StringIO(text), **_CSV)
    except (pd.errors.ParserError, ValueError) as exc:
        raise SourceError(str(path), f"not a readable CSV file: {exc}") from exc
    if strip:
        frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def arrow_parse(data: bytes, names: list[str]) -> pd.DataFrame | None:
    """Read CSV bytes (header first) as pandas reads them, with Arrow's reader; None where pandas must.

    pandas' parser makes a Python string of every field and then Arrow text of those: about nine
    times Arrow's own reader on instalments. The two agree on plain CSV; where they can differ,
    pandas reads: quotes (pandas refuses some malformed quoting that Arrow accepts), carriage
    returns not followed by a newline (pandas' tokenizer splits those rows otherwise), a single
    column (pandas skips lines of spaces there), and any row Arrow rejects (a wrong field count,
    which pandas fills or reports with its line).
    """
    # `in` is a memchr; bytes.count is several times slower, and most files hold no carriage return.
    if len(names) < 2 or b'"' in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(
                # large_string is the storage of pandas' text dtype: the frame takes the buffers as they are.
                column_types=dict.fromkeys(names, pa.large_string()),
                strings_can_be_null=False,
                null_values=[],
            ),
        )
    except pa.ArrowInvalid:
        return None
    frame: pd.DataFrame = table.to_pandas()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


@dataclass
class _CsvReader:
    """One CSV file read record piece by record piece, its header read and checked first."""

    path: Path
    entity: Entity
    cutter: _RecordCutter
    header: str
    names: list[str]  # the header's column names as pandas reads them, before stripping

    @classmethod
    def open(cls, path: Path, entity: Entity, stack: ExitStack) -> _CsvReader:
        """Open the file and check its header; SourceError for an unreadable, empty or short file."""
        cutter = _RecordCutter(_open(path, stack))
        try:
            first = cutter.take(1)
        except (OSError, EOFError) as exc:
            raise SourceError(str(path), f"cannot read file: {exc}") from exc
        # Blank lines before the header are no records; csv.reader (the line-number fallback) needs them gone.
        header = "" if first is None else _decode(path, first).lstrip()
        if not header.strip():
            raise SourceError(str(path), "file is empty (no header row)")
        # Text that is not UTF-8 is the more basic fault, so report it first when the first block shows it.
        _decode(
            path, _Piece(cutter.buffer, cutter.offset, cutter.line, np.empty(0, dtype=np.int64)), final=False
        )
        names = [str(c) for c in _parse(path, header, strip=False).columns]
        check_columns(entity, str(path), [n.strip() for n in names])
        return cls(path, entity, cutter, header, names)

    def chunks(self, rows: int) -> Iterator[RawFrame]:
        """Yield the records as raw frames of up to `rows` rows, with their exact line numbers."""
        done = 0
        while True:
            try:
                piece = self.cutter.take(rows)
            except (OSError, EOFError) as exc:
                raise SourceError(str(self.path), f"cannot read file: {exc}") from exc
            except csv.Error as exc:
                raise SourceError(str(self.path), f"not a readable CSV file: {exc}") from exc
            if piece is None:
                if not done:
                    yield self._frame(_parse(self.path, self.header), pd.Series([], dtype="int64"))
                return
            # Decoded only to report bad UTF-8 with its line: pandas parses the bytes themselves, as the
            # text in a StringIO took 4 bytes a character (~200 MB more for a 500k-row chunk).
            _decode(self.path, piece)
            data = self.header.encode("utf-8") + piece.data
            # Line n of `data` is line n + shift of the file.
            shift = piece.first_line - 1 - self.header.count("\n")
            frame = arrow_parse(data, self.names)
            if frame is None:
                try:
                    frame = pd.read_csv(io.BytesIO(data), encoding="utf-8", **_CSV)
                except (pd.errors.ParserError, ValueError) as exc:
                    where = _shift_lines(str(exc), shift)
                    raise SourceError(str(self.path), f"not a readable CSV file: {where}") from exc
                frame.columns = [str(c).strip() for c in frame.columns]
            if len(frame) == len(piece.lines):
                lines = pd.Series(piece.lines, dtype="int64")
            else:
                lines = _csv_lines(data.decode("utf-8"), len(frame)) + shift
            done += len(frame)
            yield self._frame(frame, lines)

    def _frame(self, frame: pd.DataFrame, lines: pd.Series) -> RawFrame:
        known = [c for c in CONTRACT[self.entity].column_names if c in frame.columns]
        return RawFrame(
            self.entity,
            str(self.path),
            as_text(frame[known]).reset_index(drop=True),
            lines.reset_index(drop=True),
        )


def _parquet_columns(path: Path, entity: Entity) -> list[str]:
    try:
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise SourceError(str(path), f"not a readable Parquet file: {exc}") from exc
    check_columns(entity, str(path), names)
    return [c for c in CONTRACT[entity].column_names if c in names]


def _parquet_chunks(path: Path, entity: Entity, rows: int) -> Iterator[RawFrame]:
    import pyarrow.parquet as pq

    known = _parquet_columns(path, entity)
    done = 0
    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=min(rows, 1 << 30), columns=known)
        for batch in batches:
            frame = batch.to_pandas()
            lines = pd.Series(range(done + 1, done + len(frame) + 1), dtype="int64")
            done += len(frame)
            yield RawFrame(entity, str(path), as_text(frame).reset_index(drop=True), lines, "row")
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise SourceError(str(path), f"not a readable Parquet file: {exc}") from exc
    if not done:
        empty = pq.read_schema(path).empty_table().select(known).to_pandas()
        yield RawFrame(entity, str(path), as_text(empty), pd.Series([], dtype="int64"), "row")


def check_entity_file(path: Path, entity: Entity) -> None:
    """Raise SourceError when the file cannot be opened or lacks a required column (reads no rows)."""
    if path.suffix == ".parquet":
        _parquet_columns(path, entity)
        return
    with ExitStack() as stack:
        _CsvReader.open(path, entity, stack)


def iter_entity_file(path: Path, entity: Entity, rows: int) -> Iterator[RawFrame]:
    """Yield the file's rows as raw frames of up to `rows` rows (at least one frame, maybe empty)."""
    if path.suffix == ".parquet":
        yield from _parquet_chunks(path, entity, rows)
        return
    with ExitStack() as stack:
        yield from _CsvReader.open(path, entity, stack).chunks(rows)


def _concat(chunks: Iterator[RawFrame]) -> RawFrame:
    parts = list(chunks)
    first = parts[0]
    if len(parts) == 1:
        return first
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    lines = pd.concat([p.lines for p in parts], ignore_index=True)
    return RawFrame(first.entity, first.source, frame, lines, first.line_label)


def read_csv_entity(path: Path, entity: Entity) -> RawFrame:
    """Read one entity CSV as text, failing fast on an unreadable file or missing columns."""
    return _concat(iter_entity_file(path, entity, WHOLE))


def read_parquet_entity(path: Path, entity: Entity) -> RawFrame:
    """Read one entity Parquet file as text, failing fast on an unreadable file or missing columns."""
    return _concat(iter_entity_file(path, entity, WHOLE))


def check_directory(directory: Path) -> dict[Entity, Path]:
    """Return every entity's file after checking that each opens and has its required columns."""
    if not directory.is_dir():
        raise SourceError(str(directory), "source directory does not exist")
    paths = {entity: find_entity_file(directory, entity) for entity in ENTITY_ORDER}
    for entity, path in paths.items():
        check_entity_file(path, entity)
    return paths


def read_directory(directory: Path) -> dict[Entity, RawFrame]:
    """Read every entity from `directory`; any unusable file stops the whole extract."""
    return {
        entity: _concat(iter_entity_file(path, entity, WHOLE))
        for entity, path in check_directory(directory).items()
    }
