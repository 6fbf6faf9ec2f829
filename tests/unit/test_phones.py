"""The column-wise phone path gives exactly phonenumbers' row-by-row answers, only faster."""

from __future__ import annotations

import random
from datetime import date

import pandas as pd
import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from tasks.domain.contract import Entity
from tasks.sources.demo_data import generate_portfolio
from tasks.sources.phones import NOT_MOBILE, normalise_phone, normalise_phones
from tests.support.factories import markets

MARKETS = markets()
REGIONS = sorted({m.phone_region for m in MARKETS.values()})
# NANPA regions share one pattern for fixed lines and mobiles, so their landlines cannot be told apart.
LANDLINE_REGIONS = [
    r
    for r in REGIONS
    if phonenumbers.number_type(phonenumbers.example_number_for_type(r, PhoneNumberType.FIXED_LINE))
    is PhoneNumberType.FIXED_LINE
]


def _reference(raw: list[str], regions: list[str]) -> list[tuple[str | None, str | None]]:
    return [
        (None, None)
        if not value
        else (lambda e, why: (e, why or None))(*normalise_phone(value, region or "ZZ"))
        for value, region in zip(raw, regions, strict=True)
    ]


def _vectorised(raw: list[str], regions: list[str]) -> list[tuple[str | None, str | None]]:
    e164, detail = normalise_phones(pd.Series(raw, dtype="object"), pd.Series(regions, dtype="object"))
    return list(zip(e164, detail, strict=True))


def _example(region: str, kind: PhoneNumberType) -> phonenumbers.PhoneNumber:
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None
    return number


def _written(number: phonenumbers.PhoneNumber) -> list[str]:
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    return [
        national,
        phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
        phonenumbers.format_number(number, PhoneNumberFormat.E164),
        "".join(ch for ch in national if ch.isdigit()),
    ]


def test_demo_portfolio_numbers_get_the_reference_answers() -> None:
    customers = generate_portfolio(3000, 11, date(2026, 11, 22), MARKETS)[Entity.CUSTOMERS]
    raw = customers["phone"].astype("object").where(customers["phone"].notna(), "").astype(str).tolist()
    regions = customers["market"].map({c: m.phone_region for c, m in MARKETS.items()}).fillna("").tolist()
    got = _vectorised(raw, regions)
    assert got == _reference(raw, regions)
    assert any(detail == NOT_MOBILE for _, detail in got)
    assert any(detail and detail.startswith("not a phone number") for _, detail in got)


@pytest.mark.parametrize("region", REGIONS)
def test_every_market_reads_national_and_international_forms_alike(region: str) -> None:
    mobile = _example(region, PhoneNumberType.MOBILE)
    forms = _written(mobile)
    got = _vectorised(forms, [region] * len(forms))
    assert got == _reference(forms, [region] * len(forms))
    assert {e164 for e164, _ in got} == {phonenumbers.format_number(mobile, PhoneNumberFormat.E164)}


@pytest.mark.parametrize("region", LANDLINE_REGIONS)
def test_landlines_are_rejected_as_not_mobile(region: str) -> None:
    landline = _example(region, PhoneNumberType.FIXED_LINE)
    forms = _written(landline)
    got = _vectorised(forms, [region] * len(forms))
    assert got == [(None, NOT_MOBILE)] * len(forms)


def test_empty_values_are_neither_numbers_nor_problems() -> None:
    e164, detail = normalise_phones(
        pd.Series(["", None, float("nan"), "0151 23456789"], dtype="object"), pd.Series(["DE"] * 4)
    )
    assert e164.tolist() == [None, None, None, "+4915123456789"]
    assert detail.tolist() == [None, None, None, None]


def test_text_extensions_and_uris_get_the_reference_answers() -> None:
    raw = [
        "call me later",
        "n/a",
        "12345",
        "0151 23456789 ext. 12",
        "tel:+49-151-23456789",
        "+49 (0) 151 23456789",
        "0049 151 23456789",
        "49 151 23456789",
        "++49 151 23456789",
        "+0 151 23456789",
        "1-800-FLOWERS",
        "(415) 555-2671",
        "1 415 555 2671",
        "０１５１ ２３４５６７８９",
    ]
    regions = ["DE"] * 11 + ["US"] * 2 + ["DE"]
    assert _vectorised(raw, regions) == _reference(raw, regions)


def test_shared_country_codes_resolve_to_the_same_region_as_phonenumbers() -> None:
    raw = [
        phonenumbers.format_number(_example(region, kind), PhoneNumberFormat.E164)
        for region in ("US", "CA", "JM", "PR", "GB", "JE", "IM", "GG", "RU", "KZ", "FI", "AX")
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    ]
    regions = [""] * len(raw)
    assert _vectorised(raw, regions) == _reference(raw, regions)


def test_national_numbers_without_a_region_are_not_numbers() -> None:
    got = _vectorised(["0151 23456789", "+49 151 23456789"], ["", ""])
    assert got == [(None, "not a phone number (region ZZ)"), ("+4915123456789", None)]


def test_random_digit_strings_get_the_reference_answers() -> None:
    rng = random.Random(5)
    prefixes = ["", "+", "0", "00", "1", "+1", "+44", "+7", "011", "8", "0049", "+0", "+ 49 ", "(0)"]
    raw, regions = [], []
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 19)))
        spaced = "".join(ch + (rng.choice(" -./") if rng.random() < 0.15 else "") for ch in digits)
        raw.append(rng.choice(prefixes) + spaced)
        regions.append(rng.choice([*REGIONS, "", "ZZ", "BR", "AR", "IT", "MX"]))
    assert _vectorised(raw, regions) == _reference(raw, regions)
