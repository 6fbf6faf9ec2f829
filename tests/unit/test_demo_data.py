"""The demo portfolio is deterministic, follows the data contract and carries exactly the dirt it claims."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from config.loader import load_markets, load_playbook
from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.domain.markets import Market
from tasks.sources.demo_data import generate_portfolio, write_portfolio
from tasks.sources.files import read_directory
from tasks.sources.raw import RawFrame
from tasks.sources.validation import ValidationResult, validate_all

ROOT = Path(__file__).resolve().parents[2]
AS_OF = date(2026, 11, 22)
DIRTY = {
    ("customers", "phone", "BAD_PHONE"),
    ("customers", "locale", "UNKNOWN_LOCALE"),
    ("customers", "customer_key", "DUPLICATE_KEY"),
    ("contracts", "contract_key", "DUPLICATE_KEY"),
    ("contracts", "term_end", "MISSING_VALUE"),
    ("contracts", "price", "NEGATIVE_AMOUNT"),
    ("instalments", "amount", "NEGATIVE_AMOUNT"),
}

Portfolio = dict[Entity, pd.DataFrame]


@pytest.fixture(scope="module")
def markets() -> dict[str, Market]:
    return load_markets(ROOT / "config")


@pytest.fixture(scope="module")
def portfolio(markets: dict[str, Market]) -> Portfolio:
    return generate_portfolio(3_000, 11, AS_OF, markets)


@pytest.fixture(scope="module")
def validated(portfolio: Portfolio, markets: dict[str, Market]) -> ValidationResult:
    raws = {
        entity: RawFrame(entity, entity.value, frame, pd.Series(range(2, len(frame) + 2)))
        for entity, frame in portfolio.items()
    }
    return validate_all(raws, markets)


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_same_seed_gives_identical_files(markets: dict[str, Market], tmp_path: Path) -> None:
    write_portfolio(generate_portfolio(1_200, 5, AS_OF, markets), tmp_path / "a")
    write_portfolio(generate_portfolio(1_200, 5, AS_OF, markets), tmp_path / "b")
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")


def test_different_seed_gives_different_data(markets: dict[str, Market]) -> None:
    first = generate_portfolio(200, 1, AS_OF, markets)
    second = generate_portfolio(200, 2, AS_OF, markets)
    for entity in ENTITY_ORDER:
        assert not first[entity].equals(second[entity]), entity


def test_every_configured_market_is_present(portfolio: Portfolio, markets: dict[str, Market]) -> None:
    assert set(portfolio[Entity.CUSTOMERS]["market"]) == set(markets)


def test_every_contract_column_is_present_in_contract_order_as_text(portfolio: Portfolio) -> None:
    assert list(portfolio) == list(ENTITY_ORDER)
    for entity, frame in portfolio.items():
        assert tuple(frame.columns) == CONTRACT[entity].column_names
        assert not frame.isna().any().any(), entity
        sample = frame.iloc[:: max(len(frame) // 50, 1)]
        assert all(isinstance(value, str) for value in sample.to_numpy().ravel()), entity


def test_rows_are_sorted_by_key(portfolio: Portfolio) -> None:
    for entity in (Entity.INSTALMENTS, Entity.ACTIVITY, Entity.CONSENTS):
        keys = pd.MultiIndex.from_frame(portfolio[entity][list(CONTRACT[entity].key)])
        assert keys.is_monotonic_increasing and keys.is_unique, entity
    for entity in (Entity.CUSTOMERS, Entity.CONTRACTS):
        keys = portfolio[entity][CONTRACT[entity].key[0]]
        assert keys[~keys.duplicated(keep=False)].is_monotonic_increasing, entity


def test_validation_quarantines_between_a_third_and_three_percent_of_customers(
    validated: ValidationResult,
) -> None:
    share = validated.quarantined_rows["customers"] / validated.rows_read[Entity.CUSTOMERS]
    assert 0.003 <= share <= 0.03


def test_validation_finds_every_kind_of_dirty_row(validated: ValidationResult) -> None:
    found = set(validated.quarantine[["entity", "field", "reason"]].itertuples(index=False, name=None))
    assert found >= DIRTY
    unsafe = validated.quarantine[validated.quarantine["reason"] == "UNSAFE_TEXT"]
    assert set(unsafe["field"]) <= {"first_name", "last_name"} and len(unsafe) > 0


def test_nothing_but_the_dirty_rows_and_their_children_is_quarantined(validated: ValidationResult) -> None:
    reasons = set(validated.quarantine["reason"])
    assert reasons == {reason for _, _, reason in DIRTY} | {"UNSAFE_TEXT", "UNKNOWN_PARENT"}


def test_clean_phones_are_e164_after_validation(validated: ValidationResult) -> None:
    phones = validated.clean[Entity.CUSTOMERS]["phone"].dropna()
    assert len(phones) > 2_000
    assert phones.str.fullmatch(r"\+[1-9]\d{7,14}").all()


def test_clean_emails_are_on_reserved_domains(validated: ValidationResult) -> None:
    emails = validated.clean[Entity.CUSTOMERS]["email"].dropna()
    assert emails.str.fullmatch(r"[a-z0-9._]+@example\.(com|net|org)").all()


def test_contracts_end_on_every_playbook_offset_day(markets: dict[str, Market]) -> None:
    contracts = generate_portfolio(5_000, 3, AS_OF, markets)[Entity.CONTRACTS]
    active = contracts[contracts["status"] == "active"]
    days_left = (pd.to_datetime(active["term_end"], errors="coerce") - pd.Timestamp(AS_OF)).dt.days
    offsets = {step.offset_days for step in load_playbook(ROOT / "config", "renewal-standard").steps}
    assert offsets
    for offset in offsets:
        assert (days_left == -offset).sum() > 0, offset
    assert 0.3 <= days_left.between(-5, 45).mean() <= 0.4


def test_late_payers_lapse_more_often(validated: ValidationResult) -> None:
    instalments = validated.clean[Entity.INSTALMENTS]
    contracts = validated.clean[Entity.CONTRACTS]
    late = (instalments["paid_date"] > instalments["due_date"]).groupby(instalments["contract_key"]).sum()
    owner = contracts.set_index("contract_key")["customer_key"]
    late_by_customer = late.groupby(owner.reindex(late.index).to_numpy()).sum()
    past = contracts[contracts["status"].isin(["renewed", "lapsed"])]
    late_count = past["customer_key"].map(late_by_customer).fillna(0)
    lapsed = past["status"] == "lapsed"
    assert (late_count >= 2).sum() > 100 and (late_count == 0).sum() > 100
    assert lapsed[late_count >= 2].mean() > lapsed[late_count == 0].mean() + 0.05


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_written_portfolio_reads_back_unchanged(markets: dict[str, Market], tmp_path: Path, fmt: str) -> None:
    frames = generate_portfolio(300, 9, AS_OF, markets, dirty_share=0.05)
    paths = write_portfolio(frames, tmp_path, fmt)
    assert {path.name for path in paths.values()} == {f"{entity.value}.{fmt}" for entity in ENTITY_ORDER}
    raws = read_directory(tmp_path)
    for entity in ENTITY_ORDER:
        pd.testing.assert_frame_equal(raws[entity].frame, frames[entity], check_dtype=False)
