"""Playbooks: which reminder steps fall due when, on which channels, for what purpose."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from tasks.domain.contract import Channel, ContractStatus, Product, Purpose

_ID = re.compile(r"^[a-z0-9][a-z0-9_+-]*$", re.IGNORECASE)


class PlaybookKind(StrEnum):
    """What a playbook works on, and what its step offsets count from."""

    RENEWAL = "renewal"  # active contracts, from the term end
    REPAYMENT = "repayment"  # unpaid instalments, from the due date (days past due)
    WINBACK = "winback"  # lapsed contracts, from the term end
    REACTIVATION = "reactivation"  # contracts of inactive customers, from their last activity


class SendRule(StrEnum):
    """How a step uses its channels."""

    FIRST = "first"
    ALL = "all"


@dataclass(frozen=True)
class Offer:
    """A reward offer: a discount if the customer acts by a deadline, `deadline_days` before the anchor date
    (negative: after it, as for a win-back after the term ended)."""

    __pydantic_config__ = {"extra": "forbid"}

    discount: float
    deadline_days: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.discount < 1:
            raise ValueError(f"discount is a fraction between 0 and 1, got {self.discount}")


@dataclass(frozen=True)
class Step:
    """One reminder step, due `offset_days` from the contract's anchor date."""

    __pydantic_config__ = {"extra": "forbid"}

    id: str
    offset_days: int
    channels: tuple[Channel, ...]
    template: str
    purpose: Purpose = Purpose.SERVICE
    send: SendRule = SendRule.FIRST
    auto_renew: bool | None = None
    risk_bands: tuple[str, ...] = ()
    offer: Offer | None = None
    recipient: str = "customer"
    escalate: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.recipient not in ("customer", "reference_contact"):
            raise ValueError(f"step {self.id!r}: recipient must be customer or reference_contact")
        if not _ID.match(self.id):
            raise ValueError(f"step id {self.id!r} may only hold letters, digits, '_', '+' and '-'")
        if not self.channels:
            raise ValueError(f"step {self.id!r} needs at least one channel")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"step {self.id!r} lists a channel twice")
        if not _ID.match(self.template):
            raise ValueError(f"step {self.id!r}: template key {self.template!r} is not a plain name")
        unknown = set(self.risk_bands) - {"low", "medium", "high"}
        if unknown:
            raise ValueError(
                f"step {self.id!r}: unknown risk band(s) {sorted(unknown)}; use low, medium, high"
            )


@dataclass(frozen=True)
class Playbook:
    """An ordered set of steps for one kind of journey."""

    __pydantic_config__ = {"extra": "forbid"}

    id: str
    name: str
    version: int
    steps: tuple[Step, ...]
    kind: PlaybookKind = PlaybookKind.RENEWAL
    markets: tuple[str, ...] = ()
    products: tuple[Product, ...] = tuple(Product)
    statuses: tuple[ContractStatus, ...] = (ContractStatus.ACTIVE,)
    holdout_share: float = 0.0
    catch_up_days: int = 3
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ValueError(f"playbook id {self.id!r} may only hold letters, digits, '_', '+' and '-'")
        if not self.steps:
            raise ValueError("a playbook needs at least one step")
        ids = [s.id for s in self.steps]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"step ids must be unique; repeated: {dupes}")
        offsets = [s.offset_days for s in self.steps]
        if len(set(offsets)) != len(offsets):
            raise ValueError("two steps share an offset; put both channels on one step with send: all")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in [0, 1), got {self.holdout_share}")
        if self.catch_up_days < 1:
            raise ValueError("catch_up_days must be at least 1 (a step is due on its own day)")
        if self.version < 1:
            raise ValueError("version must be a positive integer")
        for code in self.markets:
            if len(code) != 2 or not code.isupper():
                raise ValueError(f"market {code!r} must be a two-letter upper-case code")

    @property
    def ordered_steps(self) -> tuple[Step, ...]:
        """Return the steps from earliest to latest offset."""
        return tuple(sorted(self.steps, key=lambda s: s.offset_days))

    def step(self, step_id: str) -> Step:
        """Return the step called `step_id`."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def applies_to_market(self, market: str) -> bool:
        """Return whether the playbook runs for `market` (an empty list means every market)."""
        return not self.markets or market in self.markets


@dataclass(frozen=True)
class CycleConfig:
    """The playbooks a cycle runs by default, highest priority first."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic when validating YAML

    playbooks: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.playbooks:
            raise ValueError("name at least one playbook")
        if len(set(self.playbooks)) != len(self.playbooks):
            raise ValueError("a playbook is listed twice")
