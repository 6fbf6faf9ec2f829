"""SQLite's bulk paths bind whole columns themselves: they must store and read what SQLAlchemy would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    or_,
    select,
    update,
)

from tasks.store.bulk import _coerce, insert_frame, insert_new, read_frame, update_frame

ROWS: list[dict[str, Any]] = [
    {
        "row_key": "A1",
        "big": 2**40,
        "flag": True,
        "day": date(2026, 11, 22),
        "ratio": 0.25,
        "count": 3,
        "doc": {"steps": ["sms", "email"], "n": 2},
        "amount": 1234.5,
        "status": "granted",
        "note": "Grüße, ñandú — 你好",
        "at": datetime(2026, 11, 22, 8, 30, 15, 123456, tzinfo=UTC),
    },
    {
        "row_key": "A2",
        "big": None,
        "flag": False,
        "day": None,
        "ratio": None,
        "count": None,
        "doc": ["x"],
        "amount": None,
        "status": "fulfilled",
        "note": "",
        "at": None,
    },
    {
        "row_key": "A3",
        "big": -1,
        "flag": None,
        "day": date(2000, 2, 29),
        "ratio": -3.0,
        "count": 0,
        "doc": None,
        "amount": 0.01,
        "status": "expired",
        "note": None,
        "at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    },
]


def _table(metadata: MetaData, name: str) -> Table:
    # The kinds of column the store's schema uses, each nullable.
    return Table(
        name,
        metadata,
        Column("row_key", String(16), primary_key=True),
        Column("big", BigInteger),
        Column("flag", Boolean),
        Column("day", Date),
        Column("ratio", Float),
        Column("count", Integer),
        Column("doc", JSON),
        Column("amount", Numeric(14, 2)),
        Column("status", String(16)),
        Column("note", Text),
        Column("at", DateTime(timezone=True)),
        # Left out of every frame: SQLAlchemy fills it in from the column's default.
        Column("tries", Integer, nullable=False, default=0),
    )


@pytest.fixture
def tables() -> Iterator[tuple[Engine, Table, Table]]:
    """Yield an in-memory SQLite engine with two twin tables: one for the bulk path, one for SQLAlchemy's."""
    engine = create_engine("sqlite://")
    metadata = MetaData()
    ours, theirs = _table(metadata, "ours"), _table(metadata, "theirs")
    metadata.create_all(engine)
    yield engine, ours, theirs
    engine.dispose()


def _stored(conn: Connection, table: Table) -> list[tuple[str, ...]]:
    """Return every stored value with its SQLite storage class, as the driver sees it."""
    names = [c.name for c in table.columns]
    typed = ", ".join(f'"{n}", typeof("{n}")' for n in names)
    return [
        tuple(map(repr, row))
        for row in conn.exec_driver_sql(f'SELECT {typed} FROM "{table.name}" ORDER BY row_key')
    ]


def test_bulk_inserts_on_sqlite_store_what_sqlalchemy_executemany_stores(
    tables: tuple[Engine, Table, Table],
) -> None:
    engine, ours, theirs = tables
    with engine.begin() as conn:
        assert insert_frame(conn, ours, pd.DataFrame(ROWS)) == 3
        conn.execute(theirs.insert(), ROWS)
        assert _stored(conn, ours) == _stored(conn, theirs)


def test_numpy_scalars_in_a_column_of_python_objects_are_stored_as_their_python_values(
    tables: tuple[Engine, Table, Table],
) -> None:
    engine, ours, theirs = tables
    frame = pd.DataFrame(ROWS).assign(status=pd.Series([np.int64(7), np.bool_(True), "x"], dtype=object))
    with engine.begin() as conn:
        insert_frame(conn, ours, frame)
        conn.execute(theirs.insert(), [{**r, "status": s} for r, s in zip(ROWS, [7, True, "x"], strict=True)])
        assert _stored(conn, ours) == _stored(conn, theirs)


def test_a_column_left_out_whose_default_is_computed_per_row_is_refused_by_name() -> None:
    engine = create_engine("sqlite://")
    table = Table(
        "t", MetaData(), Column("k", String, primary_key=True), Column("n", Integer, default=lambda: 1)
    )
    table.create(engine)
    with engine.begin() as conn, pytest.raises(ValueError, match="'n'"):
        insert_frame(conn, table, pd.DataFrame({"k": ["a"]}))
    engine.dispose()


def test_insert_new_on_sqlite_skips_existing_keys_and_counts_only_the_new_rows(
    tables: tuple[Engine, Table, Table],
) -> None:
    engine, ours, theirs = tables
    with engine.begin() as conn:
        insert_frame(conn, ours, pd.DataFrame(ROWS[:1]))
        conn.execute(theirs.insert(), ROWS[:1])
        again = [{**ROWS[0], "note": "changed"}, *ROWS[1:]]
        assert insert_new(conn, ours, pd.DataFrame(again), ["row_key"]) == 2
        assert conn.execute(theirs.insert().prefix_with("OR IGNORE"), again).rowcount == 2
        assert _stored(conn, ours) == _stored(conn, theirs)


def test_bulk_updates_on_sqlite_change_only_the_allowed_rows_as_sqlalchemy_would(
    tables: tuple[Engine, Table, Table],
) -> None:
    engine, ours, theirs = tables
    changes = [
        {"row_key": "A1", "amount": 99.99, "doc": {"n": 3}, "at": datetime(2026, 11, 23, 9, tzinfo=UTC)},
        {"row_key": "A2", "amount": 1.0, "doc": None, "at": None},
        {"row_key": "A3", "amount": 2.0, "doc": [], "at": datetime(2026, 11, 23, 10, tzinfo=UTC)},
    ]
    allowed = ("granted", "fulfilled")
    with engine.begin() as conn:
        conn.execute(ours.insert(), ROWS)
        conn.execute(theirs.insert(), ROWS)
        changed = update_frame(
            conn, ours, pd.DataFrame(changes), ["row_key"], only_where_in=("status", allowed)
        )
        stmt = (
            update(theirs)
            .where(
                and_(
                    theirs.c.row_key == bindparam("k_row_key"),
                    or_(*(theirs.c.status == value for value in allowed)),
                )
            )
            .values({c: bindparam(f"v_{c}") for c in ("amount", "doc", "at")})
        )
        rows = [
            {"k_row_key": r["row_key"], **{f"v_{c}": r[c] for c in ("amount", "doc", "at")}} for r in changes
        ]
        assert changed == conn.execute(stmt, rows).rowcount == 2
        assert _stored(conn, ours) == _stored(conn, theirs)


def test_reads_on_sqlite_give_the_frame_sqlalchemys_processed_rows_give(
    tables: tuple[Engine, Table, Table],
) -> None:
    engine, ours, _ = tables
    with engine.begin() as conn:
        conn.execute(ours.insert(), ROWS)
        stmt = select(*ours.columns).order_by(ours.c.row_key)
        processed = [tuple(row) for row in conn.execute(stmt)]
        expected = _coerce(
            pd.DataFrame.from_records(processed, columns=[c.key for c in ours.columns]), list(ours.columns)
        )
        got = read_frame(conn, stmt)
    pd.testing.assert_frame_equal(got, expected)
    assert got.loc[0, "doc"] == {"steps": ["sms", "email"], "n": 2}
    assert got.loc[0, "at"] == pd.Timestamp("2026-11-22 08:30:15.123456", tz="UTC")
