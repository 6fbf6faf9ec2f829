"""Message helpers: locale fallback and SMS encoding and segment counts."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LOCALE = "en"

# GSM 03.38 basic character set; the extension table costs two septets (escape + char).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def normalise_locale(tag: str) -> str:
    """Return a BCP 47 tag as `ll-Script-RR` with canonical case (de_at -> de-AT)."""
    parts = [p for p in tag.replace("_", "-").split("-") if p]
    if not parts:
        return ""
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            out.append(part.title())
        elif len(part) == 2 and part.isalpha() or len(part) == 3 and part.isdigit():
            out.append(part.upper())
        else:
            out.append(part.lower())
    return "-".join(out)


def locale_chain(tag: str, default: str = DEFAULT_LOCALE) -> tuple[str, ...]:
    """Return the lookup order for a locale: most specific first, then the default (de-AT -> de -> en)."""
    parts = normalise_locale(tag).split("-") if tag else []
    chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if default not in chain:
        chain.append(default)
    return tuple(chain)


@dataclass(frozen=True)
class SmsSegments:
    """How an SMS body travels: its encoding, billable segments and length in encoding units."""

    encoding: str
    segments: int
    units: int


GSM7 = GSM7_BASIC | GSM7_EXTENSION


def sms_segments(body: str) -> SmsSegments:
    """Count the GSM-7 or UCS-2 segments of an SMS body the way carriers split it."""
    # Character by character only when a body has double-cost characters: the set tests cover the
    # rest at C speed, and with every cost 1 the parts are a plain division.
    chars = set(body)
    if chars <= GSM7:
        if chars.isdisjoint(GSM7_EXTENSION):
            return SmsSegments("GSM-7", _even_parts(len(body), single=160, multi=153), len(body))
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
        return SmsSegments("GSM-7", _count_parts(costs, single=160, multi=153), sum(costs))
    if all(ord(ch) <= 0xFFFF for ch in chars):
        return SmsSegments("UCS-2", _even_parts(len(body), single=70, multi=67), len(body))
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
    return SmsSegments("UCS-2", _count_parts(costs, single=70, multi=67), sum(costs))


def _even_parts(units: int, single: int, multi: int) -> int:
    return 1 if units <= single else -(-units // multi)


def _count_parts(costs: list[int], single: int, multi: int) -> int:
    total = sum(costs)
    if total <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        # An escape pair or surrogate pair is never split across two parts.
        if used + cost > multi:
            parts, used = parts + 1, 0
        used += cost
    return parts
