"""The file connector stops on unusable files, naming the file and column, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.sources.files import read_csv_entity, read_directory, read_parquet_entity
from tasks.sources.raw import SourceError
from tests.support.factories import raw_set, write_csvs


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    write_csvs(
        tmp_path, raw_set(customers=[{}], contracts=[{}], instalments=[{}], activity=[{}], consents=[{}])
    )
    return tmp_path


def test_reads_every_entity_from_a_directory(source_dir: Path) -> None:
    raws = read_directory(source_dir)
    assert set(raws) == set(ENTITY_ORDER)
    assert raws[Entity.CUSTOMERS].frame.loc[0, "customer_key"] == "C0000001"


def test_missing_required_column_names_the_file_and_column(source_dir: Path) -> None:
    path = source_dir / "contracts.csv"
    frame = pd.read_csv(path, dtype=str).drop(columns=["term_end"])
    frame.to_csv(path, index=False)
    with pytest.raises(SourceError) as err:
        read_directory(source_dir)
    assert str(path) in str(err.value)
    assert "term_end" in str(err.value)


def test_several_missing_columns_are_all_named(source_dir: Path) -> None:
    path = source_dir / "customers.csv"
    pd.read_csv(path, dtype=str).drop(columns=["market", "locale"]).to_csv(path, index=False)
    with pytest.raises(SourceError, match="market, locale"):
        read_csv_entity(path, Entity.CUSTOMERS)


def test_missing_file_stops_the_extract(source_dir: Path) -> None:
    (source_dir / "instalments.csv").unlink()
    with pytest.raises(SourceError, match=r"no file for instalments: expected instalments\.csv"):
        read_directory(source_dir)


def test_file_that_is_not_text_stops_the_extract(source_dir: Path) -> None:
    path = source_dir / "activity.csv"
    path.write_bytes(b"customer_key,month\n\xff\xfe\x00garbage")
    with pytest.raises(SourceError, match=r"activity\.csv: not UTF-8 text \(line 2"):
        read_directory(source_dir)


def test_empty_file_stops_the_extract(source_dir: Path) -> None:
    (source_dir / "consents.csv").write_text("")
    with pytest.raises(SourceError, match="file is empty"):
        read_directory(source_dir)


def test_unreadable_file_stops_the_extract(source_dir: Path) -> None:
    path = source_dir / "customers.csv"
    path.unlink()
    path.mkdir()
    with pytest.raises(SourceError, match="cannot read file"):
        read_directory(source_dir)


def test_two_files_for_one_entity_are_refused(source_dir: Path) -> None:
    pd.read_csv(source_dir / "customers.csv", dtype=str).to_parquet(source_dir / "customers.parquet")
    with pytest.raises(SourceError, match="more than one file for customers"):
        read_directory(source_dir)


def test_line_numbers_follow_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    header = "customer_key,market,locale,first_name\n"
    path.write_text(header + 'C1,DE,de-DE,"Anna\nMaria"\nC2,DE,de-DE,Bob\n')
    raw = read_csv_entity(path, Entity.CUSTOMERS)
    assert list(raw.lines) == [2, 4]


def test_parquet_rows_are_numbered_and_read_as_text(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "contract_key": ["K1"],
            "customer_key": ["C1"],
            "product": ["loan"],
            "term_end": pd.to_datetime(["2026-12-01"]),
            "price": [119.9],
            "currency": ["EUR"],
        }
    )
    frame.to_parquet(tmp_path / "contracts.parquet")
    raw = read_parquet_entity(tmp_path / "contracts.parquet", Entity.CONTRACTS)
    assert raw.line_label == "row"
    assert list(raw.lines) == [1]
    assert raw.frame.loc[0, "term_end"] == "2026-12-01"
    assert raw.frame.loc[0, "price"] == "119.9"


def test_corrupt_parquet_stops_the_extract(tmp_path: Path) -> None:
    (tmp_path / "contracts.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        read_parquet_entity(tmp_path / "contracts.parquet", Entity.CONTRACTS)
