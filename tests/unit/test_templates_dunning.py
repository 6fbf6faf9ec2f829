"""The repayment (dunning) and retention templates: every channel, key and language renders safely, dunning
messages state the debt and how to pay without any promotion, threat or third party, retention messages carry
the offer and an opt-out, and everything fits the channel's limits."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from jinja2 import meta, nodes
from jinja2.exceptions import UndefinedError

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

CHANNELS = ("email", "sms")
DUNNING_KEYS = ("dunning_friendly", "dunning_reminder", "dunning_firm", "dunning_final")
RETENTION_KEYS = ("winback_offer", "reactivation_offer")
KEYS = (*DUNNING_KEYS, *RETENTION_KEYS)
LANGUAGES = ("en", "de", "fr", "es", "id", "vi")
PRODUCTS = ("subscription", "loan", "insurance_policy", "savings_plan")
CURRENCY = {"en": "EUR", "de": "EUR", "fr": "EUR", "es": "EUR", "id": "IDR", "vi": "VND"}
PRICE = {"EUR": 12345.67, "IDR": 12345678, "VND": 12345678}
INSTALMENT = {"EUR": 1234.56, "IDR": 1234567, "VND": 1234567}

RENEW_URL = "https://go.finora.example/r/8KQ2ZP4X"
PAY_URL = "https://go.finora.example/p/7QX4MZ2A"
UNSUBSCRIBE_URL = "https://go.finora.example/u/UNSUB-7f3a9c"
# Sentinels no real text could contain: finding them proves the template printed the variable.
DISCOUNT_SENTINEL = "DISC-ZQ-37"
DEADLINE_SENTINEL = "DEADLINE-ZQ-0915"
# The longest advertising label code may put before a marketing subject or SMS (VN "[QC]", SG "<ADV>").
LONGEST_LABEL = "<ADV>"

# The render context's names (templates/README.md plus the dunning fields); the renderer adds the rest.
CONTEXT_NAMES = frozenset(
    {
        "first_name",
        "last_name",
        "company",
        "product_name",
        "contract_ref",
        "term_end",
        "days_left",
        "days_overdue",
        "price",
        "renew_url",
        "unsubscribe_url",
        "is_marketing",
        "offer_discount",
        "offer_deadline",
        "amount_due",
        "due_date",
        "days_past_due",
        "days_to_due",
        "pay_url",
    }
)
RENDERER_NAMES = frozenset({"channel", "template_locale", "offer_block", "offer_text", "marketing_template"})


def words(listed: str) -> tuple[str, ...]:
    return tuple(listed.split(", "))


# Words that make a message promotional; none may appear in a dunning message.
PROMOTION_WORDS = {
    "en": words("offer, discount, save , cashback, special, promotion, deal, % off, free, bonus"),
    "de": words("angebot, rabatt, sparen, aktion, cashback, gratis, vorteil, bonus, geschenk"),
    "fr": words("offre, remise, réduction, économis, promotion, cashback, gratuit, cadeau, bonus"),
    "es": words("oferta, descuento, promoción, cashback, gratis, ahorre, regalo, bonificación"),
    "id": words("penawaran, diskon, potongan, hemat, promo, cashback, gratis, hadiah, bonus"),
    "vi": words("ưu đãi, giảm, khuyến mãi, khuyến mại, quà tặng, cashback, miễn phí, tặng"),
}

# Threats, legal pressure and third parties (CONC 7, §4a UWG, POJK 22/2023, FCCPC): never in dunning.
PRESSURE_WORDS = {
    "en": words(
        "court, bailiff, police, lawyer, solicitor, legal action, debt collector, agency, employer, family, "
        "credit reference, credit score, arrest, seize, immediately"
    ),
    "de": words(
        "gericht, gerichtsvollzieher, polizei, anwalt, inkasso, arbeitgeber, familie, schufa, pfändung, "
        "mahnbescheid, sofort"
    ),
    "fr": words("tribunal, huissier, police, avocat, employeur, famille, saisie, contentieux, immédiatement"),
    "es": words("tribunal, juzgado, policía, abogado, empleador, familia, embargo, asnef, inmediatamente"),
    "id": words("pengadilan, polisi, pengacara, debt collector, atasan, keluarga, penyitaan, pihak ketiga"),
    "vi": words("tòa án, công an, luật sư, người thân, gia đình, tịch thu, cơ quan, bên thứ ba"),
}

ALL_COMBINATIONS = [(c, k, lang) for c in CHANNELS for k in KEYS for lang in LANGUAGES]
DUNNING_COMBINATIONS = [(c, k, lang) for c in CHANNELS for k in DUNNING_KEYS for lang in LANGUAGES]
RETENTION_COMBINATIONS = [(c, k, lang) for c in CHANNELS for k in RETENTION_KEYS for lang in LANGUAGES]


def combo_id(channel: str, key: str, lang: str) -> str:
    return f"{channel}/{key}/{lang}"


def combo_ids(combinations: list[tuple[str, str, str]]) -> list[str]:
    return [combo_id(*c) for c in combinations]


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


def sample_context(locale: str, key: str = "dunning_reminder", **overrides: Any) -> dict[str, Any]:
    """A realistic context for `key`, formatted the way the code formats it for `locale`."""
    lang = locale.split("-")[0]
    currency = CURRENCY.get(lang, "EUR")
    dunning = key in DUNNING_KEYS
    context: dict[str, Any] = {
        "first_name": "Anna",
        "last_name": "Huber",
        "company": "Finora Bank",
        "product_name": label(TEMPLATES, "product.loan", locale),
        "contract_ref": "LN-2026-004711",
        "term_end": format_long_date(date(2026, 9, 30), locale),
        "days_left": 0,
        "days_overdue": 37,
        "price": format_money(PRICE[currency], currency, locale),
        "renew_url": RENEW_URL,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "is_marketing": not dunning,
        "offer_discount": "" if dunning else format_share(0.15, locale),
        "offer_deadline": "" if dunning else format_long_date(date(2026, 11, 6), locale),
        "amount_due": format_money(INSTALMENT[currency], currency, locale) if dunning else "",
        "due_date": format_long_date(date(2026, 9, 30), locale) if dunning else "",
        "days_past_due": {"dunning_friendly": 0, "dunning_reminder": 7, "dunning_firm": 15}.get(key, 60),
        "days_to_due": 3 if key == "dunning_friendly" else 0,
        "pay_url": PAY_URL,
    }
    if not dunning:
        context["days_past_due"] = 0
    context.update(overrides)
    return context


def squash(text: str) -> str:
    """Collapse every kind of space (NBSP, narrow NBSP) the way the SMS renderer does."""
    return " ".join(text.split())


def texts(rendered: Rendered) -> list[str]:
    return [part for part in (rendered.subject, rendered.body, rendered.html) if part is not None]


def test_the_sample_context_has_exactly_the_documented_names() -> None:
    assert set(sample_context("en")) == CONTEXT_NAMES


@pytest.mark.parametrize(("channel", "key", "lang"), ALL_COMBINATIONS, ids=combo_ids(ALL_COMBINATIONS))
def test_every_template_uses_only_the_documented_context_variables(channel: str, key: str, lang: str) -> None:
    env = Renderer(TEMPLATES).env
    for part in PARTS[channel]:
        name = f"{channel}/{key}/{lang}.{part}.j2"
        source = (TEMPLATES / name).read_text(encoding="utf-8")
        tree = env.parse(source)
        # Blocks read the template's own {% set %} names from the context, so meta lists them too.
        own = {name.name for assign in tree.find_all(nodes.Assign) for name in assign.find_all(nodes.Name)}
        used = meta.find_undeclared_variables(tree) - own
        assert used <= CONTEXT_NAMES | RENDERER_NAMES, f"{name} uses {sorted(used - CONTEXT_NAMES)}"


@pytest.mark.parametrize(("channel", "key", "lang"), ALL_COMBINATIONS, ids=combo_ids(ALL_COMBINATIONS))
def test_every_template_renders_in_every_language_with_and_without_names(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    for part in PARTS[channel]:
        assert (TEMPLATES / channel / key / f"{lang}.{part}.j2").is_file()

    named = renderer.render(channel, key, lang, sample_context(lang, key))
    generic = renderer.render(channel, key, lang, sample_context(lang, key, first_name="", last_name=""))

    assert named.locale == lang and generic.locale == lang
    for rendered in (named, generic):
        for text in texts(rendered):
            assert text.strip()
            assert not re.search(r"\{\{|\}\}|\{%|%\}|\{#", text), f"unrendered template syntax in {text!r}"
            assert "None" not in text
        for line in f"{rendered.subject or ''}\n{rendered.body}".splitlines():
            assert "  " not in line, f"double space in {line!r}"
        if channel == "email":
            assert rendered.subject and "\n" not in rendered.subject
            assert rendered.html and rendered.html.startswith("<!DOCTYPE html>")
            assert f'href="{RENEW_URL}"' in rendered.html
    if channel == "email":  # SMS carry no greeting
        assert "Anna" in named.body and "Huber" in named.body
        assert "Anna" not in generic.body and "Huber" not in generic.body


@pytest.mark.parametrize(
    ("channel", "key", "lang"), DUNNING_COMBINATIONS, ids=combo_ids(DUNNING_COMBINATIONS)
)
def test_dunning_messages_state_the_amount_and_the_payment_link(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    context = sample_context(lang, key)

    rendered = renderer.render(channel, key, lang, context)

    assert squash(context["amount_due"]) in squash(rendered.body)
    assert PAY_URL in rendered.body
    if channel == "email":
        html = rendered.html or ""
        assert f'href="{PAY_URL}"' in html
        assert set(re.findall(r'href="([^"]+)"', html)) == {PAY_URL, RENEW_URL}
        # The payment link comes before the layout's contract button.
        assert html.index(f'href="{PAY_URL}"') < html.index(f'href="{RENEW_URL}"')
        assert squash(context["due_date"]) in squash(rendered.body)


@pytest.mark.parametrize(
    ("channel", "key", "lang"), DUNNING_COMBINATIONS, ids=combo_ids(DUNNING_COMBINATIONS)
)
def test_dunning_messages_carry_no_promotion_and_no_opt_out(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    # Even with offer values in the context, a dunning message must not print them.
    context = sample_context(
        lang, key, offer_discount=DISCOUNT_SENTINEL, offer_deadline=DEADLINE_SENTINEL, is_marketing=False
    )

    rendered = renderer.render(channel, key, lang, context)

    for text in texts(rendered):
        assert DISCOUNT_SENTINEL not in text and DEADLINE_SENTINEL not in text
        assert UNSUBSCRIBE_URL not in text
        assert not re.search(r"\bSTOP\b", text)
        lowered = text.lower()
        for word in PROMOTION_WORDS[lang]:
            assert word not in lowered, f"promotional word {word!r} in {channel}/{key}/{lang}"


@pytest.mark.parametrize(
    ("channel", "key", "lang"), DUNNING_COMBINATIONS, ids=combo_ids(DUNNING_COMBINATIONS)
)
def test_dunning_messages_never_threaten_or_mention_third_parties(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    rendered = renderer.render(channel, key, lang, sample_context(lang, key))

    for text in texts(rendered):
        lowered = re.sub(r"<[^>]+>", " ", text).lower()  # words, not markup (font-family)
        for word in PRESSURE_WORDS[lang]:
            assert word not in lowered, f"pressure word {word!r} in {channel}/{key}/{lang}"


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_firm_and_final_reminders_offer_a_way_to_agree_a_payment_plan(
    renderer: Renderer, channel: str, lang: str
) -> None:
    plan = {
        "en": "payment plan",
        "de": "ratenzahlung",
        "fr": "plan de paiement",
        "es": "plan",
        "id": "rencana pembayaran",
        "vi": "lịch trả" if channel == "sms" else "kế hoạch thanh toán",
    }[lang]
    for key in ("dunning_firm", "dunning_final"):
        body = renderer.render(channel, key, lang, sample_context(lang, key)).body.lower()
        assert plan in body, f"{channel}/{key}/{lang} does not mention a payment plan"


@pytest.mark.parametrize(
    ("channel", "key", "lang"), RETENTION_COMBINATIONS, ids=combo_ids(RETENTION_COMBINATIONS)
)
def test_retention_messages_carry_the_offer_and_an_opt_out(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    # is_marketing=False must not hide the opt-out: the template itself is marketing.
    context = sample_context(
        lang, key, offer_discount=DISCOUNT_SENTINEL, offer_deadline=DEADLINE_SENTINEL, is_marketing=False
    )

    rendered = renderer.render(channel, key, lang, context)

    assert DISCOUNT_SENTINEL in rendered.body and DEADLINE_SENTINEL in rendered.body
    assert RENEW_URL in rendered.body
    assert PAY_URL not in "".join(texts(rendered))
    if channel == "email":
        html = rendered.html or ""
        assert UNSUBSCRIBE_URL in rendered.body
        assert f'href="{UNSUBSCRIBE_URL}"' in html
        assert DISCOUNT_SENTINEL in html and DISCOUNT_SENTINEL in (rendered.subject or "")
        footer = html.rsplit("border-top", 1)[1]
        assert UNSUBSCRIBE_URL in footer
    else:
        last_line = rendered.body.splitlines()[-1]
        assert re.search(r"\bSTOP\b", last_line)


@pytest.mark.parametrize(
    ("channel", "key", "lang"), RETENTION_COMBINATIONS, ids=combo_ids(RETENTION_COMBINATIONS)
)
def test_retention_messages_without_an_offer_drop_the_offer_sentence_but_keep_the_opt_out(
    renderer: Renderer, channel: str, key: str, lang: str
) -> None:
    rendered = renderer.render(
        channel, key, lang, sample_context(lang, key, offer_discount="", offer_deadline="")
    )

    for text in (rendered.subject or "", rendered.body):
        for line in text.splitlines():
            assert "  " not in line and not re.search(r"\s[.,]", line), f"gap left by the offer in {line!r}"
    assert "%" not in rendered.body
    if channel == "email":
        assert UNSUBSCRIBE_URL in rendered.body and UNSUBSCRIBE_URL in (rendered.html or "")
    else:
        assert re.search(r"\bSTOP\b", rendered.body)


# (1, 2) day phrases: days_past_due of dunning_reminder, and days_overdue ("ago") of winback_offer.
PLURALS = {
    "en": (("1 day", "2 days"), ("yesterday", "2 days ago")),
    "de": (("1 Tag", "2 Tagen"), ("gestern", "vor 2 Tagen")),
    "fr": (("1 jour", "2 jours"), ("hier", "il y a 2 jours")),
    "es": (("1 día", "2 días"), ("ayer", "hace 2 días")),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", sorted(PLURALS))
def test_day_counts_use_the_plural_forms_of_the_language(renderer: Renderer, channel: str, lang: str) -> None:
    (one_day, two_days), (ago_one, ago_two) = PLURALS[lang]
    plural_word = two_days.split()[1]

    for key in ("dunning_reminder", "dunning_firm", "dunning_final"):
        one = renderer.render(channel, key, lang, sample_context(lang, key, days_past_due=1))
        two = renderer.render(channel, key, lang, sample_context(lang, key, days_past_due=2))
        for text in texts(one):
            assert not re.search(rf"\b1 {plural_word}\b", text), f"{key}: {text!r}"
        assert re.search(rf"\b{one_day}\b", one.body), f"{key}: {one.body!r}"
        assert two_days in two.body, f"{key}: {two.body!r}"

    winback = "winback_offer"
    ago = renderer.render(channel, winback, lang, sample_context(lang, winback, days_overdue=1)).body
    ago2 = renderer.render(channel, winback, lang, sample_context(lang, winback, days_overdue=2)).body
    assert ago_one in ago and ago_two in ago2


# days_to_due 0, 1 and 3 of the friendly reminder.
DUE = {
    "en": ("due today", "due tomorrow", "due in 3 days"),
    "de": ("heute", "morgen", "in 3 Tagen"),
    "fr": ("aujourd'hui", "demain", "dans 3 jours"),
    "es": ("vence hoy", "vence mañana", "vence dentro de 3 días"),
    "id": ("hari ini", "besok", "dalam 3 hari"),
    "vi": ("trong hôm nay", "vào ngày mai", "sau 3 ngày"),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_friendly_reminder_says_today_tomorrow_or_in_n_days(
    renderer: Renderer, channel: str, lang: str
) -> None:
    for days_to_due, phrase in zip((0, 1, 3), DUE[lang], strict=True):
        context = sample_context(lang, "dunning_friendly", days_to_due=days_to_due, days_past_due=0)
        rendered = renderer.render(channel, "dunning_friendly", lang, context)
        assert phrase in rendered.body, f"{days_to_due}: {rendered.body!r}"
        assert squash(context["due_date"]) in squash(rendered.body)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_friendly_reminder_sent_after_the_due_date_says_it_was_due(
    renderer: Renderer, channel: str, lang: str
) -> None:
    context = sample_context(lang, "dunning_friendly", days_to_due=0, days_past_due=2)

    body = renderer.render(channel, "dunning_friendly", lang, context).body

    assert squash(context["due_date"]) in squash(body)
    for phrase in DUE[lang]:
        assert phrase not in body


def worst_case_contexts(lang: str, key: str) -> list[dict[str, Any]]:
    """Every product, long and short month names (August has a non-GSM letter in French), big amounts and
    three-digit day counts: the longest messages the code can produce."""
    currency = CURRENCY[lang]
    dunning = key in DUNNING_KEYS
    friendly = key == "dunning_friendly"
    contexts = []
    for product in PRODUCTS:
        for day in (date(2026, 9, 30), date(2026, 12, 31), date(2026, 8, 31), date(2026, 3, 31)):
            long_day = format_long_date(day, lang)
            for days in (1, 15, 120):
                context = sample_context(
                    lang,
                    key,
                    product_name=label(TEMPLATES, f"product.{product}", lang),
                    term_end=long_day,
                    days_past_due=0 if friendly or not dunning else days,
                    days_to_due=days if friendly else 0,
                    days_overdue=days,
                )
                if dunning:
                    context.update(
                        due_date=long_day, amount_due=format_money(PRICE[currency], currency, lang)
                    )
                else:
                    context.update(offer_deadline=long_day)
                contexts.append(context)
    return contexts


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_sms_fits_in_three_segments(renderer: Renderer, key: str, lang: str) -> None:
    # Marketing SMS may get an advertising label in front; count it in.
    tag = LONGEST_LABEL if key in RETENTION_KEYS else None
    worst = 0
    for context in worst_case_contexts(lang, key):
        rendered = renderer.render("sms", key, lang, context, label=tag)
        assert rendered.segments == sms_segments(rendered.body).segments
        worst = max(worst, rendered.segments or 0)
    assert worst <= 3


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", ["en", "de"])
def test_english_and_german_sms_are_gsm7(renderer: Renderer, key: str, lang: str) -> None:
    for context in worst_case_contexts(lang, key):
        rendered = renderer.render("sms", key, lang, context)
        assert rendered.encoding == "GSM-7", rendered.body


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_email_subjects_fit_in_78_characters(renderer: Renderer, key: str, lang: str) -> None:
    tag = LONGEST_LABEL if key in RETENTION_KEYS else None
    for context in worst_case_contexts(lang, key):
        subject = renderer.render("email", key, lang, context, label=tag).subject or ""
        assert 0 < len(subject) <= 78, subject
        assert subject == subject.strip()


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_html_escapes_context_values_and_never_evaluates_them(
    renderer: Renderer, key: str, lang: str
) -> None:
    script = "<script>alert(1)</script>"
    hostile = sample_context(
        lang, key, first_name=script, last_name='"><img src=x onerror=alert(2)>', company="A&B <Bank>"
    )

    html = renderer.render("email", key, lang, hostile).html or ""

    assert script not in html and "<img" not in html and "<Bank>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "A&amp;B &lt;Bank&gt;" in html

    literal = renderer.render("email", key, lang, sample_context(lang, key, first_name="{{ 7*7 }}"))
    assert "{{ 7*7 }}" in literal.body and "{{ 7*7 }}" in (literal.html or "")


@pytest.mark.parametrize("key", KEYS)
def test_email_html_is_self_contained_and_names_the_company_in_the_footer(
    renderer: Renderer, key: str
) -> None:
    html = renderer.render("email", key, "en", sample_context("en", key, company="Finora Bank AG")).html or ""

    assert "max-width:600px" in html
    assert "<script" not in html.lower() and "src=" not in html and "<link" not in html.lower()
    footer = html.rsplit("border-top", 1)[1]
    assert "Finora Bank AG" in footer
    assert (UNSUBSCRIBE_URL in footer) is (key in RETENTION_KEYS)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("missing", ["amount_due", "due_date", "days_past_due", "pay_url"])
def test_a_dunning_message_without_its_payment_fields_raises_undefined_error(
    renderer: Renderer, channel: str, missing: str
) -> None:
    context = sample_context("en", "dunning_reminder")
    del context[missing]

    with pytest.raises(UndefinedError):
        renderer.render(channel, "dunning_reminder", "en", context)
