"""COPY payloads built from Arrow rows carry the values the pandas path writes for the same rows."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from tasks.store import schema as s
from tasks.store.bulk import _csv_payload, arrow_payload


def _values(payload: bytes, columns: int) -> pa.Table:
    """Parse a COPY payload as PostgreSQL does: unquoted empty is NULL, quoted empty is ""."""
    names = [f"c{i}" for i in range(columns)]
    return pacsv.read_csv(
        io.BytesIO(payload),
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def _as_objects(rows: pa.Table) -> pd.DataFrame:
    """Return the rows as the staged load reads them for the pandas path: text as objects, None missing."""
    frame = rows.to_pandas()
    for name in frame.columns:
        if pd.api.types.is_string_dtype(frame[name]) and not pd.api.types.is_object_dtype(frame[name]):
            frame[name] = frame[name].astype("object").where(frame[name].notna(), None)
    return frame


def _same_values(rows: pa.Table, table: s.Table) -> bool:
    expected = _values(_csv_payload(_as_objects(rows), table), rows.num_columns)
    return expected.equals(_values(arrow_payload(rows, table), rows.num_columns))


class TestArrowPayload:
    def test_contract_rows_carry_the_same_dates_numbers_flags_and_load_time(self) -> None:
        now = datetime(2026, 11, 22, 20, 5, 7, 123456, tzinfo=UTC)
        rows = pa.table(
            {
                "contract_key": ["K1", "K2", "K3"],
                "customer_key": ["C1", "C1", "C2"],
                "product": ["loan", "subscription", "loan"],
                "status": ["active", "renewed", "active"],
                "start_date": pa.array(
                    [datetime(2024, 1, 31), None, datetime(2023, 2, 1)], pa.timestamp("us")
                ),
                "term_end": pa.array([datetime(2026, 1, 31)] * 3, pa.timestamp("ms")),
                "auto_renew": [True, False, None],
                "price": [119.9, 0.1, 1e6],
                "currency": ["EUR", "", None],
                "renewed_at": pa.nulls(3),
                "row_hash": pa.array(["1", "2", "3"], pa.large_string()),
                "loaded_at": pa.repeat(pa.scalar(now, pa.timestamp("us", "UTC")), 3),
            }
        )
        assert _same_values(rows, s.contracts)

    def test_dates_are_written_as_the_day_alone(self) -> None:
        rows = pa.table(
            {
                "contract_key": ["K1", "K2", "K3"],
                "start_date": pa.array(
                    [datetime(2024, 1, 31), None, datetime(1969, 12, 31, 12, 0)], pa.timestamp("ns")
                ),
            }
        )
        values = _values(arrow_payload(rows, s.contracts), 2)
        assert values.column("c1").to_pylist() == ["2024-01-31", None, "1969-12-31"]
        assert _same_values(rows, s.contracts)

    def test_empty_text_stays_distinct_from_missing(self) -> None:
        rows = pa.table({"customer_key": ["C1", "C2"], "email": ["", None], "region": pa.nulls(2)})
        payload = arrow_payload(rows, s.customers)
        assert _values(payload, 3).column("c1").to_pylist() == ["", None]
        assert _same_values(rows, s.customers)

    def test_times_without_a_zone_are_written_as_utc_with_their_precision(self) -> None:
        rows = pa.table(
            {
                "captured_at": pa.array([datetime(2025, 3, 1, 8, 30), None], pa.timestamp("ms")),
                "expires_at": pa.array([datetime(2027, 1, 1), None], pa.timestamp("us", "UTC")),
            }
        )
        values = _values(arrow_payload(rows, s.consents), 2)
        assert values.column("c0").to_pylist() == ["2025-03-01 08:30:00.000Z", None]
        assert _same_values(rows, s.consents)

    def test_columns_arrow_cannot_cast_go_through_the_pandas_conversion(self) -> None:
        rows = pa.table({"customer_key": ["C1"], "transactions": pa.array(["12"], pa.string())})
        assert _values(arrow_payload(rows, s.activity), 2).column("c1").to_pylist() == ["12"]
        assert _same_values(rows, s.activity)
