"""Fulfilment adapters: how a granted reward reaches the customer (points ledger, voucher codes, webhook).

Adapters import only the domain and libraries; whatever they need from the store comes in through a
small port (`PointsLedger`, `VoucherPool`) that tasks/rewards.py implements with SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """What a fulfilment attempt achieved."""

    FULFILLED = "fulfilled"
    RETRY = "retry"
    """Not done yet, for a reason that can pass (platform down, voucher pool empty): try next run."""
    FAILED = "failed"
    """Refused for good (the platform rejected the request); needs a person."""


class Event(StrEnum):
    """What a fulfilment request tells the fulfiller."""

    GRANTED = "reward.granted"
    CLAWED_BACK = "reward.clawed_back"


@dataclass(frozen=True)
class Grant:
    """One reward to fulfil (or, with event CLAWED_BACK, to take back); carries no contact data."""

    reward_key: str
    customer_key: str
    market: str
    rule: str
    kind: str
    value: Decimal
    currency: str
    points: int | None
    granted_on: date
    expires_on: date | None
    event: Event = Event.GRANTED
    reason: str | None = None

    @property
    def idempotency_key(self) -> str:
        """Return the key a fulfiller dedupes on: the reward key, suffixed for a clawback."""
        return self.reward_key if self.event is Event.GRANTED else f"{self.reward_key}:clawback"


@dataclass(frozen=True)
class Result:
    """The outcome of one grant; `reference` is the fulfiller's id for it, `error` says why not."""

    reward_key: str
    outcome: Outcome
    reference: str | None = None
    error: str | None = None
    attempts: int = 1


class Fulfiller(Protocol):
    """Fulfils granted rewards; returns one result per grant, in order, and never raises for one grant."""

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        """Fulfil each grant (idempotent by its idempotency key) and return its result."""
        ...
