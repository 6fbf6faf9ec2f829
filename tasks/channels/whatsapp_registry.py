"""The approved WhatsApp templates: (template key, locale) -> Twilio ContentSid and its ordered variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, StringConstraints, TypeAdapter

from tasks.domain.messaging import locale_chain, normalise_locale

# The render context's names (templates/README.md): a template variable can only be one of these.
CONTEXT_VARIABLES = frozenset(
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
        "offer_discount",
        "offer_deadline",
    }
)
# Twilio accepts at most 100 content variables per message.
MAX_VARIABLES = 100
# Meta rejects a template parameter that is empty, has a newline or tab, or more than 4 consecutive spaces.
_BAD_PARAMETER = re.compile(r"[\n\r\t]| {5,}")


def _check_variables(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(names) - CONTEXT_VARIABLES)
    if unknown:
        raise ValueError(f"not in the render context: {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise ValueError("a variable is listed twice")
    if len(names) > MAX_VARIABLES:
        raise ValueError(f"more than {MAX_VARIABLES} variables")
    return names


@dataclass(frozen=True)
class ContentTemplate:
    """One approved template in one locale: its ContentSid and the context names for {{1}}, {{2}}, ..."""

    content_sid: Annotated[str, StringConstraints(pattern=r"^HX[0-9a-f]{32}$")]
    variables: Annotated[tuple[str, ...], AfterValidator(_check_variables)] = ()


@dataclass(frozen=True)
class RegistryFile:
    """The YAML file: template key -> locale -> ContentTemplate."""

    templates: dict[str, dict[str, ContentTemplate]]
    version: int = 1


class WhatsAppTemplateMissing(LookupError):
    """No approved template is registered for a template key in any locale of the fallback chain."""


class WhatsAppVariablesInvalid(ValueError):
    """The render context lacks a template variable, or a value breaks WhatsApp's parameter rules."""


@dataclass(frozen=True)
class Resolved:
    """The registry entry used for a message: the locale found along the chain and its template."""

    locale: str
    template: ContentTemplate


class WhatsAppRegistry:
    """Looks up approved templates along the locale fallback chain (de-AT -> de -> en)."""

    def __init__(self, templates: Mapping[str, Mapping[str, ContentTemplate]]) -> None:
        self._templates = {
            key: {normalise_locale(loc): entry for loc, entry in by_locale.items()}
            for key, by_locale in templates.items()
        }

    def keys(self) -> list[str]:
        """Return the registered template keys."""
        return sorted(self._templates)

    def locales(self, template: str) -> list[str]:
        """Return the locales a template key is registered in."""
        return sorted(self._templates.get(template, {}))

    def resolve(self, template: str, locale: str) -> Resolved:
        """Return the most specific registered entry for `template` in `locale`'s chain, or raise."""
        by_locale = self._templates.get(template)
        if by_locale is None:
            raise WhatsAppTemplateMissing(
                f"WhatsApp template {template!r} is not registered (registered: {', '.join(self.keys())})"
            )
        chain = locale_chain(locale)
        for candidate in chain:
            if candidate in by_locale:
                return Resolved(candidate, by_locale[candidate])
        raise WhatsAppTemplateMissing(
            f"WhatsApp template {template!r} has no ContentSid for {' -> '.join(chain)}"
            f" (registered locales: {', '.join(sorted(by_locale)) or 'none'})"
        )

    def lookup(self, template: str, locale: str) -> tuple[str, tuple[str, ...]]:
        """Return (ContentSid, ordered variable names) for a template key and locale, or raise."""
        entry = self.resolve(template, locale).template
        return entry.content_sid, entry.variables

    def content_variables(self, template: str, locale: str, context: Mapping[str, object]) -> dict[str, str]:
        """Return ContentVariables ({"1": ..., "2": ...}) from a render context, or raise naming the gaps."""
        _, names = self.lookup(template, locale)
        missing = [n for n in names if context.get(n) is None]
        if missing:
            raise WhatsAppVariablesInvalid(
                f"WhatsApp template {template!r} ({locale}) needs {', '.join(missing)} in the context"
            )
        values = {str(i): str(context[n]).strip() for i, n in enumerate(names, start=1)}
        invalid = [
            n
            for i, n in enumerate(names, start=1)
            if not values[str(i)] or _BAD_PARAMETER.search(values[str(i)])
        ]
        if invalid:
            raise WhatsAppVariablesInvalid(
                f"WhatsApp template {template!r} ({locale}): {', '.join(invalid)} empty, or with a newline,"
                " tab or more than 4 spaces in a row"
            )
        return values


_FILE = TypeAdapter(RegistryFile)


def load_whatsapp_registry(path: Path) -> WhatsAppRegistry:
    """Load and validate the WhatsApp template registry YAML."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parsed = _FILE.validate_python(raw, strict=False)
    return WhatsAppRegistry(parsed.templates)
