"""Market rules the consent gate applies: consent conditions, contact windows and frequency caps.

Each rule carries the id of the row in the compliance rules table it implements
(../shared/reference/compliance.md), so every decision can cite it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from tasks.domain.contract import Channel, Purpose

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class HolidayPolicy(StrEnum):
    """How a contact window treats public holidays."""

    IGNORE = "ignore"
    EXCLUDED = "excluded"
    HOLIDAY_HOURS = "holiday_hours"


@dataclass(frozen=True)
class Window:
    """An allowed contact window in the recipient's local time; outside it a message is deferred."""

    __pydantic_config__ = {"extra": "forbid"}

    rule: str
    purposes: tuple[Purpose, ...]
    channels: tuple[Channel, ...]
    start: time
    end: time
    days: tuple[str, ...] = DAYS
    holidays: HolidayPolicy = HolidayPolicy.IGNORE
    holiday_start: time | None = None
    holiday_end: time | None = None
    weekend_as_holiday: bool = False
    regions: tuple[str, ...] = ()
    basis: str = "law"

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"window {self.rule}: start must be before end")
        unknown = set(self.days) - set(DAYS)
        if unknown:
            raise ValueError(f"window {self.rule}: unknown day(s) {sorted(unknown)}; use {', '.join(DAYS)}")
        if self.holidays is HolidayPolicy.HOLIDAY_HOURS and (
            self.holiday_start is None or self.holiday_end is None
        ):
            raise ValueError(f"window {self.rule}: holiday_hours needs holiday_start and holiday_end")

    def applies(self, purpose: str, channel: str, region: str | None) -> bool:
        """Return whether this window governs a message of `purpose` on `channel` in `region`."""
        if purpose not in self.purposes or channel not in self.channels:
            return False
        return not self.regions or (region is not None and region in self.regions)

    def interval(self, day: date, holiday: bool) -> tuple[time, time] | None:
        """Return the allowed local interval on `day`, or None when contact is not allowed that day."""
        weekend = DAYS[day.weekday()] in ("sat", "sun")
        as_holiday = holiday or (self.weekend_as_holiday and weekend)
        if as_holiday and self.holidays is HolidayPolicy.HOLIDAY_HOURS:
            assert self.holiday_start is not None and self.holiday_end is not None
            return self.holiday_start, self.holiday_end
        if holiday and self.holidays is HolidayPolicy.EXCLUDED:
            return None
        if DAYS[day.weekday()] not in self.days and not (as_holiday and self.weekend_as_holiday):
            return None
        return self.start, self.end


@dataclass(frozen=True)
class Cap:
    """At most `max` messages of these purposes per local day or week; more are blocked."""

    __pydantic_config__ = {"extra": "forbid"}

    rule: str
    purposes: tuple[Purpose, ...]
    max: int
    per: str = "day"
    channels: tuple[Channel, ...] = tuple(Channel)
    per_channel: bool = True
    basis: str = "law"

    def __post_init__(self) -> None:
        if self.per not in ("day", "week"):
            raise ValueError(f"cap {self.rule}: per must be day or week")
        if self.max < 1:
            raise ValueError(f"cap {self.rule}: max must be at least 1")


@dataclass(frozen=True)
class ConsentPolicy:
    """What counts as a marketing basis in a market, and which contacts are forbidden outright."""

    __pydantic_config__ = {"extra": "forbid"}

    double_opt_in_channels: tuple[Channel, ...] = ()
    soft_opt_in_channels: tuple[Channel, ...] = ()
    soft_opt_in_requires_notice: bool = True
    soft_opt_in_max_months: int | None = None
    bundled_consent_invalid: bool = True
    written_consent_channels: tuple[Channel, ...] = ()
    implied_consent_months: int | None = None
    third_party_contact_forbidden: bool = False
    marketing_labels: dict[str, str] = field(default_factory=dict)
    dsr_deadline_days: int = 30


@dataclass(frozen=True)
class MarketRules:
    """All gate rules of one market."""

    __pydantic_config__ = {"extra": "forbid"}

    consent: ConsentPolicy = field(default_factory=ConsentPolicy)
    windows: tuple[Window, ...] = ()
    caps: tuple[Cap, ...] = ()
    holidays_country: str | None = None
    rule_ids: tuple[str, ...] = ()
    notes: str = ""


def next_allowed(
    local_now: datetime,
    windows: list[Window],
    is_holiday: object,
    horizon_days: int = 14,
) -> datetime | None:
    """Return `local_now` if every window allows it, else the next local time all of them do.

    `is_holiday` is a callable date -> bool. Returns None when no slot exists within the horizon.
    """
    holiday = is_holiday if callable(is_holiday) else (lambda _d: False)
    for offset in range(horizon_days + 1):
        day = local_now.date() + timedelta(days=offset)
        lo, hi = time.min, time.max
        open_day = True
        for window in windows:
            span = window.interval(day, bool(holiday(day)))
            if span is None:
                open_day = False
                break
            lo, hi = max(lo, span[0]), min(hi, span[1])
        if not open_day or lo >= hi:
            continue
        start = datetime.combine(day, lo, tzinfo=local_now.tzinfo)
        end = datetime.combine(day, hi, tzinfo=local_now.tzinfo)
        if offset == 0:
            if start <= local_now < end:
                return local_now
            if local_now < start:
                return start
            continue
        return start
    return None


# Short titles of the compliance rules table (../shared/reference/compliance.md), for explanations.
RULE_TITLES: dict[str, str] = {
    "EU-01": "a lawful basis per purpose; service and dunning rest on the contract",
    "EU-02": "marketing consent is specific to the channel",
    "EU-03": "soft opt-in: sale, own similar products, opt-out at collection and in every message",
    "EU-05": "promotional content makes a message marketing; the offer block is kept or removed",
    "EU-06": "an Art. 21 objection stops marketing and marketing profiling",
    "EU-07": "suppression list checked before every send",
    "EU-08": "consent must be provable, and withdrawing it as easy as giving it",
    "EU-09": "no statutory dunning hours; our policy window applies",
    "EU-10": "erased data is never used again",
    "DE-01": "German marketing email needs express consent proven by double opt-in",
    "DE-02": "German soft opt-in needs notice of the right to object at collection",
    "DE-03": "German WhatsApp marketing needs consent naming WhatsApp, verified",
    "FR-01": "French consent cannot be bundled with the terms",
    "FR-02": "French promotional SMS Mon-Sat 08:00-20:00, no Sundays or holidays (af2m charter)",
    "ES-01": "Spanish soft opt-in needs a prior contract",
    "UK-01": "UK PECR: consent or soft opt-in for email and text marketing",
    "UK-02": "UK collections: no contact at unreasonable times (08:00-21:00 benchmark)",
    "US-01": "US TCPA: written consent for marketing texts, 08:00-21:00 local",
    "US-02": "US: consent can be revoked by any reasonable means",
    "US-05": "US Reg F hours 08:00-21:00, applied to our own dunning",
    "US-06": "Florida: marketing texts 08:00-20:00",
    "CA-01": "Canada CASL: implied consent lasts 2 years after the relationship ends",
    "CA-03": "Canada: no contact with third parties about a debt",
    "SG-02": "Singapore: bulk marketing messages carry <ADV>",
    "ID-01": "Indonesia collections Mon-Sat 08:00-20:00, not on holidays, never third parties",
    "TH-01": "Thailand collections weekdays 08:00-20:00, holidays 08:00-18:00, once a day",
    "VN-01": "Vietnam advertising: [QC] label, 07:00-22:00, at most 3 a day per channel",
    "KE-01": "Kenya: access requests answered within 7 days",
    "KE-02": "Kenya digital lenders must not message the customer's contacts",
    "NG-02": "Nigeria digital lenders must not contact third parties",
    "WA-01": "WhatsApp business messages need an opt-in naming the business",
    "ADDR-01": "a valid address for the channel is needed",
}


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each data category is kept (GDPR Art. 5(1)(e), Art. 30(1)(f) time limits)."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic when validating YAML

    message_content_days: int
    quarantine_raw_days: int
    inactive_contact_days: int
    dsr_export_days: int = 30

    def __post_init__(self) -> None:
        for name in (
            "message_content_days",
            "quarantine_raw_days",
            "inactive_contact_days",
            "dsr_export_days",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 day")
