"""Validation: every quarantine reason, and rows that pass come out canonical."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.domain.contract import CONTRACT, Column, Entity
from tasks.sources.validation import (
    _BY_VALUE,
    KeySet,
    Problems,
    Reason,
    _parse_column,
    _parse_rows,
    _row_hash,
    joined_keys,
    text_hashes,
    validate_all,
    validate_entity,
)
from tests.support.factories import markets, raw, raw_set

MARKETS = markets()


def _reasons(entity: Entity, rows: list[dict[str, str]]) -> list[tuple[int, str, str]]:
    result = validate_entity(raw(entity, rows), MARKETS)
    return [(int(r.line), r.field, r.reason) for r in result.quarantine.itertuples()]


class TestQuarantineReasons:
    @pytest.mark.parametrize(
        ("entity", "override", "field", "reason"),
        [
            (Entity.CUSTOMERS, {"customer_key": ""}, "customer_key", Reason.MISSING_VALUE),
            (Entity.CUSTOMERS, {"customer_key": "C 1"}, "customer_key", Reason.BAD_KEY),
            (Entity.CUSTOMERS, {"phone": "12345"}, "phone", Reason.BAD_PHONE),
            (Entity.CUSTOMERS, {"phone": "030 1234567"}, "phone", Reason.BAD_PHONE),
            (Entity.CUSTOMERS, {"phone": "call me"}, "phone", Reason.BAD_PHONE),
            (Entity.CUSTOMERS, {"locale": "xx-QQ"}, "locale", Reason.UNKNOWN_LOCALE),
            (Entity.CUSTOMERS, {"locale": "klingon"}, "locale", Reason.UNKNOWN_LOCALE),
            (Entity.CUSTOMERS, {"market": "JP"}, "market", Reason.UNKNOWN_MARKET),
            (Entity.CUSTOMERS, {"email": "anna at example.com"}, "email", Reason.BAD_EMAIL),
            (Entity.CUSTOMERS, {"first_name": "<b>Anna</b>"}, "first_name", Reason.UNSAFE_TEXT),
            (Entity.CUSTOMERS, {"last_name": "{{ 7*7 }}"}, "last_name", Reason.UNSAFE_TEXT),
            (Entity.CUSTOMERS, {"first_name": "{% raw %}"}, "first_name", Reason.UNSAFE_TEXT),
            (Entity.CUSTOMERS, {"first_name": "A" * 201}, "first_name", Reason.TOO_LONG),
            (Entity.CUSTOMERS, {"timezone": "Mars/Olympus"}, "timezone", Reason.BAD_TIMEZONE),
            (Entity.CUSTOMERS, {"customer_since": "01/04/2019"}, "customer_since", Reason.BAD_DATE),
            (Entity.CONTRACTS, {"term_end": ""}, "term_end", Reason.MISSING_VALUE),
            (Entity.CONTRACTS, {"product": "mortgage"}, "product", Reason.BAD_CHOICE),
            (Entity.CONTRACTS, {"auto_renew": "maybe"}, "auto_renew", Reason.BAD_BOOL),
            (Entity.CONTRACTS, {"price": "-5.00"}, "price", Reason.NEGATIVE_AMOUNT),
            (Entity.CONTRACTS, {"price": "12,50"}, "price", Reason.BAD_NUMBER),
            (Entity.CONTRACTS, {"currency": "EURO"}, "currency", Reason.BAD_CURRENCY),
            (Entity.CONTRACTS, {"price": "inf"}, "price", Reason.BAD_NUMBER),
            (Entity.CONTRACTS, {"price": "1.005"}, "price", Reason.BAD_NUMBER),
            (Entity.INSTALMENTS, {"amount": "0"}, "amount", Reason.ZERO_AMOUNT),
            (Entity.INSTALMENTS, {"amount": "-250"}, "amount", Reason.NEGATIVE_AMOUNT),
            (Entity.ACTIVITY, {"month": "2026-13"}, "month", Reason.BAD_DATE),
            (Entity.ACTIVITY, {"transactions": "2.5"}, "transactions", Reason.BAD_NUMBER),
            (Entity.CONSENTS, {"captured_at": "yesterday"}, "captured_at", Reason.BAD_DATE),
            (Entity.CONSENTS, {"channel": "fax"}, "channel", Reason.BAD_CHOICE),
        ],
    )
    def test_bad_value_is_quarantined_with_line_field_and_reason(
        self, entity: Entity, override: dict[str, str], field: str, reason: Reason
    ) -> None:
        first_key = {
            Entity.CUSTOMERS: {"customer_key": "C0000009"},
            Entity.CONTRACTS: {"contract_key": "K0000009"},
            Entity.INSTALMENTS: {"instalment_key": "I0000009"},
            Entity.ACTIVITY: {"month": "2026-09"},
            Entity.CONSENTS: {"channel": "sms"},
        }[entity]
        rows = [first_key, override]
        found = _reasons(entity, rows)
        assert (3, field, reason.value) in found
        assert all(line == 3 for line, _, _ in found)

    def test_identical_duplicate_keeps_the_first_copy(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{}, {}]), MARKETS)
        assert list(result.clean["customer_key"]) == ["C0000001"]
        (entry,) = result.quarantine.itertuples()
        assert (entry.line, entry.reason) == (3, Reason.DUPLICATE_KEY.value)
        assert "identical copy of line 2" in entry.detail

    def test_conflicting_duplicates_are_all_quarantined(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{}, {"first_name": "Anne"}]), MARKETS)
        assert result.clean.empty
        assert sorted(result.quarantine["line"]) == [2, 3]
        assert set(result.quarantine["reason"]) == {Reason.DUPLICATE_KEY.value}

    def test_duplicate_consents_with_the_default_controller_are_caught(self) -> None:
        result = validate_entity(
            raw(Entity.CONSENTS, [{}, {}, {"channel": "sms"}, {"channel": "sms", "status": "withdrawn"}]),
            MARKETS,
        )
        assert sorted(zip(result.quarantine["line"], result.quarantine["reason"], strict=True)) == [
            (3, "DUPLICATE_KEY"),
            (4, "DUPLICATE_KEY"),
            (5, "DUPLICATE_KEY"),
        ]

    def test_contract_of_unknown_customer_is_quarantined(self) -> None:
        raws = raw_set(customers=[{}], contracts=[{"customer_key": "C9999999"}])
        result = validate_all(raws, MARKETS)
        (entry,) = result.quarantine.itertuples()
        assert (entry.entity, entry.field, entry.reason) == ("contracts", "customer_key", "UNKNOWN_PARENT")

    def test_children_of_a_quarantined_customer_are_quarantined_too(self) -> None:
        raws = raw_set(customers=[{"phone": "12345"}], contracts=[{}], instalments=[{}])
        result = validate_all(raws, MARKETS)
        assert set(result.quarantine["entity"]) == {"customers", "contracts", "instalments"}
        assert all(result.clean[e].empty for e in (Entity.CUSTOMERS, Entity.CONTRACTS, Entity.INSTALMENTS))

    def test_known_store_keys_count_as_parents(self) -> None:
        raws = raw_set(contracts=[{"customer_key": "C0000500"}])
        result = validate_all(raws, MARKETS, known_keys=lambda e: pd.Index(["C0000500"]))
        assert len(result.clean[Entity.CONTRACTS]) == 1

    def test_every_problem_of_a_row_is_listed(self) -> None:
        found = _reasons(Entity.CUSTOMERS, [{"phone": "12345", "locale": "xx-QQ", "first_name": "<i>"}])
        assert {f for _, f, _ in found} == {"phone", "locale", "first_name"}

    def test_quarantine_keeps_the_raw_row(self) -> None:
        result = validate_entity(raw(Entity.CONTRACTS, [{"price": "-1"}]), MARKETS)
        assert result.quarantine.iloc[0]["raw"]["price"] == "-1"


class TestCanonicalValues:
    def test_phone_becomes_e164_with_the_market_as_region(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{"phone": "0151 23456789"}]), MARKETS)
        assert result.clean.loc[0, "phone"] == "+4915123456789"

    def test_international_phone_from_another_country_is_kept(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{"phone": "+33 6 12 34 56 78"}]), MARKETS)
        assert result.clean.loc[0, "phone"] == "+33612345678"

    def test_missing_timezone_defaults_to_the_market(self) -> None:
        result = validate_entity(
            raw(Entity.CUSTOMERS, [{"market": "es", "locale": "es-ES", "phone": ""}]), MARKETS
        )
        assert (result.clean.loc[0, "market"], result.clean.loc[0, "timezone"]) == ("ES", "Europe/Madrid")

    @pytest.mark.parametrize("tag", ["tr-DE", "en-VN", "de-AT", "vi"])
    def test_real_language_and_territory_pairs_are_accepted(self, tag: str) -> None:
        assert validate_entity(raw(Entity.CUSTOMERS, [{"locale": tag}]), MARKETS).quarantine.empty

    def test_locale_is_normalised(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{"locale": "de_at"}]), MARKETS)
        assert result.clean.loc[0, "locale"] == "de-AT"

    def test_email_domain_is_lower_cased(self) -> None:
        result = validate_entity(raw(Entity.CUSTOMERS, [{"email": "Anna@Example.COM"}]), MARKETS)
        assert result.clean.loc[0, "email"] == "Anna@example.com"

    def test_optional_fields_may_be_empty(self) -> None:
        result = validate_entity(
            raw(Entity.CUSTOMERS, [{"email": "", "phone": "", "first_name": ""}]), MARKETS
        )
        assert result.quarantine.empty
        assert result.clean.loc[0, "email"] is None

    def test_defaults_fill_empty_choices(self) -> None:
        result = validate_entity(raw(Entity.CONTRACTS, [{"status": "", "auto_renew": ""}]), MARKETS)
        assert (result.clean.loc[0, "status"], bool(result.clean.loc[0, "auto_renew"])) == ("active", False)

    def test_row_hash_changes_with_the_row(self) -> None:
        a = validate_entity(raw(Entity.CONTRACTS, [{}]), MARKETS).clean.loc[0, "row_hash"]
        b = validate_entity(raw(Entity.CONTRACTS, [{"price": "120.00"}]), MARKETS).clean.loc[0, "row_hash"]
        assert a != b


# Values of every kind parsed by value, good and bad, some repeated, in no particular order.
_TRICKY = [
    "", "2026-11-01", "2026-02-30", "2026-1-5", "2026-11", "2026-13", "2024-03-05T10:12:00Z", "yesterday",
    "250.00", "250", "-5", "0", "1.005", "inf", "12,50", " 7", "EUR", "eur", "EURO", "DE", "de", "JP",
    "true", "Yes", "0", "maybe", "loan", "LOAN", "Europe/Berlin", "Mars/Olympus", "US-FL", "us-fl", "de-AT",
    "de_at", "xx-QQ", "granted", "250.00", "", "2026-11-01", "EUR",
]  # fmt: skip


def _parsed_both_ways(col: Column, values: pd.Series) -> tuple[pd.Series, Problems, pd.Series, Problems]:
    once, by_row = Problems([], [], [], []), Problems([], [], [], [])
    return (
        _parse_column(col, values, once, MARKETS, None),
        once,
        _parse_rows(col, values, by_row, MARKETS, None),
        by_row,
    )


class TestParsingEachDistinctValueOnce:
    @pytest.mark.parametrize(
        "col",
        [c for spec in CONTRACT.values() for c in spec.columns if c.kind in _BY_VALUE],
        ids=lambda c: f"{c.name}-{c.kind.value}",
    )
    @pytest.mark.parametrize(
        "values",
        [_TRICKY, ["7", "12", "7", "0"], ["2026-10", "2026-11", "2026-10"]],
        ids=["mixed", "whole-numbers", "months"],
    )
    @pytest.mark.parametrize("dtype", ["str", "object"])
    def test_every_row_gets_what_parsing_it_row_by_row_gives(
        self, col: Column, values: list[str], dtype: str
    ) -> None:
        rows = pd.Series(values * 3, dtype=dtype, index=range(10, 10 + 3 * len(values)))
        once, once_problems, by_row, by_row_problems = _parsed_both_ways(col, rows)
        pd.testing.assert_series_equal(once, by_row)
        assert (once_problems.fields, once_problems.reasons, once_problems.details) == (
            by_row_problems.fields,
            by_row_problems.reasons,
            by_row_problems.details,
        )
        assert [p.tolist() for p in once_problems.rows] == [p.tolist() for p in by_row_problems.rows]

    def test_a_column_with_missing_values_is_parsed_row_by_row(self) -> None:
        col = CONTRACT[Entity.INSTALMENTS].column("amount")
        rows = pd.Series(["250.00", None, "-5"], dtype="object")
        once, once_problems, by_row, by_row_problems = _parsed_both_ways(col, rows)
        pd.testing.assert_series_equal(once, by_row)
        assert once_problems.reasons == by_row_problems.reasons == [Reason.BAD_NUMBER, Reason.NEGATIVE_AMOUNT]
        assert [p.tolist() for p in once_problems.rows] == [[1], [2]]


class TestKeysAndHashes:
    @pytest.mark.parametrize("entity", [Entity.ACTIVITY, Entity.CONSENTS])
    def test_composite_keys_join_alike_in_arrow_and_python_text(self, entity: Entity) -> None:
        key = list(CONTRACT[entity].key)
        frame = pd.DataFrame({k: ["C1", "", "C3", None] for k in key}, dtype="str")
        frame[key[-1]] = ["x", "y", "", "z"]
        arrow, python = joined_keys(frame, entity), joined_keys(frame.astype("object"), entity)
        assert arrow is not None and python is not None
        pd.testing.assert_series_equal(arrow.astype("object"), python.astype("object"))
        assert arrow.iloc[0] == "\x1f".join(["C1"] * (len(key) - 1) + ["x"])
        assert arrow.iloc[1] == ""

    @pytest.mark.parametrize("dtype", ["str", "object"])
    def test_row_hash_is_pandas_own_row_hash(self, dtype: str) -> None:
        frame = pd.DataFrame(
            {
                "instalment_key": ["I1", "I2", "I3", "I1", "É"],
                "contract_key": ["K1", "K1", None, "K1", ""],
                "amount": ["250.00", "250.00", "1", "250.00", ""],
                "extra": ["a", "b", "a", "a", None],
            },
            dtype=dtype,
        )
        expected = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        assert np.array_equal(_row_hash(frame, CONTRACT[Entity.INSTALMENTS]), expected)

    def test_row_hash_stays_what_earlier_versions_stored(self) -> None:
        # Stored hashes decide which rows changed; a new hash for the same row would append every
        # consent again as a new record on the next run.
        assert validate_entity(raw(Entity.CONTRACTS, [{}]), MARKETS).clean.loc[0, "row_hash"] == (
            "11512709694712968525"
        )

    def test_row_hash_of_a_clean_row_ignores_the_quarantined_rows_beside_it(self) -> None:
        result = validate_entity(raw(Entity.ACTIVITY, [{"transactions": "x"}, {"month": "2026-08"}]), MARKETS)
        assert result.clean["row_hash"].tolist() == ["15252886775322881245"]
        assert np.array_equal(result.quarantine["line"].unique(), [2])


class _Colliding(KeySet):
    """Hashes by length alone, so keys of one length all collide."""

    def hash(self, values: pa.Array) -> np.ndarray:
        return np.asarray([0 if v is None else len(v) for v in values.to_pylist()], dtype=np.uint64)


class TestTextHashes:
    def test_a_text_hashes_alike_wherever_it_sits_in_its_buffer(self) -> None:
        texts = ["", "A", "C0000001", "C0000001-01", "ünïcødé", "x" * 17, "C0000001"]
        alone = [text_hashes(pa.array([t]))[0] for t in texts]
        together = pa.chunked_array([pa.array(["pad", "dingbytes"] + texts[:3]), pa.array(texts[3:])])
        assert text_hashes(together)[2:].tolist() == alone
        assert text_hashes(pa.array(["zz"] + texts, type=pa.large_string()).slice(1)).tolist() == alone
        assert alone[2] == alone[-1]

    def test_a_null_hashes_as_the_empty_text(self) -> None:
        assert (
            text_hashes(pa.array([None, ""], type=pa.string())).tolist()
            == [text_hashes(pa.array([""]))[0]] * 2
        )

    def test_distinct_texts_get_distinct_hashes(self) -> None:
        texts = [f"C{i:07d}" for i in range(100_000)] + [
            "A",
            "A\x00",
            "A\x00\x00",
            "AB",
            "BA",
            "a" * 64,
            "a" * 63,
        ]
        assert len(np.unique(text_hashes(pa.array(texts)))) == len(texts)


class TestKeySet:
    @pytest.mark.parametrize("dtype", ["str", "object"])
    def test_finds_the_keys_it_holds_and_nothing_else(self, dtype: str) -> None:
        keys = KeySet(pa.array([f"K{i:07d}" for i in range(1000)]))
        probe = pd.Series(["K0000999", "K0001000", "K0000000", "", None, "K0000999", "k0000001"], dtype=dtype)
        assert keys.contains(probe).tolist() == [True, False, True, False, False, True, False]

    def test_a_value_whose_hash_collides_with_a_key_is_not_found(self) -> None:
        keys = _Colliding(pa.array(["AA", "BB", "CCC"]))
        probe = pd.Series(["ZZ", "BB", "AA", "QQQ", "CCC", "D", None], dtype="object")
        assert keys.contains(probe).tolist() == [False, True, True, False, True, False, False]

    def test_rows_grouped_by_parent_are_found_as_rows_in_any_order(self) -> None:
        keys = KeySet(pa.array([f"K{i:07d}" for i in range(0, 2000, 2)]))
        rng = np.random.default_rng(7)
        wanted = [f"K{i:07d}" for i in np.repeat(rng.integers(0, 2000, 300), rng.integers(1, 15, 300))]
        grouped = pd.Series(wanted, dtype="str")
        shuffled = grouped.sample(frac=1, random_state=3).reset_index(drop=True)
        for probe in (grouped, shuffled):
            expected = [int(k[1:]) % 2 == 0 for k in probe]
            assert keys.contains(probe).tolist() == expected

    def test_a_run_of_equal_hashes_is_confirmed_row_by_row(self) -> None:
        keys = _Colliding(pa.array(["AA", "CCC"]))
        probe = pd.Series(["AA", "AA", "BB", "AA", "ZZ", "ZZ", "CCC", "DDD", "CCC"], dtype="object")
        assert keys.contains(probe).tolist() == [True, True, False, True, False, False, True, False, True]

    def test_an_empty_set_finds_nothing(self) -> None:
        assert KeySet(pa.array([], type=pa.string())).contains(pd.Series(["A"])).tolist() == [False]
