"""Column reads for large frames: read_frame's dtypes, with text held as Arrow strings, parsed by Arrow."""

from __future__ import annotations

import io
import selectors
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import pq
from sqlalchemy import Boolean, Connection, Date, Integer, Numeric, Select, String

from tasks.store.bulk import _driver, _is_pg, read_frame

# COPY sends one message per row; parsing in blocks of this many bytes keeps the raw CSV from piling up.
BLOCK_BYTES = 8 << 20
Array = np.ndarray[Any, Any]
TEXT = pd.StringDtype("pyarrow", na_value=float("nan"))


def _kind(col_type: Any) -> str:
    for kind, types in (
        ("date", Date),
        ("bool", Boolean),
        ("int", Integer),
        ("number", Numeric),
        ("text", String),
    ):
        if isinstance(col_type, types):
            return kind
    raise TypeError(f"read_columns cannot read a {type(col_type).__name__} column")


_ARROW = {
    "date": pa.date32(),
    "bool": pa.bool_(),
    "int": pa.int64(),
    "number": pa.string(),
    "text": pa.string(),
}


def _series(values: pa.ChunkedArray, kind: str) -> pd.Series:
    """Return one parsed column with the dtype read_frame gives its kind (text as Arrow strings)."""
    if kind == "date":
        return pd.Series(values.to_pandas(date_as_object=False), dtype="datetime64[ns]")
    if kind == "bool":
        return pd.Series(values.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get))
    if kind == "int":
        return pd.Series(values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get))
    text = pd.Series(values.to_pandas(), dtype=TEXT)
    # Numbers go through the same parser read_frame uses, so prices stay equal to the last bit.
    return pd.to_numeric(text).astype("float64") if kind == "number" else text


def _parse(block: bytes, names: list[str], kinds: list[str]) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: _ARROW[k] for n, k in zip(names, kinds, strict=True)},
            null_values=["\\N"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )


def _copy_out(conn: Connection, stmt: Select[Any], names: list[str], kinds: list[str]) -> pa.Table:
    sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
    schema = pa.schema([(n, _ARROW[k]) for n, k in zip(names, kinds, strict=True)])
    tables = [schema.empty_table()]
    raw = _driver(conn)
    with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, NULL '\\N')"):
        for block in _copy_blocks(raw.pgconn):
            tables.append(_parse(block, names, kinds))
    return pa.concat_tables(tables)


def _copy_blocks(pgconn: Any) -> Iterator[bytes]:
    """Yield the rows of a started COPY TO STDOUT in blocks of about BLOCK_BYTES, then take its result."""
    # Copy.read() costs a generator and a wait per row, twice the server's own time at a million rows;
    # taking every row libpq has buffered before waiting on the socket does not.
    buf = io.BytesIO()
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)
        while True:
            size, row = pgconn.get_copy_data(1)
            if size > 0:
                buf.write(row)
                if buf.tell() >= BLOCK_BYTES:
                    yield buf.getvalue()
                    buf = io.BytesIO()
            elif size == 0:
                selector.select()
                pgconn.consume_input()
            else:
                break
    if size < -1:
        raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
    while (result := pgconn.get_result()) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.DatabaseError(result.error_message.decode(errors="replace"))
    if buf.tell():
        yield buf.getvalue()


def is_in(values: pd.Series, known: pd.Series) -> Array:
    """Return which values occur in `known`, for Arrow text (pandas' isin builds Python lists for it)."""
    found = pc.is_in(pa.array(values, type=pa.string()), value_set=pa.array(known, type=pa.string()))
    return np.asarray(found.fill_null(False), dtype=bool)


def read_columns(conn: Connection, stmt: Select[Any]) -> pd.DataFrame:
    """Run a SELECT of date, boolean, integer, numeric and text columns; text comes back as Arrow strings."""
    columns = list(stmt.selected_columns)
    names = [str(c.key) for c in columns]
    kinds = [_kind(c.type) for c in columns]
    if not _is_pg(conn):
        frame = read_frame(conn, stmt)
        for name, kind in zip(names, kinds, strict=True):
            if kind == "text":
                frame[name] = frame[name].astype(TEXT)
        return frame
    table = _copy_out(conn, stmt, names, kinds)
    return pd.DataFrame(
        {n: _series(table.column(n), k) for n, k in zip(names, kinds, strict=True)},
        index=pd.RangeIndex(table.num_rows),
    )
