"""Locale fallback and SMS segment counting."""

from __future__ import annotations

import pytest

from tasks.domain.messaging import locale_chain, normalise_locale, sms_segments


@pytest.mark.parametrize(
    ("tag", "chain"),
    [
        ("de-AT", ("de-AT", "de", "en")),
        ("de_at", ("de-AT", "de", "en")),
        ("en-GB", ("en-GB", "en")),
        ("en", ("en",)),
        ("zh-hant-tw", ("zh-Hant-TW", "zh-Hant", "zh", "en")),
        ("", ("en",)),
    ],
)
def test_locale_chain_goes_from_specific_to_english(tag: str, chain: tuple[str, ...]) -> None:
    assert locale_chain(tag) == chain


def test_normalise_locale_fixes_case_and_separator() -> None:
    assert normalise_locale("ES_es") == "es-ES"


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),
        ("€" * 81, "GSM-7", 2),
        ("Grüße aus München", "GSM-7", 1),
        ("ç" + "a" * 69, "UCS-2", 1),
        ("ç" + "a" * 70, "UCS-2", 2),
        ("Xin chào Quý khách", "UCS-2", 1),
        ("😀" * 35, "UCS-2", 1),
        ("😀" * 36, "UCS-2", 2),
    ],
)
def test_segments_follow_gsm7_and_ucs2_limits(body: str, encoding: str, segments: int) -> None:
    count = sms_segments(body)
    assert (count.encoding, count.segments) == (encoding, segments)


def test_escape_pairs_are_not_split_across_parts() -> None:
    # 152 plain septets plus one two-septet euro sign would straddle the 153-septet part boundary.
    assert sms_segments("a" * 152 + "€" + "a" * 10).segments == 2
    assert sms_segments("a" * 152 + "€").units == 154
