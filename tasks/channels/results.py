"""What the provider channels return and need beyond base.py: richer results and template fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from tasks.channels.base import Outbound, SendResult, SendStatus
from tasks.channels.errors import Classified, ErrorClass


@dataclass(frozen=True)
class ChannelResult(SendResult):
    """A SendResult with what the provider channels know besides: cost, error class and follow-up flags."""

    segments: int | None = None
    cost: Decimal | None = None
    """Estimated price of the message in `currency` (segments x configured price); not Twilio's bill."""
    currency: str | None = None
    error_class: ErrorClass | None = None
    fallback: bool = False
    """The recipient may still be reached on the next channel of the step."""
    opt_out: bool = False
    """The recipient opted out at the provider (Twilio 21610): mirror it into the suppression list."""
    attempts: int = 0


def failed(
    message_key: str, provider: str, failure: Classified, attempts: int, segments: int | None = None
) -> ChannelResult:
    """Return the result of a message that failed (PERMANENT/TRANSIENT) or may have been sent (AMBIGUOUS)."""
    status = SendStatus.IN_DOUBT if failure.error_class is ErrorClass.AMBIGUOUS else SendStatus.FAILED
    return ChannelResult(
        message_key=message_key,
        status=status,
        provider=provider,
        error_code=failure.code,
        error_detail=failure.detail,
        error_class=failure.error_class,
        fallback=failure.fallback,
        opt_out=failure.opt_out,
        attempts=attempts,
        segments=segments,
    )


def refusal(code: str, detail: str, fallback: bool = False) -> Classified:
    """Return the PERMANENT failure of a message refused before any provider call."""
    return Classified(ErrorClass.PERMANENT, code, detail=detail, fallback=fallback)


@runtime_checkable
class Templated(Protocol):
    """The fields a templated channel needs on a message; proposed for base.Outbound (all optional)."""

    template: str | None
    locale: str | None
    variables: Mapping[str, str] | None


@dataclass(frozen=True)
class TemplatedOutbound(Outbound):
    """An Outbound with template key, locale and variables; a stand-in until base.Outbound has them."""

    template: str | None = None
    locale: str | None = None
    variables: Mapping[str, str] | None = None


def template_fields(msg: Outbound) -> tuple[str | None, str | None, Mapping[str, str] | None]:
    """Return (template, locale, variables) of a message, or Nones where the message does not carry them."""
    template = getattr(msg, "template", None)
    locale = getattr(msg, "locale", None)
    variables = getattr(msg, "variables", None)
    return (
        template if isinstance(template, str) and template else None,
        locale if isinstance(locale, str) and locale else None,
        variables if isinstance(variables, Mapping) else None,
    )


@dataclass(frozen=True)
class PendingMessage:
    """A message whose send outcome was lost: what reconcile needs to find it at the provider."""

    message_key: str
    to: str
    body: str
    claimed_at: datetime


PendingLookup = Callable[[Sequence[str]], Mapping[str, PendingMessage]]
"""Return the address, body and claim time of the given message keys (the store knows them after a crash)."""
