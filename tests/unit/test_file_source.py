"""The file connector stops on unusable files, naming the file and column, before anything is sent."""

from __future__ import annotations

import gzip
import io
import pickle
import random
from pathlib import Path

import pandas as pd
import pytest

from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.sources.files import (
    arrow_parse,
    check_directory,
    iter_entity_file,
    read_csv_entity,
    read_directory,
    read_parquet_entity,
)
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


def _chunked(path: Path, entity: Entity, rows: int) -> tuple[pd.DataFrame, list[int], list[int]]:
    parts = list(iter_entity_file(path, entity, rows))
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    return frame, [int(n) for p in parts for n in p.lines], [len(p.frame) for p in parts]


class TestChunkedReading:
    HEADER = "customer_key,market,locale,first_name\n"

    def test_chunks_hold_the_asked_number_of_rows(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        path.write_text(self.HEADER + "".join(f"C{i},DE,de-DE,N{i}\n" for i in range(10)))
        _, lines, sizes = _chunked(path, Entity.CUSTOMERS, 3)
        assert sizes == [3, 3, 3, 1]
        assert lines == list(range(2, 12))

    def test_quoted_newlines_blank_lines_and_crlf_keep_exact_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        body = (
            'C1,DE,de-DE,"Anna\r\nMaria"\r\n\r\nC2,DE,de-DE,Bob\r\n  \r\n'
            'C3,DE,de-DE,"x,""y"""\r\nC4,DE,de-DE,Z'
        )
        path.write_bytes(b"\xef\xbb\xbf" + (self.HEADER.replace("\n", "\r\n") + body).encode())
        for rows in (1, 2, 100):
            frame, lines, _ = _chunked(path, Entity.CUSTOMERS, rows)
            assert lines == [2, 5, 7, 8]
            assert frame["first_name"].tolist() == ["Anna\r\nMaria", "Bob", 'x,"y"', "Z"]
            assert frame.equals(read_csv_entity(path, Entity.CUSTOMERS).frame)

    def test_a_stray_quote_in_an_unquoted_field_does_not_shift_the_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        path.write_text(self.HEADER + 'C1,DE,de-DE,O"Brien\nC2,DE,de-DE,"Anna\nMaria"\nC3,DE,de-DE,Bob\n')
        for rows in (1, 2, 100):
            frame, lines, _ = _chunked(path, Entity.CUSTOMERS, rows)
            assert lines == [2, 3, 5]
            assert frame["first_name"].tolist() == ['O"Brien', "Anna\nMaria", "Bob"]

    def test_gzip_files_are_read_in_chunks(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv.gz"
        path.write_bytes(gzip.compress((self.HEADER + "C1,DE,de-DE,A\nC2,DE,de-DE,B\n").encode()))
        frame, lines, sizes = _chunked(path, Entity.CUSTOMERS, 1)
        assert (frame["customer_key"].tolist(), lines, sizes) == (["C1", "C2"], [2, 3], [1, 1])

    def test_text_that_is_not_utf8_in_a_later_chunk_names_its_line(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        rows = "".join(f"C{i},DE,de-DE,N{i}\n" for i in range(5))
        path.write_bytes((self.HEADER + rows).encode() + b"C9,DE,de-DE,\xff\n")
        with pytest.raises(SourceError, match=r"not UTF-8 text \(line 7, byte"):
            _chunked(path, Entity.CUSTOMERS, 2)

    def test_a_row_with_too_many_fields_names_its_file_line(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        rows = "".join(f"C{i},DE,de-DE,N{i}\n" for i in range(5))
        path.write_text(self.HEADER + rows + "C9,DE,de-DE,N,extra\n")
        with pytest.raises(SourceError, match=r"not a readable CSV file: .*line 7"):
            _chunked(path, Entity.CUSTOMERS, 2)

    def test_a_header_only_file_gives_one_empty_chunk(self, tmp_path: Path) -> None:
        path = tmp_path / "customers.csv"
        path.write_text(self.HEADER)
        parts = list(iter_entity_file(path, Entity.CUSTOMERS, 5))
        assert len(parts) == 1 and parts[0].frame.empty
        assert list(parts[0].frame.columns) == ["customer_key", "market", "locale", "first_name"]

    def test_parquet_rows_are_numbered_across_chunks(self, tmp_path: Path) -> None:
        frame = pd.DataFrame({"customer_key": [f"C{i}" for i in range(5)], "market": "DE", "locale": "de-DE"})
        frame.to_parquet(tmp_path / "customers.parquet")
        _, lines, sizes = _chunked(tmp_path / "customers.parquet", Entity.CUSTOMERS, 2)
        assert (lines, sizes) == ([1, 2, 3, 4, 5], [2, 2, 1])

    def test_every_header_is_checked_before_any_row_is_read(self, source_dir: Path) -> None:
        path = source_dir / "consents.csv"
        pd.read_csv(path, dtype=str).drop(columns=["status"]).to_csv(path, index=False)
        with pytest.raises(SourceError, match=r"consents\.csv: missing required column status"):
            check_directory(source_dir)


def _pandas_read(data: bytes) -> pd.DataFrame | None:
    """Read CSV bytes as the connector's pandas path does; None when pandas refuses them."""
    try:
        frame = pd.read_csv(
            io.BytesIO(data), encoding="utf-8", dtype=str, keep_default_na=False, na_values=[]
        )
    except (pd.errors.ParserError, ValueError):
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _names(data: bytes) -> list[str]:
    header = data.decode().splitlines()[0] + "\n"
    return [str(c) for c in pd.read_csv(io.StringIO(header), dtype=str).columns]


def _same(arrow: pd.DataFrame, pandas: pd.DataFrame | None) -> bool:
    return (
        pandas is not None
        and list(arrow.columns) == list(pandas.columns)
        and list(arrow.dtypes) == list(pandas.dtypes)
        and arrow.astype(object).values.tolist() == pandas.astype(object).values.tolist()
    )


class TestArrowReading:
    @pytest.mark.parametrize(
        "text",
        [
            "a,b\n1,2\n3,4\n",
            "a,b\n1,\n,\n ,  x \n",
            "a,b\r\n1,2\r\n\r\n3,4",
            "a,b\n\n\nLucía,Ruiz Rodríguez\n\t,é\n",
            " a , b ,c\n1,2,3\n",
            "a,a,\n1,2,3\n",
            "a,b\n",
        ],
    )
    def test_plain_csv_reads_as_pandas_reads_it(self, text: str) -> None:
        data = text.encode()
        frame = arrow_parse(data, _names(data))
        assert frame is not None and _same(frame, _pandas_read(data))

    @pytest.mark.parametrize(
        "text",
        [
            'a,b\n1,"2"\n',
            'a,b\nx,"y\n',
            "a,b\n\r,1\n",
            "a\n1\n  \n",
            "a,b\n1\n",
            "a,b\n1,2,3\n",
            "a,b\n1,2\n3,4,5,6\n",
        ],
    )
    def test_text_where_pandas_could_read_otherwise_is_left_to_pandas(self, text: str) -> None:
        data = text.encode()
        assert arrow_parse(data, _names(data)) is None

    def test_random_plain_csv_reads_as_pandas_reads_it_or_is_left_to_pandas(self) -> None:
        parts = ["a", "b", ",", " ", "\t", "é", "\n", "\r\n", "\r", "x,y", ",,", '"', '""']
        rng = random.Random(7)
        read = 0
        for _ in range(3000):
            data = ("h1,h2\n" + "".join(rng.choice(parts) for _ in range(rng.randint(0, 14)))).encode()
            frame = arrow_parse(data, ["h1", "h2"])
            if frame is not None:
                read += 1
                assert _same(frame, _pandas_read(data)), data
        assert read > 300

    def test_chunks_read_by_arrow_equal_those_read_by_pandas(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "customers.csv"
        rows = "".join(f"C{i}, DE ,de-DE,N{i}\n" if i % 7 else "\n" for i in range(40))
        path.write_text(TestChunkedReading.HEADER + rows + 'C99,DE,de-DE,"Q"\n')
        arrow = list(iter_entity_file(path, Entity.CUSTOMERS, 6))
        monkeypatch.setattr("tasks.sources.files.arrow_parse", lambda data, names: None)
        pandas = list(iter_entity_file(path, Entity.CUSTOMERS, 6))
        assert len(arrow) == len(pandas) == 6
        for a, p in zip(arrow, pandas, strict=True):
            assert a.frame.equals(p.frame) and a.lines.equals(p.lines)
            assert list(a.frame.dtypes) == list(p.frame.dtypes)


def test_a_source_error_crosses_a_process_boundary_with_its_file_and_problem() -> None:
    error = SourceError("contracts.csv", "missing required column(s): term_end")
    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, SourceError)
    assert (back.source, back.problem, str(back)) == (error.source, error.problem, str(error))
