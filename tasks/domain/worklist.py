"""The worklist's configuration: owners per market and the value from which a renewal goes to a person."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorklistConfig:
    """Who works escalations per market, and from what renewal value (EUR) a risky renewal is escalated."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic when validating YAML

    owners: dict[str, str] = field(default_factory=dict)
    high_value_eur: float = 500.0
    default_owner: str = "retention-team"

    def __post_init__(self) -> None:
        if self.high_value_eur < 0:
            raise ValueError("high_value_eur cannot be negative")
