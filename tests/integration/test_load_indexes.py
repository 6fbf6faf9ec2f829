"""A first bulk load into an empty PostgreSQL table builds its indexes after the rows, and keeps them."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from tasks.store import schema as s
from tasks.store.ingest import ConsentAppend, sync_chunks

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def _indexes(conn: Connection) -> set[tuple[str, str, str]]:
    """Every index and constraint of the store's tables, by name and definition."""
    indexes = conn.execute(
        text("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    ).all()
    constraints = conn.execute(
        text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace"
        )
    ).all()
    return {tuple(r) for r in indexes} | {tuple(r) for r in constraints}  # type: ignore[misc]


def _instalments(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "instalment_key": keys,
            "contract_key": [f"K{k}" for k in keys],
            "due_date": date(2026, 12, 1),
            "amount": 10.0,
            "currency": "EUR",
            "row_hash": "h",
            "loaded_at": NOW,
        }
    )


def _load(conn: Connection, chunks: list[pd.DataFrame]) -> int:
    def read(i: int, columns: list[str] | None) -> pd.DataFrame:
        return chunks[i] if columns is None else chunks[i][columns]

    stats = sync_chunks(conn, s.instalments, ["instalment_key"], len(chunks), read)
    return stats.inserted


def test_first_load_into_an_empty_table_leaves_every_index_and_key_as_migrated(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        before = _indexes(conn)
    assert any(name == "pk_instalments" for _, name, _ in before)
    with pg_engine.begin() as conn:
        assert _load(conn, [_instalments(["I1", "I2"]), _instalments(["I3"])]) == 3
    with pg_engine.connect() as conn:
        assert _indexes(conn) == before
    with pytest.raises(IntegrityError), pg_engine.begin() as conn:
        conn.execute(s.instalments.insert(), _instalments(["I2"]).to_dict("records"))


def test_first_load_with_a_repeated_key_fails_and_keeps_the_indexes(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        before = _indexes(conn)
    with pytest.raises(IntegrityError), pg_engine.begin() as conn:
        _load(conn, [_instalments(["I1", "I2"]), _instalments(["I2"])])
    with pg_engine.connect() as conn:
        assert _indexes(conn) == before
        assert conn.execute(text("SELECT count(*) FROM instalments")).scalar_one() == 0


def _consents(customers: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": customers,
            "channel": "email",
            "purpose": "marketing",
            "controller": "bank",
            "status": "granted",
            "lawful_basis": "consent",
            "captured_at": NOW,
            "row_hash": "h",
        }
    )


def test_first_consent_load_into_an_empty_table_keeps_its_indexes_and_file_order(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        before = _indexes(conn)
    assert any(name == "ix_consents_current" for _, name, _ in before)
    with pg_engine.begin() as conn:
        append = ConsentAppend(conn, NOW)
        append.add(_consents(["C2", "C1"]))
        append.add(_consents(["C3"]))
        assert append.finish().inserted == 3
    with pg_engine.connect() as conn:
        assert _indexes(conn) == before
        order = conn.execute(text("SELECT customer_key FROM consents ORDER BY consent_id")).scalars()
        assert list(order) == ["C2", "C1", "C3"]


def _defaults(conn: Connection) -> dict[str, str | None]:
    rows = conn.execute(
        text(
            "SELECT table_name || '.' || column_name, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        )
    ).all()
    return {str(name): default for name, default in rows}


def _stamped_load(conn: Connection, chunks: list[pd.DataFrame], at: datetime) -> int:
    def read(i: int, columns: list[str] | None) -> pd.DataFrame:
        frame = chunks[i].drop(columns=["loaded_at"])
        return frame if columns is None else frame[columns]

    stats = sync_chunks(conn, s.instalments, ["instalment_key"], len(chunks), read, stamp={"loaded_at": at})
    return stats.inserted + stats.updated


def _loaded_at(conn: Connection) -> dict[str, datetime]:
    rows = conn.execute(text("SELECT instalment_key, loaded_at FROM instalments")).all()
    return {str(key): at for key, at in rows}


def test_the_load_time_reaches_every_row_without_changing_the_table_defaults(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        before = _defaults(conn)
    first = datetime(2026, 11, 22, 6, 0, 0, 123456, tzinfo=UTC)
    with pg_engine.begin() as conn:
        assert _stamped_load(conn, [_instalments(["I1", "I2"]), _instalments(["I3"])], first) == 3
    with pg_engine.connect() as conn:
        assert _loaded_at(conn) == {"I1": first, "I2": first, "I3": first}
        assert _defaults(conn) == before
    # The table holds rows now: new and changed rows are compared and written, not copied whole.
    later = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    changed = _instalments(["I2", "I4"]).assign(row_hash="h2")
    with pg_engine.begin() as conn:
        assert _stamped_load(conn, [_instalments(["I1"]), changed], later) == 2
    with pg_engine.connect() as conn:
        assert _loaded_at(conn) == {"I1": first, "I2": later, "I3": first, "I4": later}
        assert _defaults(conn) == before


def test_a_first_load_that_fails_leaves_no_default_behind(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        before = _defaults(conn)
    with pytest.raises(IntegrityError), pg_engine.begin() as conn:
        _stamped_load(conn, [_instalments(["I1"]), _instalments(["I1"])], NOW)
    with pg_engine.connect() as conn:
        assert _defaults(conn) == before
        assert conn.execute(text("SELECT count(*) FROM instalments")).scalar_one() == 0
