"""Bulk paths: COPY on PostgreSQL, executemany on SQLite; never row-by-row ORM inserts."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Date,
    DateTime,
    Float,
    Insert,
    Integer,
    Numeric,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    or_,
    update,
)


@dataclass(frozen=True)
class SyncStats:
    """What a sync did to a table."""

    inserted: int
    updated: int
    unchanged: int


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _typed(df: pd.DataFrame, table: Table) -> pd.DataFrame:
    """Coerce frame columns to the pandas dtypes the table's columns expect (JSON as text)."""
    out = pd.DataFrame(index=df.index)
    for name in df.columns:
        col_type = table.c[name].type
        series = df[name]
        if isinstance(col_type, DateTime):
            out[name] = pd.to_datetime(series, utc=True)
        elif isinstance(col_type, Date):
            out[name] = pd.to_datetime(series).astype("datetime64[us]")
        elif isinstance(col_type, Boolean):
            out[name] = series.astype("boolean")
        elif isinstance(col_type, JSON):
            out[name] = series.map(lambda v: None if v is None else json.dumps(v, default=str)).astype(
                "object"
            )
        elif isinstance(col_type, Integer):
            out[name] = pd.to_numeric(series).astype("Int64")
        elif isinstance(col_type, (Numeric, Float)):
            out[name] = pd.to_numeric(series).astype("float64")
        else:
            out[name] = series.astype("object")
    return out


def _values(df: pd.DataFrame, table: Table) -> dict[str, list[Any]]:
    """Return each column as a list of plain Python values (dates as date, JSON as objects, None for null)."""
    typed = _typed(df, table)
    for name in df.columns:
        col_type = table.c[name].type
        if isinstance(col_type, JSON):
            typed[name] = df[name].astype("object")
        elif isinstance(col_type, Date):
            typed[name] = typed[name].dt.date.astype("object")
        elif isinstance(col_type, DateTime):
            typed[name] = typed[name].astype("object")
    obj = typed.astype("object").where(typed.notna(), None)
    return {str(name): _native(obj[name]) for name in obj.columns}


def _native(values: pd.Series) -> list[Any]:
    """Return the values as a list with numpy scalars unboxed: sqlite3 cannot bind them."""
    plain = values.tolist()
    # Text columns, most of them, are checked in C; only a column of something else is unboxed value by value.
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return plain
    return [v.item() if isinstance(v, np.generic) else v for v in plain]


def executemany(conn: Connection, stmt: Insert | Update, columns: Mapping[str, Sequence[Any]]) -> int:
    """Run `stmt` once per row of `columns` (bind name -> values); return the rows it changed.

    SQLAlchemy's executemany builds, checks and converts one parameter dict per row, which on
    SQLite took longer than the statements themselves. Here the statement is compiled once and
    each column converted by the bind processor SQLAlchemy would have used, so SQLite stores
    the same values.
    """
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    constants = compiled.construct_params(dict.fromkeys(columns))
    # Columns left out whose default SQLAlchemy would have computed in Python for each row.
    defaults = {c.key: c.default for c in compiled.insert_prefetch} | {
        c.key: c.onupdate for c in compiled.update_prefetch
    }
    rows = len(next(iter(columns.values()), ()))
    bound: list[Sequence[Any]] = []
    for name in compiled.positiontup or ():
        if name in columns:
            values = columns[name]
        elif name in defaults:
            values = [_scalar_default(name, defaults[name])] * rows
        else:
            values = [constants[name]] * rows
        process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        bound.append([process(v) for v in values] if process is not None else values)
    result = conn.exec_driver_sql(compiled.string, list(zip(*bound, strict=True)))
    return int(result.rowcount)


def _scalar_default(name: str, default: Any) -> Any:
    if default is None or not default.is_scalar:
        raise ValueError(f"column {name!r}: a bulk write fills in constant defaults only; give its values")
    return default.arg


def _days(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Return times without a zone as their days (a date column's values, written as YYYY-MM-DD)."""
    # PostgreSQL reads "2026-11-13" for a date faster than "2026-11-13 00:00:00.000000": a COPY of
    # 1.5M instalment rows with two dates took 1.45 s against 1.80 s. Unsafe: a time of day is dropped,
    # as PostgreSQL itself drops it from the longer text.
    return values.cast(pa.date32(), safe=False)


def _arrow_rows(df: pd.DataFrame, table: Table) -> pa.Table:
    """Return the rows typed as `table`'s columns, as the Arrow table the CSV is written from."""
    typed = _typed(df, table)
    for name in typed.columns:
        if typed[name].dtype == object:
            typed[name] = typed[name].astype("string[pyarrow]")
    rows = pa.Table.from_pandas(typed, preserve_index=False)
    for i, name in enumerate(rows.column_names):
        if isinstance(table.c[name].type, Date) and pa.types.is_timestamp(rows.schema.field(i).type):
            rows = rows.set_column(i, name, _days(rows.column(i)))
    return rows


def _write_csv(rows: pa.Table) -> bytes:
    buf = io.BytesIO()
    # Arrow's C++ writer is ~4x faster than DataFrame.to_csv on dates and text.
    pacsv.write_csv(rows, buf, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


def _csv_payload(df: pd.DataFrame, table: Table) -> bytes:
    """Return the rows as CSV for COPY: NULL unquoted and empty, an empty string quoted ("")."""
    return _write_csv(_arrow_rows(df, table))


def _cast(values: pa.ChunkedArray, col_type: Any) -> pa.ChunkedArray | None:
    """Return `values` cast as `_typed` would convert them, or None when only `_typed` knows how."""
    kind = values.type
    if pa.types.is_null(kind):
        return values
    if isinstance(col_type, DateTime) and pa.types.is_timestamp(kind) and kind.tz in (None, "UTC"):
        # The text Arrow writes for UTC times (pd.to_datetime(utc=True) keeps the unit and reads naive
        # times as UTC), built as text: the CSV writer looks the zone up for every value, ~10x slower.
        text = values.cast(pa.timestamp(kind.unit)).cast(pa.string())
        return pc.binary_join_element_wise(text, "Z", "")
    if isinstance(col_type, Date) and pa.types.is_timestamp(kind) and kind.tz is None:
        return _days(values)
    if isinstance(col_type, Boolean) and pa.types.is_boolean(kind):
        return values
    if isinstance(col_type, Integer) and pa.types.is_integer(kind):
        return values.cast(pa.int64())
    if isinstance(col_type, (Numeric, Float)) and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return values.cast(pa.float64())
    plain_text = not isinstance(col_type, (JSON, DateTime, Date, Boolean, Integer, Numeric, Float))
    if plain_text and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return values
    return None


def arrow_payload(rows: pa.Table, table: Table) -> bytes:
    """Return Arrow rows as CSV for COPY: the values `_csv_payload` gives for the same rows as objects.

    Casting in Arrow skips two conversions of every value (to pandas and back) and releases the
    GIL, so a payload can be built in a thread while PostgreSQL works on the previous one.
    """
    columns = []
    for name in rows.column_names:
        cast = _cast(rows.column(name), table.c[name].type)
        if cast is None:
            series = rows.column(name).to_pandas()
            if pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
                series = series.astype("object").where(series.notna(), None)
            cast = _arrow_rows(series.to_frame(name), table).column(0)
        columns.append(cast)
    return _write_csv(pa.table(columns, names=rows.column_names))


def _driver(conn: Connection) -> Any:
    """Return the psycopg connection under a SQLAlchemy connection (for COPY)."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise RuntimeError("connection is closed")
    return raw


def _copy_in(conn: Connection, target: str, columns: list[str], payload: bytes, freeze: bool = False) -> None:
    raw = _driver(conn)
    cols = ", ".join(f'"{c}"' for c in columns)
    options = "FORMAT csv, FREEZE" if freeze else "FORMAT csv"
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY {target} ({cols}) FROM STDIN WITH ({options})") as copy,
    ):
        for start in range(0, len(payload), 8 << 20):
            copy.write(payload[start : start + (8 << 20)])


def insert_frame(conn: Connection, table: Table, df: pd.DataFrame) -> int:
    """Insert every row of `df` into `table` in one bulk operation; return the row count."""
    if df.empty:
        return 0
    if _is_pg(conn):
        _copy_in(conn, f'"{table.name}"', list(df.columns), _csv_payload(df, table))
    else:
        executemany(conn, table.insert(), _values(df, table))
    return len(df)


def insert_new(conn: Connection, table: Table, df: pd.DataFrame, key: list[str]) -> int:
    """Insert the rows of `df` whose key is not in `table` yet; return how many were new."""
    if df.empty:
        return 0
    if _is_pg(conn):
        tmp = _stage(conn, table, df)
        cols = ", ".join(f'"{c}"' for c in df.columns)
        keys = ", ".join(f'"{k}"' for k in key)
        result = conn.exec_driver_sql(
            f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT ({keys}) DO NOTHING'
        )
        return int(result.rowcount)
    return executemany(conn, table.insert().prefix_with("OR IGNORE"), _values(df, table))


def _stage(conn: Connection, table: Table, df: pd.DataFrame) -> str:
    """Copy `df` into a temporary table shaped like `table` and return its name."""
    tmp = f"tmp_{table.name}_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(f'"{c}"' for c in df.columns)
    # CREATE TABLE AS copies the column types but not the NOT NULL constraints a partial update lacks.
    conn.exec_driver_sql(
        f'CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {cols} FROM "{table.name}" WITH NO DATA'
    )
    _copy_in(conn, tmp, list(df.columns), _csv_payload(df, table))
    return tmp


def update_frame(
    conn: Connection,
    table: Table,
    df: pd.DataFrame,
    key: list[str],
    only_where_null: str | None = None,
    only_where_in: tuple[str, tuple[str, ...]] | None = None,
) -> int:
    """Update `table` from `df`, matching rows on `key`; return how many rows changed.

    With `only_where_null`, rows whose column of that name is set are left alone (e.g. erased_at);
    with `only_where_in=(column, values)`, only rows whose column holds one of the values change.
    """
    if df.empty:
        return 0
    values = [c for c in df.columns if c not in key]
    if _is_pg(conn):
        tmp = _stage(conn, table, df)
        sets = ", ".join(f'"{c}" = s."{c}"' for c in values)
        match = " AND ".join(f't."{k}" = s."{k}"' for k in key)
        extra = f' AND t."{only_where_null}" IS NULL' if only_where_null else ""
        if only_where_in is not None:
            column, allowed = only_where_in
            quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in allowed)
            extra += f' AND t."{column}" IN ({quoted})'
        result = conn.exec_driver_sql(
            f'UPDATE "{table.name}" AS t SET {sets} FROM {tmp} AS s WHERE {match}{extra}'
        )
        return int(result.rowcount)
    cond = and_(*(table.c[k] == bindparam(f"k_{k}") for k in key))
    if only_where_null:
        cond = and_(cond, table.c[only_where_null].is_(None))
    if only_where_in is not None:
        # An expanding IN cannot be used with executemany; spell the alternatives out.
        cond = and_(cond, or_(*(table.c[only_where_in[0]] == value for value in only_where_in[1])))
    stmt = update(table).where(cond).values({c: bindparam(f"v_{c}") for c in values})
    columns = _values(df, table)
    return executemany(
        conn, stmt, {**{f"k_{k}": columns[k] for k in key}, **{f"v_{c}": columns[c] for c in values}}
    )


def sync_frame(
    conn: Connection,
    table: Table,
    df: pd.DataFrame,
    key: list[str],
    only_where_null: str | None = None,
) -> SyncStats:
    """Make `table` hold `df`'s rows: insert new keys, update rows whose row_hash changed.

    With `only_where_null`, existing rows whose column of that name is set are never updated.
    """
    if df.empty:
        return SyncStats(0, 0, 0)
    existing = read_frame(conn, _select_keys(table, key))
    merged = df[key + ["row_hash"]].merge(existing, on=key, how="left", suffixes=("", "_old"), indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy()
    changed = (~is_new) & (merged["row_hash"].to_numpy() != merged["row_hash_old"].to_numpy())
    inserted = insert_frame(conn, table, df.loc[is_new])
    updated = update_frame(conn, table, df.loc[changed], key, only_where_null=only_where_null)
    return SyncStats(inserted, updated, len(df) - inserted - updated)


def _select_keys(table: Table, key: list[str]) -> Select[Any]:
    from sqlalchemy import select

    return select(*(table.c[k] for k in key), table.c.row_hash)


def read_frame(conn: Connection, stmt: Select[Any]) -> pd.DataFrame:
    """Run a SELECT and return a typed DataFrame (COPY TO STDOUT on PostgreSQL)."""
    columns = list(stmt.selected_columns)
    names = [c.key for c in columns]
    if _is_pg(conn):
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        raw = _driver(conn)
        buf = io.BytesIO()
        with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, NULL '\\N')") as copy:
            for chunk in copy:
                buf.write(chunk)
        buf.seek(0)
        if buf.getbuffer().nbytes == 0:
            frame = pd.DataFrame({n: pd.Series(dtype="object") for n in names})
        else:
            frame = pd.read_csv(
                buf, header=None, names=names, dtype=str, keep_default_na=False, na_values=["\\N"]
            )
    else:
        # The driver's rows as sqlite3 returns them: SQLAlchemy would parse every date and timestamp
        # text cell by cell, which _coerce then does column by column anyway.
        result = conn.execute(stmt)
        rows = result.cursor.fetchall()
        result.close()
        frame = pd.DataFrame.from_records(rows, columns=names) if rows else pd.DataFrame(columns=names)
    return _coerce(frame, columns)


def _as_bool(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value in {"t", "true", "1"}
    return bool(value)


def _coerce(frame: pd.DataFrame, columns: list[Any]) -> pd.DataFrame:
    for col in columns:
        name, col_type = col.key, col.type
        series = frame[name]
        if isinstance(col_type, DateTime):
            frame[name] = pd.to_datetime(series, utc=True, format="mixed")
        elif isinstance(col_type, Date):
            frame[name] = pd.to_datetime(series).astype("datetime64[ns]")
        elif isinstance(col_type, Boolean):
            frame[name] = series.map(_as_bool)
            frame[name] = frame[name].astype("boolean")
        elif isinstance(col_type, Integer):
            frame[name] = pd.to_numeric(series).astype("Int64")
        elif isinstance(col_type, (Numeric, Float)):
            frame[name] = pd.to_numeric(series).astype("float64")
        elif isinstance(col_type, JSON):
            frame[name] = series.map(lambda v: json.loads(v) if isinstance(v, str) else v)
        else:
            frame[name] = series.astype("object").where(series.notna(), None)
    return frame


def copy_frame(conn: Connection, target: str, table: Table, df: pd.DataFrame) -> None:
    """COPY `df` (typed like `table`'s columns) into the table or temporary table named `target`."""
    _copy_in(conn, target, list(df.columns), _csv_payload(df, table))
