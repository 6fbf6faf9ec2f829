"""Point-in-time features for the risk models: each row sees only data dated before its decision date."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
import pandas as pd

Array = np.ndarray[Any, Any]
ModelKind = Literal["renewal", "repayment"]

RENEWAL_LEAD_DAYS = 30
REPAYMENT_LEAD_DAYS = 3
DPD_LABEL_DAYS = 30
WINDOW_DAYS = 365
ACTIVITY_MONTHS = 3
DAYS_CAP = 180

# Rough, fixed units per euro: only to put prices of different markets on one scale, never for money.
ROUGH_UNITS_PER_EUR: dict[str, float] = {
    "EUR": 1.0,
    "GBP": 0.86,
    "USD": 1.08,
    "CHF": 0.95,
    "SEK": 11.5,
    "NOK": 11.7,
    "DKK": 7.46,
    "PLN": 4.3,
    "CZK": 25.0,
    "HUF": 395.0,
    "RON": 5.0,
    "SGD": 1.45,
    "IDR": 17_000.0,
    "VND": 27_000.0,
    "MYR": 5.0,
    "THB": 38.0,
    "PHP": 62.0,
    "AUD": 1.65,
    "CAD": 1.48,
    "JPY": 165.0,
}


@dataclass(frozen=True)
class Feature:
    """One model input: its column, how it is encoded, a plain title and what it means exactly."""

    name: str
    kind: Literal["number", "flag", "category"]
    title: str
    meaning: str


_TENURE = Feature(
    "tenure_years", "number", "how long the customer has been with us", "Years since customer_since."
)
_LATE = Feature(
    "late_payments_12m",
    "number",
    "late payments in the last 12 months",
    "Instalments due in the 12 months before that were paid late or are unpaid.",
)
_SEVERE = Feature(
    "severe_late_12m",
    "number",
    "payments more than a month late in the last 12 months",
    "Instalments that went 30+ days overdue in the 12 months before.",
)
_INSTALMENTS = Feature(
    "instalments_12m",
    "number",
    "how much payment history there is",
    "Instalments due in the 12 months before.",
)
_DPD = Feature(
    "days_past_due",
    "number",
    "days the oldest unpaid instalment is overdue",
    "Days the oldest overdue instalment is past due (capped at 180).",
)
_OVERDUE = Feature(
    "overdue_instalments",
    "number",
    "instalments overdue right now",
    "Instalments overdue at the decision date.",
)
_WORST = Feature(
    "worst_days_late",
    "number",
    "the longest delay on any payment so far",
    "Most days any earlier instalment was paid late or overdue (capped at 180).",
)
_TX = Feature(
    "transactions_per_month",
    "number",
    "account activity in the last 3 months",
    "Transactions a month over the 3 full months before; empty if none are on record.",
)
_NO_TX = Feature(
    "no_activity_history",
    "flag",
    "no recent account activity on record",
    "1 when no activity is on record for those 3 months.",
)
_TX_CHANGE = Feature(
    "activity_change",
    "number",
    "change in account activity",
    "log2 of monthly transactions (+1) in those 3 months over the 3 months before; empty without both.",
)
_AUTO = Feature("auto_renew", "flag", "automatic renewal", "1 when the contract renews unless cancelled.")
_RENEWALS = Feature(
    "earlier_renewals",
    "number",
    "contracts renewed before",
    "The customer's other terms renewed before the decision date.",
)
_LAPSES = Feature(
    "earlier_lapses",
    "number",
    "contracts that ended without renewal before",
    "The customer's other terms that ended unrenewed before the decision date.",
)
_PRICE = Feature(
    "log_price_eur", "number", "the price of the contract", "log(1 + price in euros at rough fixed rates)."
)
_AMOUNT = Feature(
    "log_amount_eur",
    "number",
    "the size of the instalment",
    "log(1 + instalment amount in euros at rough fixed rates).",
)
_RATIO = Feature(
    "amount_ratio",
    "number",
    "the instalment compared with the usual one",
    "Amount over the customer's mean instalment in the 12 months before (1 if none; capped at 20).",
)
_PRODUCT = Feature("product", "category", "the kind of contract", "Product of the contract.")
_MARKET = Feature("market", "category", "the country the customer is served in", "Market of the customer.")

RENEWAL_FEATURES: tuple[Feature, ...] = (
    _TENURE,
    _LATE,
    _SEVERE,
    _INSTALMENTS,
    _DPD,
    _OVERDUE,
    _WORST,
    _TX,
    _NO_TX,
    _TX_CHANGE,
    _AUTO,
    _RENEWALS,
    _LAPSES,
    _PRICE,
    _PRODUCT,
    _MARKET,
)
REPAYMENT_FEATURES: tuple[Feature, ...] = (
    _TENURE,
    _LATE,
    _SEVERE,
    _INSTALMENTS,
    _DPD,
    _OVERDUE,
    _WORST,
    _TX,
    _NO_TX,
    _TX_CHANGE,
    _AMOUNT,
    _RATIO,
    _PRODUCT,
    _MARKET,
)
FEATURES: dict[ModelKind, tuple[Feature, ...]] = {
    "renewal": RENEWAL_FEATURES,
    "repayment": REPAYMENT_FEATURES,
}
LABELS: dict[ModelKind, str] = {"renewal": "not_renewed", "repayment": "dpd30"}
TIME_COLUMN = "decision_date"

# Customer codes and day numbers share one int64 sort key: code * _SPAN + day + _OFFSET.
_OFFSET = 1 << 17
_SPAN = 1 << 19
_NEVER = _SPAN - _OFFSET - 1


def _days(values: pd.Series) -> Array:
    """Return day numbers since 1970-01-01 as floats, NaN where empty."""
    stamps = pd.to_datetime(values.reset_index(drop=True), errors="coerce")
    days = stamps.to_numpy(dtype="datetime64[D]")
    out = days.astype(np.int64).astype(np.float64)
    out[np.isnat(days)] = np.nan
    return out


def _months(values: pd.Series) -> Array:
    """Return month numbers since 1970-01 as floats, NaN where empty."""
    stamps = pd.to_datetime(values.reset_index(drop=True), errors="coerce")
    months = stamps.to_numpy(dtype="datetime64[M]")
    out = months.astype(np.int64).astype(np.float64)
    out[np.isnat(months)] = np.nan
    return out


def _month_of_day(days: Array) -> Array:
    return np.asarray(days.astype(np.int64).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64))


def _take_keys(keys: pd.Series, where: Array) -> pd.Series:
    """Return keys[where] as a fresh series; positions one past the end give empty values."""
    padded = pd.concat([keys.reset_index(drop=True), pd.Series([None], dtype=keys.dtype)], ignore_index=True)
    return padded.take(where).reset_index(drop=True)


def _with_unknown(values: Array) -> Array:
    """Return `values` plus one empty slot for the code that unknown customers share."""
    return np.concatenate([values.astype(object), np.array([None], dtype=object)])


def _key(code: Array, day: Array) -> Array:
    clipped = np.clip(np.asarray(day, dtype=np.float64), -_OFFSET, _NEVER)
    return np.asarray(code, dtype=np.int64) * _SPAN + (clipped + _OFFSET).astype(np.int64)


def _position_in(keys: pd.Series, known: pd.Series) -> Array:
    """Return each key's row in `known` (unique keys); keys not there get len(known), one past the end."""
    # One factorize over both beats an index lookup on Arrow text by a wide margin at millions of rows.
    codes, _ = pd.factorize(pd.concat([known, keys], ignore_index=True))
    slot = np.full(int(codes.max(initial=-1)) + 2, len(known), dtype=np.int64)
    slot[codes[: len(known)]] = np.arange(len(known))
    return np.asarray(slot[codes[len(known) :]])


def _mapped(values: pd.Series, mapping: Mapping[str, float]) -> Array:
    """Return mapping[value] per row as floats, NaN where the value is not in `mapping`."""
    codes, uniques = pd.factorize(values)
    table = np.array([mapping.get(str(u), np.nan) for u in uniques] + [np.nan], dtype=np.float64)
    return np.asarray(table[codes])


class _Events:
    """Dated events per customer, sorted once, so counts and sums over a date range are two lookups each."""

    def __init__(self, code: Array, day: Array, value: Array | None = None) -> None:
        keep = ~np.isnan(day)
        key = _key(code[keep], day[keep])
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        weights = np.ones(len(order)) if value is None else np.nan_to_num(value[keep][order].astype(float))
        self.total = np.concatenate([[0.0], np.cumsum(weights)])

    def _bounds(self, code: Array, start: Array, end: Array) -> tuple[Array, Array]:
        return np.searchsorted(self.key, _key(code, start)), np.searchsorted(self.key, _key(code, end))

    def count(self, code: Array, start: Array, end: Array) -> Array:
        """Return how many events each customer has with start <= day < end."""
        low, high = self._bounds(code, start, end)
        return np.asarray(high - low, dtype=np.float64)

    def sum(self, code: Array, start: Array, end: Array) -> Array:
        """Return the sum of the events' values with start <= day < end."""
        low, high = self._bounds(code, start, end)
        return np.asarray(self.total[high] - self.total[low])


@dataclass(frozen=True)
class _History:
    """The customers, instalments, activity and past contracts, indexed for point-in-time lookups."""

    customers: pd.Series
    terms: pd.DataFrame
    since: Array
    market: Array
    late: _Events
    severe: _Events
    due: _Events
    amount: _Events
    months: _Events
    transactions: _Events
    renewed: _Events
    lapsed: _Events
    due_keys: Array
    due_days: Array
    open_from: Array
    worst_so_far: Array
    settled_keys: Array


def history_start(instalments: pd.DataFrame, activity: pd.DataFrame) -> date | None:
    """Return the first day both instalment and activity history are on record (None if either is empty)."""
    firsts = [_days(instalments["due_date"]), _days(activity["month"])]
    if any(np.isnan(days).all() for days in firsts):
        return None
    first = max(float(np.nanmin(days)) for days in firsts)
    return date.fromisoformat(str(np.datetime64(int(first), "D")))


def _covered(day: Array, since: date | None) -> Array:
    """Return which decision days have their whole activity look-back inside the recorded history."""
    if since is None:
        return np.zeros(len(day), dtype=bool)
    first_full_month = (since.year - 1970) * 12 + since.month - 1 + (since.day > 1)
    return np.asarray(_month_of_day(day) - ACTIVITY_MONTHS >= first_full_month)


def _history(
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    units_per_eur: Mapping[str, float],
) -> _History:
    people = customers.drop_duplicates("customer_key").reset_index(drop=True)
    known = people["customer_key"]
    terms = contracts.drop_duplicates("contract_key").reset_index(drop=True)
    term_code = np.append(_position_in(terms["customer_key"], known), len(known))

    inst_code = term_code[_position_in(instalments["contract_key"], terms["contract_key"])]
    due = _days(instalments["due_date"])
    paid = _days(instalments["paid_date"])
    late = np.isnan(paid) | (paid > due)
    severe = np.isnan(paid) | (paid - due >= DPD_LABEL_DAYS)
    # Renewal scoring never looks at amounts, so its callers may leave them out (None for all).
    if "amount" in instalments:
        amount = pd.to_numeric(instalments["amount"], errors="coerce").to_numpy(dtype=np.float64)
        amount_eur = amount / _mapped(instalments["currency"], units_per_eur)
    else:
        amount_eur = np.full(len(instalments), np.nan)

    # Oldest overdue instalment at any date: in due-date order, the running maximum of the "settled" day
    # (the later of due and paid; never if unpaid) first reaches the date at the oldest one still open.
    valid = ~np.isnan(due)
    code_v, due_v, paid_v = inst_code[valid], due[valid], paid[valid]
    settled = np.where(np.isnan(paid_v), _NEVER, np.maximum(due_v, paid_v))
    due_keys = _key(code_v, due_v)
    by_due = np.argsort(due_keys, kind="stable")
    due_keys = due_keys[by_due]
    open_from = np.maximum.accumulate(_key(code_v[by_due], settled[by_due]))
    # Worst delay among instalments settled before a date: a running maximum in settled-day order.
    by_settled = np.argsort(_key(code_v, settled), kind="stable")
    delay = np.where(np.isnan(paid_v), 0, np.clip(paid_v - due_v, 0, DAYS_CAP))[by_settled]
    worst_so_far = np.maximum.accumulate(code_v[by_settled] * _SPAN + delay.astype(np.int64))

    month = _months(activity["month"])
    act_code = _position_in(activity["customer_key"], known)
    tx = pd.to_numeric(activity["transactions"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    con_code = _position_in(contracts["customer_key"], known)
    status = contracts["status"].astype("object").to_numpy()
    term_end = _days(contracts["term_end"])
    renewed_at = (
        _days(contracts["renewed_at"]) if "renewed_at" in contracts else np.full(len(term_end), np.nan)
    )
    renewed_day = np.where(status == "renewed", np.where(np.isnan(renewed_at), term_end, renewed_at), np.nan)
    lapsed_day = np.where(status == "lapsed", term_end, np.nan)

    return _History(
        customers=known,
        terms=terms,
        since=_days(people["customer_since"]) if "customer_since" in people else np.full(len(known), np.nan),
        market=people["market"].astype("object").to_numpy(),
        late=_Events(inst_code, np.where(late, due, np.nan)),
        severe=_Events(inst_code, np.where(severe, due + DPD_LABEL_DAYS, np.nan)),
        due=_Events(inst_code, due),
        amount=_Events(inst_code, np.where(np.isnan(amount_eur), np.nan, due), amount_eur),
        months=_Events(act_code, month),
        transactions=_Events(act_code, month, tx),
        renewed=_Events(con_code, renewed_day),
        lapsed=_Events(con_code, lapsed_day),
        due_keys=due_keys,
        due_days=due_v[by_due],
        open_from=open_from,
        worst_so_far=worst_so_far,
        settled_keys=np.sort(_key(code_v, settled)),
    )


def _lookup(history: _History, code: Array, day: Array) -> dict[str, Array]:
    """Return the customer-level features at each (customer, decision day)."""
    year_ago = day - (WINDOW_DAYS - 1)
    out: dict[str, Array] = {}
    since = np.concatenate([history.since, [np.nan]])[code]
    out["tenure_years"] = np.clip((day - since) / 365.25, 0, None)
    out["late_payments_12m"] = history.late.count(code, year_ago, day)
    out["severe_late_12m"] = history.severe.count(code, year_ago, day)
    out["instalments_12m"] = history.due.count(code, year_ago, day)

    query = _key(code, day)
    due_before = np.searchsorted(history.due_keys, query)
    first_open = np.searchsorted(history.open_from, query)
    overdue = first_open < due_before
    oldest = history.due_days[np.minimum(first_open, max(len(history.due_days) - 1, 0))]
    dpd = np.where(overdue, np.clip(day - oldest, 0, DAYS_CAP), 0.0) if len(oldest) else np.zeros(len(day))
    out["days_past_due"] = dpd
    out["overdue_instalments"] = np.asarray(
        due_before - np.searchsorted(history.settled_keys, query), dtype=np.float64
    )
    last_settled = np.searchsorted(history.settled_keys, query) - 1
    if len(history.worst_so_far):
        worst = history.worst_so_far[np.maximum(last_settled, 0)]
        mine = (last_settled >= 0) & (worst // _SPAN == code)
        settled_worst = np.where(mine, worst - code * _SPAN, 0)
    else:
        settled_worst = np.zeros(len(day))
    out["worst_days_late"] = np.maximum(settled_worst, dpd).astype(np.float64)

    month = _month_of_day(day).astype(np.float64)
    recent = history.months.count(code, month - ACTIVITY_MONTHS, month)
    before = history.months.count(code, month - 2 * ACTIVITY_MONTHS, month - ACTIVITY_MONTHS)
    recent_tx = history.transactions.sum(code, month - ACTIVITY_MONTHS, month) / ACTIVITY_MONTHS
    before_tx = history.transactions.sum(code, month - 2 * ACTIVITY_MONTHS, month - ACTIVITY_MONTHS)
    before_tx = before_tx / ACTIVITY_MONTHS
    out["transactions_per_month"] = np.where(recent > 0, np.round(recent_tx, 2), np.nan)
    out["no_activity_history"] = (recent == 0).astype(np.float64)
    out["activity_change"] = np.where(
        (recent > 0) & (before > 0), np.log2((recent_tx + 1) / (before_tx + 1)), np.nan
    )
    return out


def _renewal_frame(
    rows: pd.DataFrame,
    history: _History,
    day: Array,
    units_per_eur: Mapping[str, float],
) -> pd.DataFrame:
    code = _position_in(rows["customer_key"], history.customers)
    feats = _lookup(history, code, day)
    feats["earlier_renewals"] = history.renewed.count(code, np.full(len(day), -_OFFSET), day)
    feats["earlier_lapses"] = history.lapsed.count(code, np.full(len(day), -_OFFSET), day)
    feats["auto_renew"] = rows["auto_renew"].astype("boolean").fillna(False).to_numpy(dtype=np.float64)
    price = pd.to_numeric(rows["price"], errors="coerce").to_numpy(dtype=np.float64)
    units = _mapped(rows["currency"], units_per_eur)
    feats["log_price_eur"] = np.log1p(np.clip(price / units, 0, None))
    feats["product"] = rows["product"].astype("object").to_numpy()
    feats["market"] = _with_unknown(history.market)[code]
    out = pd.DataFrame(
        {
            "contract_key": rows["contract_key"].reset_index(drop=True),
            "customer_key": rows["customer_key"].reset_index(drop=True),
            "term_end": pd.to_datetime(rows["term_end"]).reset_index(drop=True),
            TIME_COLUMN: day.astype("datetime64[D]").astype("datetime64[s]"),
        }
    )
    for feature in RENEWAL_FEATURES:
        out[feature.name] = feats[feature.name]
    return out


def renewal_training_frame(
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    as_of: date,
    units_per_eur: Mapping[str, float] = ROUGH_UNITS_PER_EUR,
    history_from: date | None = None,
) -> pd.DataFrame:
    """Return one row per renewed or lapsed term that ended before `as_of`: `not_renewed` and features."""
    # Only terms still open on their decision date count: one renewed before then needed no decision.
    # Terms decided before the recorded history (`history_from`, by default `history_start`) covers
    # their look-back are left out: they would teach the model that a clean record means little.
    today = float(np.datetime64(as_of, "D").astype(np.int64))
    term_end = _days(contracts["term_end"])
    status = contracts["status"].astype("object").to_numpy()
    since = history_from or history_start(instalments, activity)
    decision = np.nan_to_num(term_end - RENEWAL_LEAD_DAYS)
    renewed_at = _days(contracts["renewed_at"])
    # A term renewed before its decision date was no longer open then: nobody had to decide about it.
    still_open = ~((status == "renewed") & (renewed_at < decision))
    past = (term_end < today) & np.isin(status, ["renewed", "lapsed"]) & still_open
    past &= _covered(decision, since)
    rows = contracts.loc[past].reset_index(drop=True)
    history = _history(contracts, customers, instalments, activity, units_per_eur)
    frame = _renewal_frame(rows, history, term_end[past] - RENEWAL_LEAD_DAYS, units_per_eur)
    late_renewal = ~np.isnan(renewed_at[past]) & (renewed_at[past] > term_end[past])
    frame.insert(4, LABELS["renewal"], ((status[past] == "lapsed") | late_renewal).astype(np.int64))
    return frame.sort_values([TIME_COLUMN, "contract_key"], kind="stable").reset_index(drop=True)


def renewal_scoring_frame(
    open_contracts: pd.DataFrame,
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    as_of: date,
    units_per_eur: Mapping[str, float] = ROUGH_UNITS_PER_EUR,
) -> pd.DataFrame:
    """Return the renewal features of each open contract as of `as_of`; `contracts` is the full history."""
    rows = open_contracts.reset_index(drop=True)
    history = _history(contracts, customers, instalments, activity, units_per_eur)
    today = float(np.datetime64(as_of, "D").astype(np.int64))
    return _renewal_frame(rows, history, np.full(len(rows), today), units_per_eur)


def _repayment_frame(
    rows: pd.DataFrame,
    history: _History,
    day: Array,
    units_per_eur: Mapping[str, float],
) -> pd.DataFrame:
    terms = history.terms
    where = _position_in(rows["contract_key"], terms["contract_key"])
    code = np.append(_position_in(terms["customer_key"], history.customers), len(history.customers))[where]
    feats = _lookup(history, code, day)
    amount = pd.to_numeric(rows["amount"], errors="coerce").to_numpy(dtype=np.float64)
    amount_eur = amount / _mapped(rows["currency"], units_per_eur)
    year_ago = day - (WINDOW_DAYS - 1)
    seen = history.amount.count(code, year_ago, day)
    typical = history.amount.sum(code, year_ago, day) / np.maximum(seen, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((seen > 0) & (typical > 0), amount_eur / typical, 1.0)
    feats["amount_ratio"] = np.round(np.clip(ratio, 0, 20), 4)
    feats["log_amount_eur"] = np.log1p(np.clip(amount_eur, 0, None))
    feats["product"] = _with_unknown(terms["product"].astype("object").to_numpy())[where]
    feats["market"] = _with_unknown(history.market)[code]
    # Keys stay Arrow-backed text: as Python objects, ten million of them would cost gigabytes.
    out = pd.DataFrame(
        {
            "instalment_key": rows["instalment_key"].reset_index(drop=True),
            "contract_key": rows["contract_key"].reset_index(drop=True),
            "customer_key": _take_keys(terms["customer_key"], where),
            "due_date": pd.to_datetime(rows["due_date"]).reset_index(drop=True),
            TIME_COLUMN: day.astype("datetime64[D]").astype("datetime64[s]"),
        }
    )
    for feature in REPAYMENT_FEATURES:
        out[feature.name] = feats[feature.name]
    return out


def repayment_training_frame(
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    as_of: date,
    units_per_eur: Mapping[str, float] = ROUGH_UNITS_PER_EUR,
    history_from: date | None = None,
) -> pd.DataFrame:
    """Return one row per instalment due over 30 days before `as_of`: `dpd30` and features."""
    # As for renewals, instalments decided before the recorded history covers their look-back are left out.
    today = float(np.datetime64(as_of, "D").astype(np.int64))
    due = _days(instalments["due_date"])
    since = history_from or history_start(instalments, activity)
    settled = (due < today - DPD_LABEL_DAYS) & _covered(np.nan_to_num(due - REPAYMENT_LEAD_DAYS), since)
    rows = instalments.loc[settled].reset_index(drop=True)
    history = _history(contracts, customers, instalments, activity, units_per_eur)
    frame = _repayment_frame(rows, history, due[settled] - REPAYMENT_LEAD_DAYS, units_per_eur)
    paid = _days(rows["paid_date"])
    label = np.isnan(paid) | (paid - due[settled] >= DPD_LABEL_DAYS)
    frame.insert(5, LABELS["repayment"], label.astype(np.int64))
    return frame.sort_values([TIME_COLUMN, "instalment_key"], kind="stable").reset_index(drop=True)


def repayment_scoring_frame(
    upcoming: pd.DataFrame,
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    as_of: date,
    units_per_eur: Mapping[str, float] = ROUGH_UNITS_PER_EUR,
) -> pd.DataFrame:
    """Return the repayment features of each upcoming instalment as of `as_of`."""
    rows = upcoming.reset_index(drop=True)
    history = _history(contracts, customers, instalments, activity, units_per_eur)
    today = float(np.datetime64(as_of, "D").astype(np.int64))
    return _repayment_frame(rows, history, np.full(len(rows), today), units_per_eur)


def feature_columns(kind: ModelKind) -> list[str]:
    """Return the model input columns of `kind` in a fixed order."""
    return [f.name for f in FEATURES[kind]]
