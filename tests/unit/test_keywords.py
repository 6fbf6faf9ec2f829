"""Inbound replies: every keyword in every language, free-text opt-outs, and what is not a keyword."""

from __future__ import annotations

import unicodedata

import pytest

from tasks.domain.keywords import KEYWORDS, OPT_OUT_PHRASES, Keyword, classify_keyword, normalise_reply

ALL = [
    (lang, kind, word)
    for lang, by_kind in KEYWORDS.items()
    for kind, words in by_kind.items()
    for word in words
]
LANGUAGES = {"en", "de", "fr", "es", "id", "vi"}


def test_every_supported_language_has_opt_out_opt_in_and_help_keywords() -> None:
    assert set(KEYWORDS) == LANGUAGES == set(OPT_OUT_PHRASES)
    for lang, by_kind in KEYWORDS.items():
        assert set(by_kind) == {Keyword.OPT_OUT, Keyword.OPT_IN, Keyword.HELP}, lang


@pytest.mark.parametrize(("lang", "kind", "word"), ALL, ids=[f"{la}-{w}" for la, _, w in ALL])
def test_each_keyword_is_recognised_as_typed(lang: str, kind: Keyword, word: str) -> None:
    assert classify_keyword(word) is kind


@pytest.mark.parametrize(("lang", "kind", "word"), ALL, ids=[f"{la}-{w}" for la, _, w in ALL])
def test_each_keyword_ignores_case_accents_spacing_and_punctuation(
    lang: str, kind: Keyword, word: str
) -> None:
    plain = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    plain = plain.replace("Đ", "D").replace("đ", "d")
    for variant in (
        word.lower(),
        word.title(),
        f"  {word}  ",
        f"{word}.",
        f"{word}!\n",
        plain,
        plain.lower(),
    ):
        assert classify_keyword(variant) is kind, variant


@pytest.mark.parametrize(
    ("lang", "phrase"), [(la, p) for la, ps in OPT_OUT_PHRASES.items() for p in ps], ids=lambda v: str(v)
)
def test_free_text_opt_out_phrases_opt_out_inside_a_sentence(lang: str, phrase: str) -> None:
    assert classify_keyword(phrase) is Keyword.OPT_OUT
    assert classify_keyword(f"Hello, {phrase.upper()} thanks") is Keyword.OPT_OUT


@pytest.mark.parametrize(
    "text",
    [
        "please stop texting me",
        "Please STOP texting me!!",
        "Stop sending me these messages",
        "Don’t text me again",
        "Bitte keine SMS mehr",
        "Arrêtez de m’envoyer des messages",
        "Por favor, no me envíen más mensajes",
        "tolong berhenti",
        "Đừng nhắn tin cho tôi nữa",
        "OPT-OUT",
        "Opt out",
        "STOP SMS",
        "Hủy đăng ký",
    ],
)
def test_reasonable_opt_out_requests_opt_out(text: str) -> None:
    assert classify_keyword(text) is Keyword.OPT_OUT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Thanks!",
        "When does my contract end?",
        "Can I stop by the branch tomorrow?",
        "YES please renew",
        "Ich möchte kündigen",
        "help me understand the price",
        "STOPPED",
        "🙂",
    ],
)
def test_other_replies_are_other(text: str) -> None:
    assert classify_keyword(text) is Keyword.OTHER


def test_a_keyword_word_is_only_a_keyword_on_its_own() -> None:
    assert classify_keyword("START") is Keyword.OPT_IN
    assert classify_keyword("start my renewal") is Keyword.OTHER
    assert classify_keyword("INFO") is Keyword.HELP
    assert classify_keyword("info about the price") is Keyword.OTHER


def test_normalisation_folds_vietnamese_d_and_german_sharp_s() -> None:
    assert normalise_reply("  ĐĂNG   KÝ ") == "dang ky"
    assert normalise_reply("Grüße, Straße") == "grusse strasse"
    assert normalise_reply("don't") == "dont"
