"""The staged ingest (extract, validate, load in chunks) gives the same store, quarantine and counts
whatever the chunk size, on SQLite and PostgreSQL, and stops on a bad file before loading anything."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, inspect, select, text

from config.settings import Settings
from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.extract import stage_sources
from tasks.load import load_beside, load_staged, load_validated
from tasks.sources import validation
from tasks.sources.demo_data import generate_portfolio, write_portfolio
from tasks.sources.files import read_directory
from tasks.sources.raw import SourceError
from tasks.sources.sql import load_mapping, read_sql_source
from tasks.sources.staging import staging_dir
from tasks.sources.validation import Handoff, StagedValidation, validate_all, validate_staged
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tasks.store.repository import ENTITY_TABLES, known_keys
from tasks.validate import validation_stats
from tests.support.factories import markets, raw_set, write_csvs
from tests.support.postgres import scratch_database

MARKETS = markets()
HASH_KEY = b"test-hash-key"
# Set by the store at load time, so never equal between two loads.
LOAD_TIMES = {"loaded_at", "recorded_at", "created_at"}


@dataclass
class Stores:
    """Two empty stores of one backend, to load the same source into twice."""

    first: Engine
    second: Engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"]
        engines = [make_engine(u) for u in urls]
        for e in engines:
            upgrade(e)
        yield Stores(*engines)
    else:
        admin = request.getfixturevalue("pg_admin_dsn")
        with scratch_database(admin) as first_url, scratch_database(admin) as second_url:
            engines = [make_engine(first_url), make_engine(second_url)]
            for e in engines:
                upgrade(e)
            yield Stores(*engines)
    for e in engines:
        e.dispose()


def _settings(source: Path, home: Path, chunk_rows: int) -> Settings:
    return Settings(source_dir=source, home=home, ingest_chunk_rows=chunk_rows)


def _ingest(engine: Engine, source: Path, home: Path, chunk_rows: int, cycle_id: int = 1) -> dict[str, Any]:
    """Run extract, validate and load the way the cycle's tasks do; return the stage counts."""
    staged = stage_sources(_settings(source, home, chunk_rows), staging_dir(home, cycle_id))

    def known(entity: Entity) -> pd.Index:
        with engine.connect() as conn:
            return known_keys(conn, entity)

    def write(handoff: Handoff) -> dict[str, Any]:
        with engine.begin() as conn:
            return load_staged(conn, handoff, cycle_id, "bank", HASH_KEY)

    # The load writes each entity while the next is validated, as in the cycle.
    with load_beside(write) as (handoff, loading):
        result = validate_staged(
            staged.entities, MARKETS, Path(staged.directory) / "validated", known, handoff
        )
        loaded = loading.result()
    return {"validate": validation_stats(result), "load": loaded, "result": result}


def _snapshot(engine: Engine) -> dict[str, pd.DataFrame]:
    out = {}
    with engine.connect() as conn:
        for entity in ENTITY_ORDER:
            table = ENTITY_TABLES[entity]
            columns = [c for c in table.columns if c.name not in LOAD_TIMES]
            order = [table.c.consent_id] if entity is Entity.CONSENTS else list(table.primary_key.columns)
            out[entity.value] = read_frame(conn, select(*columns).order_by(*order)).reset_index(drop=True)
        q = s.quarantine
        columns = [
            q.c.entity,
            q.c.source,
            q.c.line,
            q.c.record_key,
            q.c.field,
            q.c.reason,
            q.c.detail,
            q.c.raw,
        ]
        out["quarantine"] = read_frame(conn, select(*columns).order_by(q.c.quarantine_id))
    return out


@pytest.fixture
def portfolio(tmp_path: Path) -> Path:
    """A small demo portfolio with dirty rows: repeated keys, orphans, bad values, a quoted newline."""
    source = tmp_path / "source"
    write_portfolio(generate_portfolio(40, 3, date(2026, 11, 22), MARKETS), source, "csv")

    def edit(name: str, change: Any) -> None:
        path = source / f"{name}.csv"
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        change(frame).to_csv(path, index=False)

    def customers(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[10, "first_name"] = "Anna\nMaria"
        frame.loc[12, "phone"] = "12345"
        conflicting = frame.iloc[30].copy()
        conflicting["last_name"] = "Other"
        return pd.concat([frame, frame.iloc[[3]], conflicting.to_frame().T], ignore_index=True)

    def contracts(frame: pd.DataFrame) -> pd.DataFrame:
        orphan = frame.iloc[0].copy()
        orphan["contract_key"], orphan["customer_key"] = "K9999999", "C9999999"
        frame.loc[4, "price"] = "-1.00"
        return pd.concat([frame, orphan.to_frame().T], ignore_index=True)

    edit("customers", customers)
    edit("contracts", contracts)
    edit("consents", lambda frame: pd.concat([frame, frame.iloc[[0, 5]]], ignore_index=True))
    return source


def test_tiny_chunks_give_the_same_store_quarantine_and_counts(
    stores: Stores, portfolio: Path, tmp_path: Path
) -> None:
    tiny = _ingest(stores.first, portfolio, tmp_path / "tiny", chunk_rows=7)
    whole = _ingest(stores.second, portfolio, tmp_path / "whole", chunk_rows=500_000)
    assert len(tiny["result"].clean[Entity.INSTALMENTS]) > 10
    assert tiny["validate"] == whole["validate"]
    assert tiny["load"] == whole["load"]
    first, second = _snapshot(stores.first), _snapshot(stores.second)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, second[name], check_dtype=False, obj=name)
    reasons = {"DUPLICATE_KEY", "BAD_PHONE", "UNKNOWN_PARENT", "NEGATIVE_AMOUNT"}
    assert set(first["quarantine"]["reason"]) >= reasons


def test_chunks_validated_in_small_slices_give_the_same_store_quarantine_and_counts(
    stores: Stores, portfolio: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _ingest(stores.second, portfolio, tmp_path / "whole", chunk_rows=500_000)
    # A few rows a slice, so held-back duplicates are put back among many slices of one chunk.
    monkeypatch.setattr(validation, "_SLICE_BYTES", 2_000)
    sliced = _ingest(stores.first, portfolio, tmp_path / "sliced", chunk_rows=500_000)
    assert len(sliced["result"].clean[Entity.CUSTOMERS]) > 3
    assert sliced["validate"] == whole["validate"]
    assert sliced["load"] == whole["load"]
    first, second = _snapshot(stores.first), _snapshot(stores.second)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, second[name], check_dtype=False, obj=name)


def test_store_and_counts_are_those_of_the_whole_frame_path(
    stores: Stores, portfolio: Path, tmp_path: Path
) -> None:
    staged = _ingest(stores.first, portfolio, tmp_path / "small", chunk_rows=50)
    whole = validate_all(read_directory(portfolio), MARKETS)
    with stores.second.begin() as conn:
        loaded = load_validated(conn, whole, 1, "bank", HASH_KEY)
    assert staged["validate"] == validation_stats(whole)
    assert staged["load"] == loaded
    first, second = _snapshot(stores.first), _snapshot(stores.second)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, second[name], check_dtype=False, obj=name)


def test_consents_are_stored_as_crm_records_of_the_loads_own_time(
    stores: Stores, portfolio: Path, tmp_path: Path
) -> None:
    _ingest(stores.first, portfolio, tmp_path / "small", chunk_rows=50)
    with stores.first.connect() as conn:
        consents = read_frame(conn, select(s.consents.c.origin, s.consents.c.recorded_at))
        loaded = read_frame(conn, select(s.customers.c.loaded_at))
    assert len(consents) > 50 and set(consents["origin"]) == {"crm"}
    assert set(consents["recorded_at"]) == set(loaded["loaded_at"]) and len(set(loaded["loaded_at"])) == 1


@pytest.mark.postgres
def test_a_first_load_writes_its_rows_frozen_so_readers_need_not_look_up_whether_each_committed(
    pg_admin_dsn: str, portfolio: Path, tmp_path: Path
) -> None:
    with scratch_database(pg_admin_dsn) as url:
        engine = make_engine(url)
        upgrade(engine)
        _ingest(engine, portfolio, tmp_path / "home", chunk_rows=50)
        with engine.connect() as conn:
            pages = conn.execute(
                text("SELECT relname, relpages, relallvisible FROM pg_class WHERE relname = ANY(:t)"),
                {"t": [ENTITY_TABLES[e].name for e in ENTITY_ORDER]},
            ).all()
        engine.dispose()
    # The load analyzes what it wrote: every page is all-visible, as only a vacuum would make it otherwise.
    assert len(pages) == len(ENTITY_ORDER)
    assert all(relpages > 0 and visible == relpages for _, relpages, visible in pages), pages


def test_duplicate_key_split_across_chunks_is_caught(stores: Stores, tmp_path: Path) -> None:
    customers = [{"customer_key": f"C{i:07d}"} for i in range(1, 20)]
    customers.append({"customer_key": "C0000002", "last_name": "Other"})
    customers.append({"customer_key": "C0000005"})
    write_csvs(tmp_path / "source", raw_set(customers=customers, contracts=[{"customer_key": "C0000002"}]))
    _ingest(stores.first, tmp_path / "source", tmp_path / "home", chunk_rows=7)
    stored = _snapshot(stores.first)
    dups = stored["quarantine"].query("reason == 'DUPLICATE_KEY'")
    assert dups[["line", "detail"]].values.tolist() == [
        [3, "conflicting rows at lines 3, 21"],
        [21, "conflicting rows at lines 3, 21"],
        [22, "identical copy of line 6"],
    ]
    assert "C0000002" not in set(stored["customers"]["customer_key"])
    assert "C0000005" in set(stored["customers"]["customer_key"])
    # The contract of the quarantined customer is quarantined too, though it came in another chunk.
    assert stored["quarantine"].query("entity == 'contracts'")["reason"].tolist() == ["UNKNOWN_PARENT"]


def test_duplicate_key_within_one_chunk_is_caught(stores: Stores, tmp_path: Path) -> None:
    customers = [{"customer_key": f"C{i:07d}"} for i in range(1, 20)]
    customers.insert(3, {"customer_key": "C0000002"})
    write_csvs(tmp_path / "source", raw_set(customers=customers))
    _ingest(stores.first, tmp_path / "source", tmp_path / "home", chunk_rows=7)
    dups = _snapshot(stores.first)["quarantine"].query("reason == 'DUPLICATE_KEY'")
    assert dups[["line", "detail"]].values.tolist() == [[5, "identical copy of line 3"]]


@pytest.mark.parametrize(
    "hash_keys",
    [
        validation._hashes,
        lambda keys: np.zeros(len(keys), dtype=np.int64),
        lambda keys: keys.str.len().to_numpy(dtype=np.int64),
    ],
    ids=["text-hashes", "every-hash-zero", "every-key-colliding"],
)
def test_repeated_keys_are_the_keys_seen_twice_whatever_their_hashes(
    tmp_path: Path, hash_keys: Callable[[pd.Series], np.ndarray]
) -> None:
    customers = [{"customer_key": f"C{i:07d}"} for i in range(1, 20)]
    customers.insert(3, {"customer_key": "C0000002"})
    customers += [{"customer_key": ""}, {"customer_key": ""}, {"customer_key": "C0000017"}]
    write_csvs(tmp_path / "source", raw_set(customers=customers))
    home = tmp_path / "home"
    staged = stage_sources(_settings(tmp_path / "source", home, 7), staging_dir(home, 1))
    entity = next(e for e in staged.entities if e.entity is Entity.CUSTOMERS)
    assert sorted(validation.repeated_keys(entity, hash_keys)) == ["C0000002", "C0000017"]


def test_bad_header_in_the_last_file_stops_before_anything_is_staged(stores: Stores, portfolio: Path) -> None:
    consents = portfolio / "consents.csv"
    pd.read_csv(consents, dtype=str).drop(columns=["captured_at"]).to_csv(consents, index=False)
    home = portfolio.parent / "home"
    with pytest.raises(SourceError) as err:
        stage_sources(_settings(portfolio, home, 7), staging_dir(home, 1))
    assert str(consents) in str(err.value) and "captured_at" in str(err.value)
    assert not staging_dir(home, 1).exists()
    assert all(frame.empty for frame in _snapshot(stores.first).values())


def test_unreadable_row_late_in_a_file_stops_before_anything_is_loaded(portfolio: Path) -> None:
    instalments = portfolio / "instalments.csv"
    instalments.write_bytes(instalments.read_bytes() + b"I9,K9,2026-01-01,1.00,EUR,\xff\n")
    home = portfolio.parent / "home"
    with pytest.raises(SourceError, match=r"instalments\.csv: not UTF-8 text \(line \d+"):
        stage_sources(_settings(portfolio, home, 7), staging_dir(home, 1))
    assert not staging_dir(home, 1).exists()


def _wait_for_the_load_to_copy_into(engine: Engine, table: str) -> None:
    """Return once another session has copied rows into `table` and waits, its transaction open."""
    waiting = text(
        "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
        "AND state = 'idle in transaction' AND query LIKE :copy"
    )
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while conn.execute(waiting, {"copy": f'COPY "{table}" %'}).first() is None:
            assert time.monotonic() < deadline, f"the load never copied into {table}"
            conn.rollback()
            time.sleep(0.05)


@pytest.mark.postgres
def test_the_load_copies_an_entitys_first_chunk_while_validation_goes_on_and_keeps_nothing_when_it_stops(
    pg_admin_dsn: str, portfolio: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    staged = stage_sources(_settings(portfolio, home, 50), staging_dir(home, 1))
    validated = validate_staged(staged.entities, MARKETS, Path(staged.directory) / "validated")
    assert len(validated.clean[Entity.INSTALMENTS]) > 1
    with scratch_database(pg_admin_dsn) as url:
        engine = make_engine(url)
        upgrade(engine)

        def write(handoff: Handoff) -> dict[str, Any]:
            with engine.begin() as conn:
                return load_staged(conn, handoff, 1, "bank", HASH_KEY)

        with (
            pytest.raises(RuntimeError, match="instalments.csv unusable"),
            load_beside(write) as (handoff, loading),
        ):
            for entity in (Entity.CUSTOMERS, Entity.CONTRACTS):
                handoff.start(entity).close(validated.clean[entity])
            handoff.start(Entity.INSTALMENTS).add(validated.clean[Entity.INSTALMENTS][0])
            _wait_for_the_load_to_copy_into(engine, "instalments")
            raise RuntimeError("instalments.csv unusable")
        with pytest.raises(SourceError, match="nothing was loaded"):
            loading.result()
        assert all(frame.empty for frame in _snapshot(engine).values())
        # A first load builds the key after the rows; the rollback puts the one it dropped back.
        assert inspect(engine).get_pk_constraint("instalments")["constrained_columns"] == ["instalment_key"]
        engine.dispose()


def test_rerun_of_the_same_source_changes_nothing(stores: Stores, portfolio: Path, tmp_path: Path) -> None:
    _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=50, cycle_id=1)
    before = _snapshot(stores.first)
    again = _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=50, cycle_id=2)
    for entity in ENTITY_ORDER:
        counts = again["load"][entity.value]
        assert counts["inserted"] == counts["updated"] == 0, entity
        assert counts["unchanged"] == again["validate"]["rows_valid"][entity.value]
    after = _snapshot(stores.first)
    for entity in ENTITY_ORDER:
        pd.testing.assert_frame_equal(after[entity.value], before[entity.value], check_dtype=False)


def test_changed_rows_are_updated_in_place_and_erased_customers_stay_erased(
    stores: Stores, portfolio: Path, tmp_path: Path
) -> None:
    _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=50, cycle_id=1)
    with stores.first.begin() as conn:
        keys = read_frame(conn, select(s.customers.c.customer_key).order_by(s.customers.c.customer_key))
        erased, renamed = keys["customer_key"].iloc[0], keys["customer_key"].iloc[1]
        conn.execute(
            s.customers.update()
            .where(s.customers.c.customer_key == erased)
            .values(first_name=None, email=None, phone_e164=None, erased_at=pd.Timestamp.now(tz="UTC"))
        )
    customers = pd.read_csv(portfolio / "customers.csv", dtype=str, keep_default_na=False)
    customers.loc[customers["customer_key"].isin([erased, renamed]), "first_name"] = "Changed"
    customers.to_csv(portfolio / "customers.csv", index=False)
    again = _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=50, cycle_id=2)
    assert again["load"]["customers"]["inserted"] == 0
    assert again["load"]["customers"]["updated"] == 1
    names = _snapshot(stores.first)["customers"].set_index("customer_key")["first_name"]
    assert names[renamed] == "Changed"
    assert names[erased] is None


def test_staged_results_hold_only_paths_and_counts(portfolio: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    staged = stage_sources(_settings(portfolio, home, 50), staging_dir(home, 7))
    assert staged.directory == str(staging_dir(home, 7))
    assert staged.rows == {e.value: len(f.frame) for e, f in read_directory(portfolio).items()}
    result = validate_staged(
        staged.entities,
        MARKETS,
        Path(staged.directory) / "validated",
    )
    assert isinstance(result, StagedValidation)
    for value in (*result.clean.values(), *result.quarantine.values()):
        for path in [value] if isinstance(value, str) else value:
            assert Path(path).is_relative_to(home)
            assert Path(path).stat().st_mode & 0o077 == 0 or Path(path).parent.stat().st_mode & 0o077 == 0


def test_a_second_load_with_new_changed_and_withdrawn_rows_matches_the_whole_frame_path(
    stores: Stores, portfolio: Path, tmp_path: Path
) -> None:
    def whole_load(engine: Engine, cycle_id: int) -> dict[str, Any]:
        with engine.connect() as conn:
            result = validate_all(read_directory(portfolio), MARKETS, lambda e: known_keys(conn, e))
        with engine.begin() as conn:
            return load_validated(conn, result, cycle_id, "bank", HASH_KEY)

    _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=7, cycle_id=1)
    whole_load(stores.second, 1)

    def change(name: str, edit: Any) -> None:
        path = portfolio / f"{name}.csv"
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        edit(frame).to_csv(path, index=False)

    def customers(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[[2, 20], "last_name"] = "Renamed"
        new = frame.iloc[[5, 6]].copy()
        new["customer_key"] = ["C8000001", "C8000002"]
        return pd.concat([frame, new], ignore_index=True)

    def instalments(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame.index[::9], "paid_date"] = "2026-11-20"
        return frame

    def consents(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[[1, 8], ["status", "withdrawn_at"]] = ["withdrawn", "2026-11-01T08:00:00Z"]
        return frame

    change("customers", customers)
    change("instalments", instalments)
    change("consents", consents)
    staged = _ingest(stores.first, portfolio, tmp_path / "home", chunk_rows=7, cycle_id=2)
    loaded = whole_load(stores.second, 2)
    assert staged["load"] == loaded
    assert loaded["customers"]["inserted"] == 2 and loaded["customers"]["updated"] >= 2
    assert loaded["instalments"]["updated"] > 10 and loaded["consents"]["updated"] == 2
    first, second = _snapshot(stores.first), _snapshot(stores.second)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, second[name], check_dtype=False, obj=name)


SQL_MAPPING = """\
entities:
  customers: {table: crm_customer, columns: {customer_key: id, market: country}}
  contracts: {table: contracts}
  instalments: {table: instalments}
  activity: {query: "SELECT customer_key, month, transactions, last_active FROM activity"}
  consents: {table: consents}
"""


def _sql_source(portfolio: Path, tmp_path: Path) -> Settings:
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        for entity in ENTITY_ORDER:
            frame = pd.read_csv(portfolio / f"{entity.value}.csv", dtype=str, keep_default_na=False)
            if entity is Entity.CUSTOMERS:
                frame = frame.rename(columns={"customer_key": "id", "market": "country"})
                frame.to_sql("crm_customer", conn, index=False)
            else:
                frame.to_sql(entity.value, conn, index=False)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(SQL_MAPPING)
    return Settings(
        source_kind="sql", source_url=f"sqlite:///{db}", source_mapping=mapping, home=tmp_path / "home"
    )


def test_sql_source_in_chunks_validates_like_the_whole_tables(portfolio: Path, tmp_path: Path) -> None:
    settings = _sql_source(portfolio, tmp_path).model_copy(update={"ingest_chunk_rows": 9})
    staged = stage_sources(settings, staging_dir(settings.home, 1))
    assert all(len(e.chunks) > 1 for e in staged.entities)
    result = validate_staged(
        staged.entities,
        MARKETS,
        Path(staged.directory) / "validated",
    )
    whole = validate_all(read_sql_source(settings.source_url, load_mapping(settings.source_mapping)), MARKETS)
    assert validation_stats(result) == validation_stats(whole)


def test_sql_source_missing_a_column_stops_before_anything_is_staged(portfolio: Path, tmp_path: Path) -> None:
    settings = _sql_source(portfolio, tmp_path)
    assert settings.source_mapping is not None
    settings.source_mapping.write_text(SQL_MAPPING.replace("{table: consents}", '{query: "SELECT 1 AS x"}'))
    with pytest.raises(SourceError, match="sql:consents: missing required column"):
        stage_sources(settings, staging_dir(settings.home, 1))
    assert not staging_dir(settings.home, 1).exists()
