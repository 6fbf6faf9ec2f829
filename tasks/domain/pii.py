"""Personal-data shapes (emails, phone numbers, IBANs): find them, mask them."""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# E.164, or a national number of 8+ digits written with spaces, dots, dashes or brackets.
PHONE = re.compile(r"(?<![\w/])(?:\+|00)?\d(?:[\s().\-]?\d){7,14}(?![\w/])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,4})?\b")
# ISO dates and times look like digit runs; they are not personal and must survive masking.
_DATE_LIKE = re.compile(
    r"^\d{4}-\d{2}-\d{2}|^\d{2}:\d{2}|^(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$"
)

PATTERNS: dict[str, re.Pattern[str]] = {"email": EMAIL, "iban": IBAN, "phone": PHONE}


def find_pii(text: str) -> list[str]:
    """Return the kinds of personal data that `text` appears to contain."""
    found = []
    for kind, pattern in PATTERNS.items():
        if kind == "phone":
            text = IBAN.sub("", EMAIL.sub("", text))
        for match in pattern.finditer(text):
            if kind == "phone" and _DATE_LIKE.match(match.group(0).strip()):
                continue
            found.append(kind)
            break
    return found


def mask_pii(text: str) -> str:
    """Return `text` with emails, IBANs and phone numbers replaced by placeholders."""
    text = EMAIL.sub("<email>", text)
    text = IBAN.sub("<iban>", text)
    return PHONE.sub(lambda m: m.group(0) if _DATE_LIKE.match(m.group(0).strip()) else "<phone>", text)


def assert_no_pii(parameters: dict[str, object]) -> None:
    """Raise ValueError when a flow parameter looks like personal data (it would be stored by Prefect)."""
    for name, value in parameters.items():
        kinds = find_pii(str(value))
        if kinds:
            raise ValueError(
                f"parameter {name!r} looks like personal data ({', '.join(kinds)}); "
                "pass customer keys, never contact details"
            )
