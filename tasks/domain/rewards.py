"""Rewards: rule definitions, who qualifies, budget allocation, FIFO points and clawback detection.

Everything here is pure: frames in, frames out. The store decides nothing; it only records what these
functions return, under a lock on the budget it spends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

import numpy as np
import pandas as pd

from tasks.domain.planning import in_holdout

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MARKET = re.compile(r"^[A-Z]{2}$")
NOTIFY_CHANNELS = ("email", "sms")


class Trigger(StrEnum):
    """The kind of event that earns a reward."""

    EARLY_RENEWAL = "early_renewal"
    ON_TIME_STREAK = "on_time_streak"
    REACTIVATION = "reactivation"


class RewardKind(StrEnum):
    """What the customer gets."""

    POINTS = "points"
    CASHBACK = "cashback"
    VOUCHER = "voucher"


class Fulfilment(StrEnum):
    """How a granted reward reaches the customer."""

    POINTS = "points"
    VOUCHER = "voucher"
    WEBHOOK = "webhook"


class RewardStatus(StrEnum):
    """Where a reward stands; holdout and over_budget rows record a decision but give nothing."""

    HOLDOUT = "holdout"
    OVER_BUDGET = "over_budget"
    GRANTED = "granted"
    FULFILLED = "fulfilled"
    REDEEMED = "redeemed"
    EXPIRED = "expired"
    CLAWED_BACK = "clawed_back"
    FAILED = "failed"


class ClawbackReason(StrEnum):
    """Why a reward was taken back."""

    RENEWAL_UNDONE = "renewal_undone"
    PAYMENT_REVERSED = "payment_reversed"


# A reward can be clawed back while the customer holds (or held) its value.
CLAWBACK_FROM = frozenset({RewardStatus.GRANTED, RewardStatus.FULFILLED, RewardStatus.REDEEMED})
COMPATIBLE: Mapping[RewardKind, frozenset[Fulfilment]] = {
    RewardKind.POINTS: frozenset({Fulfilment.POINTS}),
    RewardKind.VOUCHER: frozenset({Fulfilment.VOUCHER, Fulfilment.WEBHOOK}),
    RewardKind.CASHBACK: frozenset({Fulfilment.WEBHOOK}),
}


@dataclass(frozen=True)
class EarlyRenewal:
    """Renewed at least `min_days_before_term_end` days before the term ends."""

    __pydantic_config__ = {"extra": "forbid"}

    min_days_before_term_end: int

    def __post_init__(self) -> None:
        if self.min_days_before_term_end < 0:
            raise ValueError("min_days_before_term_end cannot be negative")


@dataclass(frozen=True)
class OnTimeStreak:
    """`instalments` consecutive instalments of a contract paid on or before their due date."""

    __pydantic_config__ = {"extra": "forbid"}

    instalments: int
    grace_days: int = 0

    def __post_init__(self) -> None:
        if self.instalments < 1:
            raise ValueError("instalments must be at least 1")
        if self.grace_days < 0:
            raise ValueError("grace_days cannot be negative")


@dataclass(frozen=True)
class Reactivation:
    """An inactive customer (average below `inactive_below` a month) becomes active again."""

    __pydantic_config__ = {"extra": "forbid"}

    inactive_below: float = 2.0
    lookback_months: int = 3
    active_at_least: float = 2.0

    def __post_init__(self) -> None:
        if self.inactive_below <= 0:
            raise ValueError("inactive_below must be positive")
        if self.lookback_months < 1:
            raise ValueError("lookback_months must be at least 1")
        if self.active_at_least <= 0:
            raise ValueError("active_at_least must be positive")


@dataclass(frozen=True)
class When:
    """The qualifying event of a rule: exactly one of the three kinds."""

    __pydantic_config__ = {"extra": "forbid"}

    early_renewal: EarlyRenewal | None = None
    on_time_streak: OnTimeStreak | None = None
    reactivation: Reactivation | None = None

    def __post_init__(self) -> None:
        given = [t.value for t in Trigger if getattr(self, t.value) is not None]
        if len(given) != 1:
            shown = ", ".join(given) or "none"
            raise ValueError(f"give exactly one of early_renewal, on_time_streak, reactivation (got {shown})")

    @property
    def trigger(self) -> Trigger:
        """Return which kind of event this is."""
        return next(t for t in Trigger if getattr(self, t.value) is not None)


@dataclass(frozen=True)
class RewardRule:
    """One reward rule: what qualifies, what it pays per currency, its budgets and how it is fulfilled."""

    __pydantic_config__ = {"extra": "forbid"}

    id: str
    name: str
    version: int
    when: When
    reward: RewardKind
    value: dict[str, Decimal]
    budget: dict[str, Decimal]
    fulfilment: Fulfilment
    points: int = 0
    holdout_share: float = 0.0
    expires_after_days: int | None = None
    lookback_days: int = 45
    notify: tuple[str, ...] = NOTIFY_CHANNELS
    description: str = ""

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ValueError(f"rule id {self.id!r} may only hold lower-case letters, digits, '_' and '-'")
        if self.version < 1:
            raise ValueError("version must be a positive integer")
        if not self.value:
            raise ValueError("value needs an amount for at least one currency, e.g. {EUR: 10}")
        for currency, amount in self.value.items():
            if not _CURRENCY.match(currency):
                raise ValueError(f"value: {currency!r} is not an ISO 4217 currency code")
            if amount <= 0:
                raise ValueError(f"value: {currency} must be positive, got {amount}")
        if not self.budget:
            raise ValueError("budget needs a monthly amount for at least one market, e.g. {DE: 5000}")
        for market, amount in self.budget.items():
            if not _MARKET.match(market):
                raise ValueError(f"budget: {market!r} is not a two-letter upper-case market code")
            if amount < 0:
                raise ValueError(f"budget: {market} cannot be negative, got {amount}")
        if self.fulfilment not in COMPATIBLE[self.reward]:
            allowed = ", ".join(sorted(COMPATIBLE[self.reward]))
            raise ValueError(f"a {self.reward} reward is fulfilled by {allowed}, not {self.fulfilment}")
        if (self.reward is RewardKind.POINTS) != (self.points > 0):
            raise ValueError("points must be positive for a points reward, and only for one")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in [0, 1), got {self.holdout_share}")
        if self.reward is RewardKind.CASHBACK and self.expires_after_days is not None:
            raise ValueError("cashback is paid out and never expires; remove expires_after_days")
        if self.reward is not RewardKind.CASHBACK and self.expires_after_days is None:
            raise ValueError(f"a {self.reward} reward needs expires_after_days")
        if self.expires_after_days is not None and self.expires_after_days < 1:
            raise ValueError("expires_after_days must be at least 1")
        if self.lookback_days < 1:
            raise ValueError("lookback_days must be at least 1")
        unknown = sorted(set(self.notify) - set(NOTIFY_CHANNELS))
        if unknown:
            raise ValueError(f"notify: unknown channel(s) {unknown}; use {', '.join(NOTIFY_CHANNELS)}")

    @property
    def trigger(self) -> Trigger:
        """Return the kind of event the rule rewards."""
        return self.when.trigger

    @property
    def markets(self) -> tuple[str, ...]:
        """Return the markets the rule runs in: those with a budget."""
        return tuple(sorted(self.budget))

    def expires_on(self, granted_on: date) -> date | None:
        """Return the last day a reward granted on `granted_on` can be used (None: it never expires)."""
        if self.expires_after_days is None:
            return None
        return granted_on + timedelta(days=self.expires_after_days)


@dataclass(frozen=True)
class FxRates:
    """Fixed reporting rates: EUR per one unit of each currency."""

    __pydantic_config__ = {"extra": "forbid"}

    eur_per_unit: dict[str, Decimal]
    as_of: date | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for currency, rate in self.eur_per_unit.items():
            if not _CURRENCY.match(currency):
                raise ValueError(f"eur_per_unit: {currency!r} is not an ISO 4217 currency code")
            if rate <= 0:
                raise ValueError(f"eur_per_unit: {currency} must be positive, got {rate}")
        if self.eur_per_unit.get("EUR", Decimal(1)) != 1:
            raise ValueError("eur_per_unit: EUR must be 1")

    def to_eur(self, amount: Decimal, currency: str) -> Decimal:
        """Return `amount` in EUR, rounded to the cent."""
        rate = Decimal(1) if currency == "EUR" else self.eur_per_unit[currency]
        return (amount * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def check_rules(
    rules: Sequence[RewardRule], currencies: Mapping[str, str], fx: FxRates
) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """Return problems per rule id as (field path, message): unknown markets, missing values or rates."""
    problems: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for rule in rules:
        found: list[tuple[tuple[str, ...], str]] = []
        for market in rule.markets:
            currency = currencies.get(market)
            if currency is None:
                known = ", ".join(sorted(currencies))
                found.append((("budget", market), f"unknown market {market!r}; configured: {known}"))
                continue
            if currency not in rule.value:
                found.append((("value",), f"market {market} pays in {currency}, which has no value here"))
            if currency != "EUR" and currency not in fx.eur_per_unit:
                found.append((("value", currency), f"no EUR rate for {currency} in the FX table"))
        if found:
            problems[rule.id] = found
    return problems


# --- qualifying events ---------------------------------------------------------------------------

EVENT_COLUMNS = (
    "reward_key",
    "rule",
    "trigger",
    "customer_key",
    "market",
    "contract_key",
    "event_key",
    "event_date",
    "evidence",
)


def reward_key(rule_id: str, customer_key: str, event_key: str) -> str:
    """Return the unique key of one reward: one per customer, rule and qualifying event."""
    return f"{rule_id}:{customer_key}:{event_key}"


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in EVENT_COLUMNS})


def _events(rule: RewardRule, frame: pd.DataFrame) -> pd.DataFrame:
    """Finish an event frame: keys, rule, trigger and the column order every caller relies on."""
    if frame.empty:
        return _empty_events()
    out = frame.copy()
    out["rule"] = rule.id
    out["trigger"] = rule.trigger.value
    out["reward_key"] = rule.id + ":" + out["customer_key"].astype(str) + ":" + out["event_key"].astype(str)
    out["event_date"] = pd.to_datetime(out["event_date"]).dt.date
    return out[list(EVENT_COLUMNS)].sort_values("reward_key", kind="stable").reset_index(drop=True)


def _day(value: date) -> pd.Timestamp:
    return pd.Timestamp(value)


def early_renewal_events(contracts: pd.DataFrame, rule: RewardRule, as_of: date) -> pd.DataFrame:
    """Return renewals made at least N days before the term end, on or before `as_of`, within the lookback.

    `contracts` has contract_key, customer_key, market, term_end and renewed_at. A renewal is identified
    by its contract and renewal date, so a term that later rolls forward is never rewarded twice.
    """
    params = rule.when.early_renewal
    if params is None or contracts.empty:
        return _empty_events()
    df = contracts.loc[contracts["market"].isin(rule.markets)]
    renewed = pd.to_datetime(df["renewed_at"])
    term_end = pd.to_datetime(df["term_end"])
    days_before = (term_end - renewed).dt.days
    hit = (
        renewed.notna()
        & (renewed <= _day(as_of))
        & (renewed >= _day(as_of - timedelta(days=rule.lookback_days)))
        & (days_before >= params.min_days_before_term_end)
    )
    rows = df.loc[hit]
    found = pd.DataFrame(
        {
            "customer_key": rows["customer_key"].astype(str),
            "market": rows["market"].astype(str),
            "contract_key": rows["contract_key"].astype(str),
            "event_key": rows["contract_key"].astype(str) + ":" + renewed[hit].dt.strftime("%Y%m%d"),
            "event_date": renewed[hit],
            "evidence": [[str(k)] for k in rows["contract_key"]],
        }
    )
    return _events(rule, found)


def streak_events(
    instalments: pd.DataFrame, rule: RewardRule, as_of: date, used: Iterable[str] = ()
) -> pd.DataFrame:
    """Return each completed run of K on-time instalments per contract, within the lookback.

    `instalments` has instalment_key, contract_key, customer_key, market, due_date and paid_date. Only
    instalments due (or paid) by `as_of` count; a late or unpaid one breaks the run, and so does one
    already counted by an earlier reward of the rule (`used`), so no payment earns twice.
    """
    params = rule.when.on_time_streak
    if params is None or instalments.empty:
        return _empty_events()
    k = params.instalments
    df = instalments.loc[instalments["market"].isin(rule.markets)].copy()
    df["due_date"] = pd.to_datetime(df["due_date"])
    df["paid_date"] = pd.to_datetime(df["paid_date"])
    today = _day(as_of)
    paid_by_now = df["paid_date"].notna() & (df["paid_date"] <= today)
    df = df.loc[(df["due_date"] <= today) | paid_by_now]
    df = df.sort_values(["contract_key", "due_date", "instalment_key"], kind="stable").reset_index(drop=True)
    if df.empty:
        return _empty_events()
    on_time = (
        df["paid_date"].notna()
        & (df["paid_date"] <= today)
        & (df["paid_date"] <= df["due_date"] + pd.Timedelta(days=params.grace_days))
    )
    counts = on_time & ~df["instalment_key"].isin(set(used))
    run = (~counts).astype("int64").groupby(df["contract_key"]).cumsum()
    position = counts.astype("int64").groupby([df["contract_key"], run]).cumsum()
    done = counts & (position % k == 0)
    keys = df["instalment_key"].astype(str).to_numpy()
    paid = df["paid_date"].to_numpy()
    ends = np.flatnonzero(done.to_numpy())
    evidence = [[str(x) for x in keys[i - k + 1 : i + 1]] for i in ends]
    completed = [pd.Timestamp(paid[i - k + 1 : i + 1].max()) for i in ends]
    rows = df.iloc[ends]
    found = pd.DataFrame(
        {
            "customer_key": rows["customer_key"].astype(str).to_numpy(),
            "market": rows["market"].astype(str).to_numpy(),
            "contract_key": rows["contract_key"].astype(str).to_numpy(),
            "event_key": rows["instalment_key"].astype(str).to_numpy(),
            "event_date": completed,
            "evidence": evidence,
        }
    )
    if found.empty:
        return _empty_events()
    found = found.loc[pd.to_datetime(found["event_date"]) >= _day(as_of - timedelta(days=rule.lookback_days))]
    return _events(rule, found)


def _month_start(value: date) -> date:
    return value.replace(day=1)


def _add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def reactivation_events(
    activity: pd.DataFrame, customers: pd.DataFrame, rule: RewardRule, as_of: date
) -> pd.DataFrame:
    """Return customers who were inactive and became active again in a month within the lookback.

    Inactive before month M: fewer than `inactive_below` transactions a month on average over the
    `lookback_months` before M, and below `active_at_least` in the month just before M. Active in M: at
    least `active_at_least` transactions. Missing months count as zero; the customer must have been
    with us for the whole inactive window. `activity` has customer_key, month and transactions;
    `customers` has customer_key, market, customer_since and contract_key (their latest, or None).
    """
    params = rule.when.reactivation
    if params is None or activity.empty or customers.empty:
        return _empty_events()
    people = customers.loc[customers["market"].isin(rule.markets)].set_index("customer_key")
    acts = activity.loc[activity["customer_key"].isin(people.index)]
    if acts.empty:
        return _empty_events()
    months = pd.Series(
        pd.to_datetime(acts["month"]).dt.to_period("M").dt.to_timestamp(), index=acts.index, name="month"
    )
    table = acts.assign(month=months).pivot_table(
        index="customer_key", columns="month", values="transactions", aggfunc="sum", fill_value=0
    )
    first_seen = months.groupby(acts["customer_key"]).min()
    since = pd.to_datetime(people["customer_since"]).combine_first(first_seen.reindex(people.index))
    cutoff = as_of - timedelta(days=rule.lookback_days)
    found = []
    month = _month_start(as_of)
    while True:
        event_day = min(_add_months(month, 1) - timedelta(days=1), as_of)
        if event_day < cutoff:
            break
        window = [pd.Timestamp(_add_months(month, -i)) for i in range(1, params.lookback_months + 1)]
        counts = table.reindex(index=people.index, columns=[*window, pd.Timestamp(month)], fill_value=0)
        prior = counts[window].sum(axis=1) / params.lookback_months
        before = counts[window[0]]
        now = counts[pd.Timestamp(month)]
        known = since.notna() & (since <= window[-1])
        hit = (prior < params.inactive_below) & (before < params.active_at_least)
        hit &= (now >= params.active_at_least) & known
        rows = people.loc[hit]
        found.append(
            pd.DataFrame(
                {
                    "customer_key": rows.index.astype(str),
                    "market": rows["market"].astype(str).to_numpy(),
                    "contract_key": rows["contract_key"].to_numpy(),
                    "event_key": f"{month:%Y-%m}",
                    "event_date": pd.Timestamp(event_day),
                    "evidence": [[f"{month:%Y-%m}"] for _ in range(len(rows))],
                }
            )
        )
        month = _add_months(month, -1)
    frame = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    return _events(rule, frame)


@dataclass(frozen=True)
class RewardInputs:
    """What the rules read: customers (with their latest contract), contracts, instalments, activity."""

    customers: pd.DataFrame
    contracts: pd.DataFrame
    instalments: pd.DataFrame
    activity: pd.DataFrame
    used: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Instalment keys already counted by each streak rule's rewards."""


def qualifying_events(rule: RewardRule, inputs: RewardInputs, as_of: date) -> pd.DataFrame:
    """Return the rule's qualifying events as of `as_of`, each with its unique reward key."""
    if rule.trigger is Trigger.EARLY_RENEWAL:
        return early_renewal_events(inputs.contracts, rule, as_of)
    if rule.trigger is Trigger.ON_TIME_STREAK:
        return streak_events(inputs.instalments, rule, as_of, inputs.used.get(rule.id, frozenset()))
    return reactivation_events(inputs.activity, inputs.customers, rule, as_of)


# --- decisions and budgets -----------------------------------------------------------------------


def to_minor(amount: Decimal | float) -> int:
    """Return an amount in hundredths, so budget sums are exact integers."""
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def priced(
    events: pd.DataFrame, rule: RewardRule, currencies: Mapping[str, str], fx: FxRates
) -> pd.DataFrame:
    """Return events with the reward's kind, points, value and currency of their market, and EUR cost."""
    out = events.copy()
    currency = out["market"].map(currencies)
    value = currency.map(lambda c: rule.value.get(c) if isinstance(c, str) else None)
    missing = sorted(set(out.loc[value.isna(), "market"]))
    if missing:
        raise ValueError(f"rule {rule.id}: no value for the currency of market(s) {missing}")
    out["kind"] = rule.reward.value
    out["fulfilment"] = rule.fulfilment.value
    out["points"] = rule.points if rule.reward is RewardKind.POINTS else None
    out["currency"] = currency.astype("object")
    out["value"] = value.astype("object")
    out["cost_eur"] = pd.Series(
        [fx.to_eur(v, c) for v, c in zip(out["value"], out["currency"], strict=True)],
        index=out.index,
        dtype="object",
    )
    return out


def holdout(events: pd.DataFrame, rule: RewardRule) -> pd.Series:
    """Return True for events whose customer is in the rule's stable control group."""
    return in_holdout(events["customer_key"].astype(str), f"reward-holdout:{rule.id}", rule.holdout_share)


def allocate(costs: Sequence[int], remaining: int) -> list[bool]:
    """Return which costs (in order) fit in `remaining`: first come, first served, never above it.

    A cost that does not fit is skipped and later, smaller ones may still fit.
    """
    granted = []
    left = remaining
    for cost in costs:
        fits = 0 <= cost <= left
        granted.append(fits)
        if fits:
            left -= cost
    return granted


def decide(events: pd.DataFrame, rule: RewardRule, remaining: int) -> pd.Series:
    """Return each priced event's status: holdout, granted within `remaining` (minor units), else over_budget.

    Events are served oldest first (event date, then reward key), so a rerun decides the same way.
    """
    if events.empty:
        return pd.Series(dtype="object")
    control = holdout(events, rule)
    order = events.assign(_d=pd.to_datetime(events["event_date"])).sort_values(
        ["_d", "reward_key"], kind="stable"
    )
    order = order.loc[~control.loc[order.index]]
    fits = allocate([to_minor(v) for v in order["value"]], remaining)
    status = pd.Series(RewardStatus.OVER_BUDGET.value, index=events.index, dtype="object")
    status[control] = RewardStatus.HOLDOUT.value
    status[order.index[np.asarray(fits, dtype=bool)]] = RewardStatus.GRANTED.value
    return status


def pick_channel(has_email: pd.Series, has_phone: pd.Series, notify: Sequence[str]) -> pd.Series:
    """Return the first channel of `notify` each customer can be reached on, or None."""
    reach = {"email": has_email.fillna(False).astype(bool), "sms": has_phone.fillna(False).astype(bool)}
    picked = [next((c for c in notify if reach[c].iloc[i]), None) for i in range(len(has_email))]
    return pd.Series(picked, index=has_email.index, dtype="object")


# --- points: FIFO ------------------------------------------------------------------------------


class NotEnoughPoints(ValueError):
    """A redemption asks for more points than the customer's usable balance."""


@dataclass(frozen=True)
class Lot:
    """The points one reward granted, and how many of them are left."""

    lot_key: str
    granted_on: date
    expires_on: date | None
    remaining: int

    def usable(self, today: date) -> bool:
        """Return whether points of this lot can still be spent on `today`."""
        return self.remaining > 0 and (self.expires_on is None or today <= self.expires_on)


def fifo(lots: Iterable[Lot]) -> list[Lot]:
    """Return lots oldest first (grant day, then key), the order points are used and expire in."""
    return sorted(lots, key=lambda lot: (lot.granted_on, lot.lot_key))


def balance(lots: Iterable[Lot], today: date) -> int:
    """Return the points a customer can spend on `today`."""
    return sum(lot.remaining for lot in lots if lot.usable(today))


def _take(lots: Iterable[Lot], points: int, today: date) -> tuple[dict[str, int], int]:
    taken: dict[str, int] = {}
    need = points
    for lot in fifo(lots):
        if need == 0:
            break
        if not lot.usable(today):
            continue
        part = min(lot.remaining, need)
        taken[lot.lot_key] = part
        need -= part
    return taken, need


def redeem(lots: Iterable[Lot], points: int, today: date) -> dict[str, int]:
    """Return how many points to take from each lot, oldest unexpired first; all or nothing."""
    if points <= 0:
        raise ValueError("a redemption takes a positive number of points")
    pool = list(lots)
    have = balance(pool, today)
    if have < points:
        raise NotEnoughPoints(f"asked for {points} points, {have} usable")
    taken, _ = _take(pool, points, today)
    return taken


def expiring(lots: Iterable[Lot], today: date) -> dict[str, int]:
    """Return the points that expire per lot: what is left of lots whose last day was before `today`."""
    return {
        lot.lot_key: lot.remaining
        for lot in fifo(lots)
        if lot.remaining > 0 and lot.expires_on is not None and lot.expires_on < today
    }


def claw_back_points(
    lots: Iterable[Lot], lot_key: str, points: int, today: date
) -> tuple[dict[str, int], int]:
    """Return the points to take back per lot for a reversed reward, and the shortfall.

    What is left of the reward's own lot goes first; points already spent are taken from the customer's
    other usable lots, oldest first. A balance never goes negative: what cannot be taken is the shortfall.
    """
    pool = list(lots)
    own = next((lot for lot in pool if lot.lot_key == lot_key), None)
    taken: dict[str, int] = {}
    need = points
    if own is not None and own.remaining > 0:
        taken[lot_key] = min(own.remaining, need)
        need -= taken[lot_key]
    others = [lot for lot in pool if lot.lot_key != lot_key]
    more, shortfall = _take(others, need, today)
    taken.update(more)
    return taken, shortfall


# --- clawback detection ---------------------------------------------------------------------------


def clawbacks(live: pd.DataFrame, contracts: pd.DataFrame, instalments: pd.DataFrame) -> pd.DataFrame:
    """Return rewards whose qualifying payment was reversed, with the reason.

    `live` has reward_key, trigger, contract_key and evidence (instalment keys of a streak). A renewal
    reward is reversed when its contract is no longer renewed; a streak reward when any instalment of
    its streak is unpaid again. Rows that vanished from the source are left alone (that is erasure or
    a data fix, not a reversal).
    """
    columns = ["reward_key", "reason"]
    if live.empty:
        return pd.DataFrame(columns=columns)
    found = []
    renewal = live.loc[live["trigger"] == Trigger.EARLY_RENEWAL.value]
    if not renewal.empty and not contracts.empty:
        undone = contracts.loc[contracts["renewed_at"].isna(), "contract_key"].astype(str)
        hit = renewal.loc[renewal["contract_key"].astype(str).isin(set(undone)), "reward_key"]
        found.append(pd.DataFrame({"reward_key": hit, "reason": ClawbackReason.RENEWAL_UNDONE.value}))
    streak = live.loc[live["trigger"] == Trigger.ON_TIME_STREAK.value]
    if not streak.empty and not instalments.empty:
        unpaid = set(instalments.loc[instalments["paid_date"].isna(), "instalment_key"].astype(str))
        pairs = streak[["reward_key", "evidence"]].explode("evidence")
        hit = pairs.loc[pairs["evidence"].astype(str).isin(unpaid), "reward_key"].drop_duplicates()
        found.append(pd.DataFrame({"reward_key": hit, "reason": ClawbackReason.PAYMENT_REVERSED.value}))
    if not found:
        return pd.DataFrame(columns=columns)
    return pd.concat(found, ignore_index=True).drop_duplicates("reward_key").reset_index(drop=True)


def summary(statuses: pd.Series) -> dict[str, int]:
    """Return counts per status as a plain, sorted dict."""
    return {str(k): int(v) for k, v in statuses.value_counts().sort_index().items()}
