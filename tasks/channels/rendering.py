"""Render messages with Jinja2 (sandboxed, StrictUndefined, autoescaped HTML) and Babel formatting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_percent
from jinja2 import (
    FileSystemBytecodeCache,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    select_autoescape,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from tasks.domain.messaging import locale_chain, sms_segments

PARTS: dict[str, tuple[str, ...]] = {
    "email": ("subject.txt", "html", "txt"),
    "sms": ("txt",),
    "whatsapp": ("txt",),
}


class TemplateMissing(LookupError):
    """No template exists for a channel, key and any locale in the fallback chain."""


@dataclass(frozen=True)
class Rendered:
    """A rendered message: the locale actually used, subject, text body and HTML body."""

    locale: str
    subject: str | None
    body: str
    html: str | None
    encoding: str | None = None
    segments: int | None = None

    def columns(self) -> dict[str, Any]:
        """Return the message columns this rendering fills (the store's names)."""
        return {
            "locale": self.locale,
            "subject": self.subject,
            "body": self.body,
            "body_html": self.html,
            "encoding": self.encoding,
            "segments": self.segments,
        }


@lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale:
    """Return the Babel locale for a BCP 47 tag, falling back along the chain to English."""
    for candidate in locale_chain(tag):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError):
            continue
    return Locale("en")


def format_money(amount: float | Decimal, currency: str, tag: str) -> str:
    """Format an amount in its currency the way the customer's locale writes it."""
    return format_currency(Decimal(str(amount)), currency, locale=babel_locale(tag))


def format_long_date(day: date, tag: str) -> str:
    """Format a date in the locale's long form (e.g. 22. November 2026)."""
    return format_date(day, format="long", locale=babel_locale(tag))


def format_share(value: float, tag: str) -> str:
    """Format a fraction as a percentage in the locale (0.1 -> 10 %)."""
    return format_percent(value, locale=babel_locale(tag))


def _clean_sms(text: str) -> str:
    # A non-breaking space forces UCS-2 and doubles the segment count (and the bill).
    lines = [" ".join(line.replace("\u00a0", " ").split()) for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def _clean_whatsapp(text: str) -> str:
    """Keep paragraphs (single blank lines) so the body matches the approved template's layout."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


class Renderer:
    """Finds a template by channel, key and locale fallback chain, and renders it."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = templates_dir
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(templates_dir)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            # Unbounded: a cycle uses a few hundred templates, and Jinja's bounded LRU cache moves each
            # one in a deque on every {% extends %}/{% import %} lookup (a scan per message part).
            cache_size=-1,
            # Compiling the ~200 templates a cycle uses took 1.6 s per process; compiled code is kept in
            # a private per-user temp dir, keyed by file path and source checksum, like Python's .pyc.
            bytecode_cache=FileSystemBytecodeCache(pattern="renewals-%s.cache"),
        )
        self._resolved: dict[tuple[str, str, str], str | None] = {}
        self._compiled: dict[str, Template] = {}
        self._blocks: dict[tuple[str, str], str | None] = {}
        self._files: dict[str, bool] = {}

    def _exists(self, name: str) -> bool:
        # Templates are read once per process (auto_reload is off), so a file's presence is too.
        if name not in self._files:
            self._files[name] = (self.templates_dir / name).is_file()
        return self._files[name]

    def resolve(self, channel: str, template: str, locale: str) -> str | None:
        """Return the most specific locale that has every part of the template, or None."""
        cache_key = (channel, template, locale)
        if cache_key not in self._resolved:
            found = None
            for candidate in locale_chain(locale):
                if all(
                    self._exists(f"{channel}/{template}/{candidate}.{part}.j2") for part in PARTS[channel]
                ):
                    found = candidate
                    break
            self._resolved[cache_key] = found
        return self._resolved[cache_key]

    def available(self, channel: str, template: str) -> list[str]:
        """Return the locales a template exists in."""
        folder = self.templates_dir / channel / template
        return sorted({p.name.split(".", 1)[0] for p in folder.glob("*.j2")}) if folder.is_dir() else []

    def _template(self, name: str) -> Template:
        if name not in self._compiled:
            try:
                self._compiled[name] = self.env.get_template(name)
            except TemplateNotFound as exc:
                raise TemplateMissing(name) from exc
        return self._compiled[name]

    def render(
        self,
        channel: str,
        template: str,
        locale: str,
        context: Mapping[str, Any],
        *,
        offer: bool = False,
        label: str | None = None,
    ) -> Rendered:
        """Render one message, with the reward offer block when `offer`, and `label` before marketing text.

        Raises TemplateMissing when no locale in the chain has the template (or the offer block).
        """
        used = self.resolve(channel, template, locale)
        if used is None:
            raise TemplateMissing(
                f"{channel}/{template} for {locale} (chain {', '.join(locale_chain(locale))})"
            )
        base = f"{channel}/{template}/{used}"
        ctx: dict[str, Any] = {**context, "channel": channel, "template_locale": used}
        block_text, block_html = self._offer_block(channel, locale, ctx) if offer else ("", "")
        if channel == "email":
            ctx["offer_block"] = Markup(block_html)
            ctx["offer_text"] = block_text
            subject = " ".join(self._template(f"{base}.subject.txt.j2").render(ctx).split())
            if label:
                subject = f"{label} {subject}"
            html = self._template(f"{base}.html.j2").render(ctx)
            text = self._template(f"{base}.txt.j2").render(ctx).strip() + "\n"
            return Rendered(used, subject, text, html)
        raw = self._template(f"{base}.txt.j2").render(ctx)
        if block_text:
            raw = f"{raw.rstrip()}\n{block_text}"
        if label:
            raw = f"{label} {raw.lstrip()}"
        if channel == "whatsapp":
            return Rendered(used, None, _clean_whatsapp(raw), None)
        body = _clean_sms(raw)
        count = sms_segments(body)
        return Rendered(used, None, body, None, count.encoding, count.segments)

    def _offer_block(self, channel: str, locale: str, ctx: Mapping[str, Any]) -> tuple[str, str]:
        """Render the removable reward offer block (text, and HTML for email)."""
        folder = f"{channel}/_blocks/reward_offer"
        if (channel, locale) not in self._blocks:
            parts = ("txt", "html") if channel == "email" else ("txt",)
            chain = locale_chain(locale)
            found = [c for c in chain if all(self._exists(f"{folder}/{c}.{p}.j2") for p in parts)]
            self._blocks[(channel, locale)] = found[0] if found else None
        candidate = self._blocks[(channel, locale)]
        if candidate is None:
            raise TemplateMissing(f"{folder} for {locale}")
        text = self._template(f"{folder}/{candidate}.txt.j2").render(ctx).strip()
        html = self._template(f"{folder}/{candidate}.html.j2").render(ctx) if channel == "email" else ""
        return text, html


@lru_cache(maxsize=64)
def _labels(templates_dir: Path, lang: str) -> dict[str, str]:
    path = templates_dir / "_i18n" / f"{lang}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): str(v) for k, v in data.items()}


@lru_cache(maxsize=4096)
def label(templates_dir: Path, key: str, tag: str) -> str:
    """Return the translated label for `key` (e.g. product.loan), following the locale chain."""
    for candidate in locale_chain(tag):
        value = _labels(templates_dir, candidate).get(key)
        if value is not None:
            return value
    return key
