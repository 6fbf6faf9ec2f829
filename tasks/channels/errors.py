"""One classification table for Twilio and SendGrid failures: permanent, transient or ambiguous."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import requests
from python_http_client.exceptions import HTTPError as SendGridHTTPError
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError


class ErrorClass(StrEnum):
    """What a failed send means for the next step."""

    PERMANENT = "permanent"
    """The provider refused the message; sending it again fails the same way."""
    TRANSIENT = "transient"
    """The provider did not take the message; sending it again after a pause is safe."""
    AMBIGUOUS = "ambiguous"
    """The provider may have taken the message; sending it again may deliver it twice."""


@dataclass(frozen=True)
class Rule:
    """How to treat one provider code or HTTP status."""

    error_class: ErrorClass
    detail: str
    fallback: bool = False
    """Another channel may still reach the recipient (this address or channel cannot)."""
    opt_out: bool = False
    """The recipient opted out of this sender; record it and stop sending."""
    halt: bool = False
    """The whole account or configuration is wrong; every further call fails the same way."""


@dataclass(frozen=True)
class Classified:
    """A failure, classified: its class, provider code, server-requested pause and flags."""

    error_class: ErrorClass
    code: str
    retry_after: float | None = None
    """Seconds the provider asked us to wait (Retry-After as delta-seconds)."""
    fallback: bool = False
    opt_out: bool = False
    detail: str = ""
    """A fixed description from the table; never the provider's message, which can quote the recipient."""
    halt: bool = False
    retry_at: float | None = None
    """Unix time the provider asked us to wait until (Retry-After HTTP date, SendGrid X-RateLimit-Reset)."""
    status: int | None = None
    fields: tuple[str, ...] = ()
    """The request fields the provider blamed (SendGrid error `field` paths, never their values)."""


P, T, A = ErrorClass.PERMANENT, ErrorClass.TRANSIENT, ErrorClass.AMBIGUOUS

# Codes come from https://www.twilio.com/docs/api/errors/NNNNN. Twilio says error codes may change, so the
# table is data the senders take as an argument, not logic.
TWILIO_CODES: Mapping[int, Rule] = {
    21211: Rule(P, "invalid To number", fallback=True),
    21408: Rule(P, "destination region not enabled (geo permissions)", fallback=True),
    21610: Rule(P, "recipient opted out (STOP)", opt_out=True),
    21611: Rule(T, "sender queue full"),
    21612: Rule(P, "To not reachable from this sender", fallback=True),
    21614: Rule(P, "To is not a mobile number", fallback=True),
    20003: Rule(P, "authentication failed", halt=True),
    20429: Rule(T, "too many concurrent requests"),
    30001: Rule(T, "queue overflow"),
    30003: Rule(T, "unreachable handset"),
    30004: Rule(P, "message blocked", fallback=True),
    30005: Rule(P, "unknown or inactive destination", fallback=True),
    30006: Rule(P, "landline or unreachable carrier", fallback=True),
    # Filtered as spam: sending the same content again is filtered again and hurts the sender's reputation.
    30007: Rule(P, "message filtered", fallback=True),
    30008: Rule(T, "unknown carrier error"),
    63016: Rule(P, "outside the WhatsApp session window or not a template", fallback=True),
    63018: Rule(T, "WhatsApp rate or tier limit"),
    63024: Rule(P, "invalid WhatsApp recipient", fallback=True),
    63049: Rule(P, "Meta did not deliver the marketing template", fallback=True),
}

# A Messages create is not idempotent (no idempotency key), so a 500/502/504 after the request reached Twilio
# may already have created the message; resending could text the customer twice. 503 means not processed.
TWILIO_STATUSES: Mapping[int, Rule] = {
    400: Rule(P, "bad request"),
    401: Rule(P, "authentication failed", halt=True),
    403: Rule(P, "forbidden", halt=True),
    404: Rule(P, "not found", halt=True),
    405: Rule(P, "method not allowed", halt=True),
    413: Rule(P, "payload too large"),
    422: Rule(P, "unprocessable request"),
    429: Rule(T, "rate limited"),
    500: Rule(A, "server error (may have been created)"),
    502: Rule(A, "bad gateway (may have been created)"),
    503: Rule(T, "service unavailable"),
    504: Rule(A, "gateway timeout (may have been created)"),
}

# mail/send has no idempotency key either: a 500/502/504 may have queued the mail. 413 is permanent for the
# request as built; a batched request is split and resent by the sender (nothing was accepted).
SENDGRID_STATUSES: Mapping[int, Rule] = {
    400: Rule(P, "bad request"),
    401: Rule(P, "authentication failed", halt=True),
    403: Rule(P, "forbidden (sender identity or key scope)", halt=True),
    404: Rule(P, "not found", halt=True),
    405: Rule(P, "method not allowed", halt=True),
    413: Rule(P, "payload too large"),
    415: Rule(P, "unsupported media type", halt=True),
    429: Rule(T, "rate limited"),
    500: Rule(A, "server error (may have been queued)"),
    502: Rule(A, "bad gateway (may have been queued)"),
    503: Rule(T, "service unavailable"),
    504: Rule(A, "gateway timeout (may have been queued)"),
}

NETWORK_BEFORE_SEND = Rule(T, "connection failed before the request was sent")
NETWORK_AFTER_SEND = Rule(A, "no response after the request was sent")
UNKNOWN_ERROR = Rule(A, "unexpected error while sending")


def _by_status(status: int, statuses: Mapping[int, Rule]) -> Rule:
    if status in statuses:
        return statuses[status]
    if status >= 500:
        return Rule(A, "server error (may have been accepted)")
    if status == 429:
        return Rule(T, "rate limited")
    return Rule(P, f"HTTP {status}")


def _classified(rule: Rule, code: str, status: int | None = None, **extra: Any) -> Classified:
    return Classified(
        error_class=rule.error_class,
        code=code,
        fallback=rule.fallback,
        opt_out=rule.opt_out,
        detail=rule.detail,
        halt=rule.halt,
        status=status,
        **extra,
    )


def retry_hint(headers: Mapping[str, str] | None) -> tuple[float | None, float | None]:
    """Return (delay seconds, until unix time) from Retry-After or X-RateLimit-Reset headers."""
    if not headers:
        return None, None
    lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    value = lower.get("retry-after")
    if value:
        try:
            return max(0.0, float(value)), None
        except ValueError:
            pass
        try:
            return None, parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    reset = lower.get("x-ratelimit-reset")
    if reset:
        try:
            return None, float(reset)
        except ValueError:
            pass
    return None, None


def classify_network(exc: BaseException) -> Classified | None:
    """Classify a transport failure of requests or urllib, or return None if `exc` is not one."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return _classified(NETWORK_BEFORE_SEND, "NETWORK_CONNECT")
    if isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc):
        return _classified(NETWORK_BEFORE_SEND, "NETWORK_CONNECT")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return _classified(NETWORK_AFTER_SEND, "NETWORK_TIMEOUT")
    if isinstance(exc, requests.exceptions.RequestException):
        return _classified(NETWORK_AFTER_SEND, "NETWORK_DROPPED")
    # urllib wraps every OSError raised while connecting and writing the request in URLError; errors while
    # reading the response surface raw, after the provider may have read the request.
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return _classified(NETWORK_BEFORE_SEND, "NETWORK_CONNECT")
    if isinstance(exc, TimeoutError | socket.timeout):
        return _classified(NETWORK_AFTER_SEND, "NETWORK_TIMEOUT")
    if isinstance(exc, http.client.HTTPException | ConnectionError | ssl.SSLError):
        return _classified(NETWORK_AFTER_SEND, "NETWORK_DROPPED")
    return None


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """Tell a refused or unresolvable connection (nothing sent) from one dropped mid-exchange."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, NewConnectionError | NameResolutionError | ConnectTimeoutError):
            return True
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        stack.extend(a for a in item.args if isinstance(a, BaseException))
    return False


def classify_twilio_code(
    code: int | str | None, status: int | None = None, table: Mapping[int, Rule] = TWILIO_CODES
) -> Classified:
    """Classify a Twilio error code, e.g. the ErrorCode of a status callback (30xxx/63xxx)."""
    try:
        number = int(code) if code not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    if number is not None and number in table:
        return _classified(table[number], str(number), status)
    if status is not None:
        return _classified(_by_status(status, TWILIO_STATUSES), str(number or status), status)
    return _classified(Rule(P, "unknown Twilio error"), str(number) if number is not None else "UNKNOWN")


def classify_twilio(
    exc: BaseException,
    headers: Mapping[str, str] | None = None,
    codes: Mapping[int, Rule] = TWILIO_CODES,
    statuses: Mapping[int, Rule] = TWILIO_STATUSES,
) -> Classified:
    """Classify an exception raised by a twilio-python call; `headers` are the failed response's headers."""
    delay, until = retry_hint(headers)
    # TwilioServiceException (RFC 9457 bodies, twilio >= 9.10) is not a TwilioRestException: check both.
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status) if exc.status is not None else 0
        code = exc.code if exc.code is not None else status
        rule = codes[code] if isinstance(code, int) and code in codes else _by_status(status, statuses)
        return _classified(rule, str(code), status, retry_after=delay, retry_at=until)
    if isinstance(exc, TwilioException):
        # A bare TwilioException comes from paging (non-200 list page); the response is its second argument.
        response = exc.args[1] if len(exc.args) > 1 else None
        page_status = getattr(response, "status_code", None)
        if isinstance(page_status, int):
            rule = _by_status(page_status, statuses)
            return _classified(rule, str(page_status), page_status, retry_after=delay, retry_at=until)
        return _classified(UNKNOWN_ERROR, "TWILIO_CLIENT")
    network = classify_network(exc)
    if network is not None:
        return network
    return replace(_classified(UNKNOWN_ERROR, "UNEXPECTED"), detail=f"unexpected {type(exc).__name__}")


def _sendgrid_fields(body: bytes | str | None) -> tuple[str, ...]:
    """Return the failing field paths of a SendGrid error body (paths only: messages can quote addresses)."""
    try:
        payload = json.loads(body or b"")
    except (TypeError, ValueError):
        return ()
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(
        sorted(
            {
                str(e["field"])
                for e in errors
                if isinstance(e, dict) and isinstance(e.get("field"), str) and "@" not in e["field"]
            }
        )
    )


def classify_sendgrid(exc: BaseException, statuses: Mapping[int, Rule] = SENDGRID_STATUSES) -> Classified:
    """Classify an exception raised by a sendgrid-python (python_http_client) call."""
    if isinstance(exc, SendGridHTTPError):
        status = int(exc.status_code)
        headers = dict(exc.headers.items()) if exc.headers is not None else {}
        delay, until = retry_hint(headers)
        rule = _by_status(status, statuses)
        fields = _sendgrid_fields(exc.body)
        detail = f"{rule.detail} ({', '.join(fields[:5])})" if fields else rule.detail
        classified = _classified(rule, str(status), status, retry_after=delay, retry_at=until)
        return replace(classified, detail=detail, fields=fields)
    network = classify_network(exc)
    if network is not None:
        return network
    return replace(_classified(UNKNOWN_ERROR, "UNEXPECTED"), detail=f"unexpected {type(exc).__name__}")


def classification_markdown() -> str:
    """Return the classification tables as Markdown for docs/channels.md (a test keeps them in step)."""
    out = []
    for title, table in (
        ("Twilio error codes", TWILIO_CODES),
        ("Twilio HTTP statuses (when the body carries no code)", TWILIO_STATUSES),
        ("SendGrid HTTP statuses", SENDGRID_STATUSES),
    ):
        header = "| code | class | meaning | falls back | opt-out | stops the batch |\n" + "|---" * 6 + "|\n"
        out.append(f"#### {title}\n\n{header}")
        for code, rule in sorted(table.items()):
            flags = ["yes" if f else "" for f in (rule.fallback, rule.opt_out, rule.halt)]
            out.append(f"| {code} | {rule.error_class.value} | {rule.detail} | {' | '.join(flags)} |\n")
        out.append("\n")
    return "".join(out).rstrip() + "\n"
