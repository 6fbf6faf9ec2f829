"""The SQL connector reads mapped tables and queries from any SQLAlchemy URL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasks.domain.contract import Entity
from tasks.sources.raw import SourceError
from tasks.sources.sql import load_mapping, read_sql_source
from tasks.sources.validation import validate_all
from tests.support.factories import markets, raw_set

MAPPING = """\
entities:
  customers:
    table: crm_customer
    where: "deleted = 0"
    columns: {customer_key: id, market: country, first_name: given_name}
  contracts: {table: contracts}
  instalments: {table: instalments}
  activity: {query: "SELECT customer_key, month, transactions, last_active FROM activity"}
  consents: {table: consents}
"""


@pytest.fixture
def crm(tmp_path: Path) -> tuple[str, Path]:
    frames = raw_set(
        customers=[{}, {"customer_key": "C0000002"}],
        contracts=[{}],
        instalments=[{}],
        activity=[{}],
        consents=[{}],
    )
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        cust = frames[Entity.CUSTOMERS].frame.rename(
            columns={"customer_key": "id", "market": "country", "first_name": "given_name"}
        )
        cust["deleted"] = [0, 1]
        cust.to_sql("crm_customer", conn, index=False)
        for entity in (Entity.CONTRACTS, Entity.INSTALMENTS, Entity.ACTIVITY, Entity.CONSENTS):
            frames[entity].frame.to_sql(entity.value, conn, index=False)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    return f"sqlite:///{db}", mapping


def test_mapped_tables_and_queries_become_canonical_rows(crm: tuple[str, Path]) -> None:
    url, mapping = crm
    raws = read_sql_source(url, load_mapping(mapping))
    assert raws[Entity.CUSTOMERS].frame["customer_key"].tolist() == ["C0000001"]
    assert raws[Entity.CUSTOMERS].source == "sql:crm_customer"
    result = validate_all(raws, markets())
    assert result.quarantine.empty
    assert len(result.clean[Entity.CONTRACTS]) == 1


def test_missing_column_after_mapping_names_the_table(crm: tuple[str, Path]) -> None:
    url, mapping = crm
    mapping.write_text(MAPPING.replace("market: country, ", ""))
    with pytest.raises(SourceError, match="sql:crm_customer: missing required column market"):
        read_sql_source(url, load_mapping(mapping))


def test_failing_query_stops_the_extract(crm: tuple[str, Path]) -> None:
    url, mapping = crm
    mapping.write_text(MAPPING.replace("FROM activity", "FROM no_such_table"))
    with pytest.raises(SourceError, match="query failed"):
        read_sql_source(url, load_mapping(mapping))


def test_mapping_with_an_unknown_contract_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MAPPING.replace("given_name}", "given_name, nickname: nick}"))
    with pytest.raises(SourceError, match="unknown contract column"):
        load_mapping(path)


def test_shipped_example_mapping_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_mapping(root / "config/sources/sql-mapping.example.yaml").url
