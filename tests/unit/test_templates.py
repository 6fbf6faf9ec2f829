"""The message templates: every channel, key and language renders, safely, within channel limits,
with an opt-out on marketing and no promotion in service messages."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from tasks.channels.rendering import (
    PARTS,
    Rendered,
    Renderer,
    format_long_date,
    format_money,
    format_share,
    label,
)
from tasks.domain.messaging import sms_segments

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"

CHANNELS = ("email", "sms", "whatsapp")
SERVICE_KEYS = ("renewal_notice", "renewal_reminder", "renewal_last_call", "renewal_grace")
MARKETING_KEY = "early_renewal_offer"
KEYS = (*SERVICE_KEYS, MARKETING_KEY)
LANGUAGES = ("en", "de", "fr", "es", "id", "vi")
PRODUCTS = ("subscription", "loan", "insurance_policy", "savings_plan")
CURRENCY = {"en": "EUR", "de": "EUR", "fr": "EUR", "es": "EUR", "id": "IDR", "vi": "VND"}
AMOUNT = {"EUR": 12345.67, "IDR": 12345678, "VND": 12345678}

RENEW_URL = "https://go.finora.example/r/8KQ2ZP4X"
UNSUBSCRIBE_URL = "https://go.finora.example/u/UNSUB-7f3a9c"
# Sentinels no real text could contain: finding them proves the template printed the variable.
DISCOUNT_SENTINEL = "DISC-ZQ-37"
DEADLINE_SENTINEL = "DEADLINE-ZQ-0915"

# Words that make a message promotional; none may appear in a service message.
PROMOTION_WORDS = {
    "en": ("offer", "discount", "save ", "cashback", "special", "promotion", "deal", "% off"),
    "de": ("angebot", "rabatt", "sparen", "aktion", "cashback", "gratis", "vorteil"),
    "fr": ("offre", "remise", "réduction", "économis", "promotion", "cashback", "gratuit"),
    "es": ("oferta", "descuento", "promoción", "cashback", "gratis", "ahorre"),
    "id": ("penawaran", "diskon", "potongan", "hemat", "promo", "cashback", "gratis"),
    "vi": ("ưu đãi", "giảm", "khuyến mãi", "khuyến mại", "quà tặng", "cashback", "miễn phí"),
}

ALL_COMBINATIONS = [(c, k, lang) for c in CHANNELS for k in KEYS for lang in LANGUAGES]


def combo_id(channel: str, key: str, lang: str) -> str:
    return f"{channel}/{key}/{lang}"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


def sample_context(locale: str, **overrides: Any) -> dict[str, Any]:
    """A realistic context, formatted the way the code formats it for `locale`."""
    lang = locale.split("-")[0]
    currency = CURRENCY.get(lang, "EUR")
    context: dict[str, Any] = {
        "first_name": "Anna",
        "last_name": "Huber",
        "company": "Finora Bank",
        "product_name": label(TEMPLATES, "product.insurance_policy", locale),
        "contract_ref": "LN-2026-004711",
        "term_end": format_long_date(date(2026, 9, 30), locale),
        "days_left": 14,
        "days_overdue": 3,
        "price": format_money(AMOUNT[currency], currency, locale),
        "renew_url": RENEW_URL,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "is_marketing": False,
        "offer_discount": format_share(0.15, locale),
        "offer_deadline": format_long_date(date(2026, 9, 15), locale),
    }
    context.update(overrides)
    return context


def texts(rendered: Rendered) -> list[str]:
    return [part for part in (rendered.subject, rendered.body, rendered.html) if part is not None]


def test_every_language_names_every_product() -> None:
    for lang in LANGUAGES:
        for product in PRODUCTS:
            key = f"product.{product}"
            assert label(TEMPLATES, key, lang) != key, f"{lang} has no label for {key}"


@pytest.mark.parametrize(
    ("channel", "key", "lang"), ALL_COMBINATIONS, ids=[combo_id(*c) for c in ALL_COMBINATIONS]
)
def test_every_template_renders_in_every_language(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    for part in PARTS[channel]:
        assert (TEMPLATES / channel / key / f"{lang}.{part}.j2").is_file()
    is_marketing = key == MARKETING_KEY

    named = renderer.render(channel, key, lang, sample_context(lang, is_marketing=is_marketing))
    generic = renderer.render(
        channel, key, lang, sample_context(lang, first_name="", last_name="", is_marketing=is_marketing)
    )

    assert named.locale == lang
    for rendered in (named, generic):
        for text in texts(rendered):
            assert text.strip()
            assert not re.search(r"\{\{|\}\}|\{%|%\}|\{#", text), f"unrendered template syntax in {text!r}"
            assert "None" not in text
        assert RENEW_URL in rendered.body
        if channel == "email":
            assert rendered.subject and "\n" not in rendered.subject
            assert rendered.html and f'href="{RENEW_URL}"' in rendered.html
    if channel != "sms":  # SMS carry no greeting
        assert "Anna" in named.body
        assert "Anna" not in generic.body and "Huber" not in generic.body


@pytest.mark.parametrize(
    ("locale", "expected"),
    [("de-AT", "de-AT"), ("de_at", "de-AT"), ("de-CH", "de"), ("de", "de"), ("tr-DE", "en"), ("ja", "en")],
)
def test_locale_fallback_picks_the_most_specific_template(
    renderer: Renderer, locale: str, expected: str
) -> None:
    rendered = renderer.render("email", "renewal_notice", locale, sample_context(locale))

    assert rendered.locale == expected
    assert ("Grüß Gott" in rendered.body) is (expected == "de-AT")


def test_the_austrian_override_only_covers_the_email_renewal_notice(renderer: Renderer) -> None:
    assert renderer.render("email", "renewal_reminder", "de-AT", sample_context("de-AT")).locale == "de"
    assert renderer.render("sms", "renewal_notice", "de-AT", sample_context("de-AT")).locale == "de"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_html_escapes_context_values_and_never_evaluates_them(
    renderer: Renderer, key: str, lang: str
) -> None:
    script = "<script>alert(1)</script>"
    hostile = sample_context(
        lang, first_name=script, last_name='"><img src=x onerror=alert(2)>', company="A&B <Bank>"
    )

    html = renderer.render("email", key, lang, hostile).html or ""

    assert script not in html and "<img" not in html and "<Bank>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "A&amp;B &lt;Bank&gt;" in html

    literal = sample_context(lang, first_name="{{ 7*7 }}")
    for channel in ("email", "whatsapp"):
        rendered = renderer.render(channel, key, lang, literal)
        for text in (rendered.body, rendered.html or rendered.body):
            assert "{{ 7*7 }}" in text


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("missing", ["price", "company", "renew_url"])
def test_a_missing_context_variable_raises_undefined_error(
    renderer: Renderer, channel: str, missing: str
) -> None:
    context = sample_context("en")
    del context[missing]

    with pytest.raises(UndefinedError):
        renderer.render(channel, "renewal_notice", "en", context)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ renew_url.__class__ }}",
        "{{ items.append(1) }}",
    ],
)
def test_the_sandbox_refuses_python_internals_and_mutation(renderer: Renderer, source: str) -> None:
    with pytest.raises(SecurityError):
        renderer.env.from_string(source).render(renew_url=RENEW_URL, items=[])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_sms_fits_in_three_segments(renderer: Renderer, key: str, lang: str) -> None:
    # Try every product and long dates, with typical counts, to find the longest message.
    worst = 0
    for product in PRODUCTS:
        for term_end in (date(2026, 9, 30), date(2026, 12, 31)):
            for days in (1, 14):
                context = sample_context(
                    lang,
                    product_name=label(TEMPLATES, f"product.{product}", lang),
                    term_end=format_long_date(term_end, lang),
                    offer_deadline=format_long_date(date(2026, 11, 30), lang),
                    days_left=days,
                    days_overdue=days,
                    is_marketing=key == MARKETING_KEY,
                )
                rendered = renderer.render("sms", key, lang, context)
                assert rendered.segments == sms_segments(rendered.body).segments
                worst = max(worst, rendered.segments or 0)
    assert worst <= 3


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", ["en", "de"])
def test_english_and_german_sms_are_gsm7(renderer: Renderer, key: str, lang: str) -> None:
    for product in PRODUCTS:
        context = sample_context(
            lang, product_name=label(TEMPLATES, f"product.{product}", lang), is_marketing=key == MARKETING_KEY
        )
        rendered = renderer.render("sms", key, lang, context)
        assert rendered.encoding == "GSM-7", rendered.body


def offer_context(lang: str, **overrides: Any) -> dict[str, Any]:
    return sample_context(
        lang, offer_discount=DISCOUNT_SENTINEL, offer_deadline=DEADLINE_SENTINEL, **overrides
    )


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_marketing_messages_carry_the_offer_and_an_opt_out(
    renderer: Renderer, channel: str, lang: str
) -> None:
    rendered = renderer.render(channel, MARKETING_KEY, lang, offer_context(lang, is_marketing=True))

    assert DISCOUNT_SENTINEL in rendered.body
    if channel == "email":
        assert UNSUBSCRIBE_URL in rendered.body
        assert f'href="{UNSUBSCRIBE_URL}"' in (rendered.html or "")
        assert DISCOUNT_SENTINEL in (rendered.subject or "")
    else:
        assert re.search(r"\bSTOP\b", rendered.body)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_marketing_email_keeps_its_unsubscribe_link_when_is_marketing_is_false(
    renderer: Renderer, lang: str
) -> None:
    rendered = renderer.render("email", MARKETING_KEY, lang, offer_context(lang, is_marketing=False))

    assert UNSUBSCRIBE_URL in rendered.body
    assert UNSUBSCRIBE_URL in (rendered.html or "")


SERVICE_COMBINATIONS = [(c, k, lang) for c in CHANNELS for k in SERVICE_KEYS for lang in LANGUAGES]


@pytest.mark.parametrize(
    ("channel", "key", "lang"), SERVICE_COMBINATIONS, ids=[combo_id(*c) for c in SERVICE_COMBINATIONS]
)
def test_service_messages_carry_no_promotion(renderer: Renderer, channel: str, key: str, lang: str) -> None:
    rendered = renderer.render(channel, key, lang, offer_context(lang, is_marketing=False))

    for text in texts(rendered):
        assert DISCOUNT_SENTINEL not in text
        assert DEADLINE_SENTINEL not in text
        assert UNSUBSCRIBE_URL not in text
        assert not re.search(r"\bSTOP\b", text)
        lowered = text.lower()
        for word in PROMOTION_WORDS[lang]:
            assert word not in lowered, f"promotional word {word!r} in {channel}/{key}/{lang}"


# (days_left=1, days_left=2) phrases of renewal_reminder, and (days_overdue=1, =2) of renewal_grace.
PLURALS = {
    "en": (("1 day", "2 days"), ("yesterday", "2 days ago")),
    "de": (("1 Tag", "2 Tage"), ("gestern", "vor 2 Tagen")),
    "fr": (("1 jour", "2 jours"), ("hier", "il y a 2 jours")),
    "es": (("1 día", "2 días"), ("ayer", "hace 2 días")),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", sorted(PLURALS))
def test_day_counts_use_the_plural_forms_of_the_language(renderer: Renderer, channel: str, lang: str) -> None:
    (left_one, left_two), (overdue_one, overdue_two) = PLURALS[lang]

    one = renderer.render(channel, "renewal_reminder", lang, sample_context(lang, days_left=1)).body
    two = renderer.render(channel, "renewal_reminder", lang, sample_context(lang, days_left=2)).body
    assert one != two
    assert re.search(rf"\b{left_one}\b", one) and not re.search(rf"\b{left_two.split()[1]}\b", one)
    assert left_two in two

    ago_one = renderer.render(channel, "renewal_grace", lang, sample_context(lang, days_overdue=1)).body
    ago_two = renderer.render(channel, "renewal_grace", lang, sample_context(lang, days_overdue=2)).body
    assert overdue_one in ago_one and overdue_two in ago_two


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("locale", [*LANGUAGES, "de-AT"])
def test_email_subjects_fit_in_78_characters(renderer: Renderer, key: str, locale: str) -> None:
    for product in PRODUCTS:
        context = sample_context(
            locale,
            product_name=label(TEMPLATES, f"product.{product}", locale),
            term_end=format_long_date(date(2026, 12, 31), locale),
            days_left=14,
            days_overdue=14,
        )
        subject = renderer.render("email", key, locale, context).subject or ""
        assert 0 < len(subject) <= 78, subject
        assert subject == subject.strip()


@pytest.mark.parametrize("key", KEYS)
def test_email_html_is_self_contained_and_names_the_company_in_the_footer(
    renderer: Renderer, key: str
) -> None:
    html = renderer.render("email", key, "en", sample_context("en", company="Finora Bank AG")).html or ""

    assert html.startswith("<!DOCTYPE html>")
    assert "max-width:600px" in html
    assert "<script" not in html.lower() and "src=" not in html and "<link" not in html.lower()
    urls = set(re.findall(r'href="([^"]+)"', html))
    assert urls <= {RENEW_URL, UNSUBSCRIBE_URL}
    footer = html.rsplit("border-top", 1)[1]
    assert "Finora Bank AG" in footer
    assert (UNSUBSCRIBE_URL in footer) is (key == MARKETING_KEY)
