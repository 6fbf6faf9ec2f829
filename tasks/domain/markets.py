"""Markets: where customers are served, with their zone, languages and currency."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.domain.rules import MarketRules


@dataclass(frozen=True)
class Market:
    """One market's defaults; consent rules per market live with the consent gate."""

    __pydantic_config__ = {"extra": "forbid"}

    code: str
    name: str
    timezone: str
    default_locale: str
    currency: str
    phone_region: str
    locales: tuple[str, ...] = field(default_factory=tuple)
    rules: MarketRules = field(default_factory=MarketRules)

    def __post_init__(self) -> None:
        if len(self.code) != 2 or not self.code.isupper():
            raise ValueError(f"market code must be two upper-case letters, got {self.code!r}")
        if len(self.currency) != 3 or not self.currency.isupper():
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")
        if self.locales and self.default_locale not in self.locales:
            raise ValueError(f"default_locale {self.default_locale!r} is not in locales {list(self.locales)}")
