"""Column reads: read_frame's values and dtypes on both stores, with text as Arrow strings."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select

from tasks.store import columns
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.columns import TEXT, is_in, read_columns

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _contract(n: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "contract_key": f"K{n:07d}",
        "customer_key": f"C{n % 7:07d}",
        "product": "loan",
        "status": "active",
        "start_date": None,
        "term_end": date(2026, 12, 1 + n % 28),
        "auto_renew": n % 2 == 0,
        "price": f"{n}.{n % 100:02d}",
        "currency": "EUR",
        "renewed_at": None if n % 3 else date(2025, 12, 1),
        "retention_basis": None,
        "row_hash": "h",
        "loaded_at": NOW,
    }
    return {**row, **values}


def _select() -> object:
    ct = s.contracts
    return select(
        ct.c.contract_key,
        ct.c.product,
        ct.c.term_end,
        ct.c.auto_renew,
        ct.c.price,
        ct.c.renewed_at,
        ct.c.retention_basis,
    ).order_by(ct.c.contract_key)


def test_read_columns_gives_read_frames_values_with_text_as_arrow_strings(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks, so the rows arrive in many parsed pieces.
    monkeypatch.setattr(columns, "BLOCK_BYTES", 200)
    awkward = ["a,b", 'say "hi"', "two\nlines", "", "\\N", "Zoë"]
    rows = [_contract(n) for n in range(1, 40)]
    rows += [_contract(100 + i, retention_basis=text) for i, text in enumerate(awkward)]
    with engine.begin() as conn:
        conn.execute(insert(s.contracts), rows)
        got = read_columns(conn, _select())  # type: ignore[arg-type]
        expected = read_frame(conn, _select())  # type: ignore[arg-type]
    for name in ("contract_key", "product", "retention_basis"):
        expected[name] = expected[name].astype(TEXT)
    # A stored "\N" is text; only PostgreSQL's read_frame mistook it for empty.
    expected.loc[expected["contract_key"] == "K0000104", "retention_basis"] = "\\N"
    pd.testing.assert_frame_equal(got, expected)
    assert got.loc[got["contract_key"].isin(["K0000100", "K0000102"]), "retention_basis"].tolist() == [
        "a,b",
        "two\nlines",
    ]


def test_read_columns_of_no_rows_keeps_the_dtypes(engine: Engine) -> None:
    with engine.connect() as conn:
        got = read_columns(conn, _select())  # type: ignore[arg-type]
    assert got.empty
    assert got.dtypes.astype(str).to_dict() == {
        "contract_key": "str",
        "product": "str",
        "term_end": "datetime64[ns]",
        "auto_renew": "boolean",
        "price": "float64",
        "renewed_at": "datetime64[ns]",
        "retention_basis": "str",
    }


def test_is_in_tells_which_arrow_texts_are_known() -> None:
    values = pd.Series(["C1", "C2", None, "C3"], dtype=TEXT)
    known = pd.Series(["C3", "C1"], dtype=TEXT)
    assert is_in(values, known).tolist() == [True, False, False, True]
