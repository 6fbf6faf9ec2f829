"""Why a score is high, in plain words: the inputs that pushed each row's risk up the most."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.domain.features import FEATURES
from tasks.domain.segmentation import Scorecard
from tasks.models.training import TrainedModel, model_inputs

Array = np.ndarray[Any, Any]

CHUNK_ROWS = 200_000
MIN_EFFECT = 0.01

# One sentence per input; {n} is the value as a whole number and {s} makes the noun plural.
PLAIN_WORDS: dict[str, str] = {
    "tenure_years": "customer for only {n} year{s}",
    "late_payments_12m": "paid {n} instalment{s} late in the last 12 months",
    "severe_late_12m": "{n} instalment{s} more than 30 days overdue in the last 12 months",
    "instalments_12m": "only {n} instalment{s} due in the last 12 months, so little payment history",
    "days_past_due": "an instalment is {n} day{s} overdue",
    "overdue_instalments": "{n} instalment{s} overdue right now",
    "worst_days_late": "a payment was once {n} day{s} late",
    "transactions_per_month": "only about {n} transaction{s} a month",
    "no_activity_history": "no recent account activity on record",
    "activity_change": "account activity fell by {n}% over the last 3 months",
    "auto_renew": "no automatic renewal",
    "earlier_renewals": "has renewed only {n} contract{s} with us before",
    "earlier_lapses": "let {n} earlier contract{s} end without renewing",
    "log_price_eur": "the price of the contract",
    "log_amount_eur": "the size of the instalment",
    "amount_ratio": "this instalment is {n} times the usual amount",
    "product": "this kind of contract ({value})",
    "market": "served in {value}",
}

# Inputs that say the same thing in different ways: a row gets at most one sentence from each group.
GROUPS: dict[str, str] = {
    "late_payments_12m": "payments",
    "severe_late_12m": "payments",
    "instalments_12m": "payments",
    "days_past_due": "payments",
    "overdue_instalments": "payments",
    "worst_days_late": "payments",
    "transactions_per_month": "activity",
    "no_activity_history": "activity",
    "activity_change": "activity",
    "earlier_renewals": "history",
    "earlier_lapses": "history",
    "log_price_eur": "price",
    "log_amount_eur": "price",
    "amount_ratio": "price",
}

_TITLES = {f.name: f.title for features in FEATURES.values() for f in features}
_PRODUCT_WORDS = {
    "subscription": "subscription",
    "loan": "loan",
    "insurance_policy": "insurance policy",
    "savings_plan": "savings plan",
}

_SCORECARD_WORDS = {
    "tenure": "a fairly short time as a customer",
    "late_payments": "late payments in the last 12 months",
    "low_activity": "low account activity",
    "no_auto_renew": "no automatic renewal",
}
_SCORECARD_TABLES = {
    "tenure": "tenure_years",
    "late_payments": "late_payments_12m",
    "low_activity": "transactions_per_month",
}


@dataclass(frozen=True)
class Factor:
    """One reason a row's risk is higher: the input, how much it added and the sentence that says so."""

    feature: str
    effect: float
    text: str


def _fill(template: str, n: int) -> str:
    return template.format(n=n, s="" if n == 1 else "s", value=n)


def _shown(feature: str, values: pd.Series) -> pd.Series:
    """Return each value as its sentence shows it (rounded, bucketed); empty stays empty."""
    if feature in ("product", "market"):
        return values.astype("object")
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        if feature == "tenure_years":
            shown = np.where(v < 1, 0.0, np.floor(v))
        elif feature == "transactions_per_month":
            shown = np.where(v < 2, 0.0, np.round(v))
        elif feature == "activity_change":
            shown = np.round((np.exp2(v) - 1) * 100)
        elif feature == "amount_ratio":
            shown = np.where(v >= 1.2, np.round(v, 1), 0.0)
        else:
            shown = np.round(v)
    return pd.Series(np.where(np.isnan(v), np.nan, shown), index=values.index)


def _sentence(feature: str, shown: Any) -> str:
    """Return the sentence for a value as `_shown` gives it."""
    missing = shown is None or (isinstance(shown, float) and math.isnan(shown))
    if feature == "product":
        return PLAIN_WORDS["product"].format(value=_PRODUCT_WORDS.get(str(shown), "other"))
    if feature == "market":
        return (
            "the country the customer is served in" if missing else PLAIN_WORDS["market"].format(value=shown)
        )
    if missing:
        return {
            "transactions_per_month": "no recent account activity on record",
            "activity_change": "too little account history to see a trend",
        }.get(feature, f"no information on {_TITLES.get(feature, 'one of the inputs')}")
    number = float(shown)
    if feature == "tenure_years" and number < 1:
        return "customer for less than a year"
    if feature == "transactions_per_month" and number < 2:
        return "fewer than 2 transactions a month"
    if feature == "activity_change":
        if number > 0:
            return f"account activity rose by {number:.0f}% over the last 3 months"
        if number == 0:
            return "account activity did not grow over the last 3 months"
        return _fill(PLAIN_WORDS[feature], int(-number))
    if feature == "auto_renew" and number >= 0.5:
        return "automatic renewal is on"
    if feature == "no_activity_history" and number < 0.5:
        return "account activity on record"
    if feature == "instalments_12m" and number < 0.5:
        return "no payment history in the last 12 months"
    if feature == "earlier_renewals" and number < 0.5:
        return "has not renewed a contract with us before"
    if feature == "amount_ratio":
        if number >= 1.2:
            return f"this instalment is {number:.1f} times the usual amount"
        return "the size of this instalment compared with the usual one"
    return _fill(PLAIN_WORDS[feature], int(number))


def phrase(feature: str, value: Any) -> str:
    """Return the plain-language sentence for one input's value."""
    return _sentence(feature, _shown(feature, pd.Series([value], dtype="object")).iloc[0])


def _phrases(feature: str, values: pd.Series) -> pd.Series:
    """Return `phrase` for many values at once, building each distinct sentence once."""
    shown = _shown(feature, values)
    table = {key: _sentence(feature, key) for key in shown.dropna().drop_duplicates().tolist()}
    empty = _sentence(feature, None)
    return shown.map(lambda key: empty if key is None or key != key else table[key])


def factor_effects(model: TrainedModel, frame: pd.DataFrame, only_above: float = 0.0) -> pd.DataFrame:
    """Return, per row and input, how much lower the risk would be with that input at its best case."""
    # A row whose risk is below `only_above` cannot lose that much, so its passes are skipped (zeros).
    inputs = model_inputs(frame, model.kind)
    prepare = model.pipeline.named_steps["prepare"]
    classify = model.pipeline.named_steps["classify"]
    best = prepare.transform(pd.DataFrame([model.baseline])[list(inputs.columns)])[0]
    effects = np.zeros((len(frame), len(model.layout)))
    for start in range(0, len(frame), CHUNK_ROWS):
        z = np.asarray(prepare.transform(inputs.iloc[start : start + CHUNK_ROWS]), dtype=np.float64)
        risk = classify.predict_proba(z)[:, 1]
        worth = np.flatnonzero(risk >= only_above)
        z, risk = z[worth], risk[worth]
        for i, (_, low, high) in enumerate(model.layout):
            kept = z[:, low:high].copy()
            z[:, low:high] = best[low:high]
            effects[start + worth, i] = risk - classify.predict_proba(z)[:, 1]
            z[:, low:high] = kept
    return pd.DataFrame(effects, index=frame.index, columns=[name for name, _, _ in model.layout])


def _ranked(effects: pd.DataFrame, n: int, min_effect: float) -> tuple[Array, Array]:
    """Return per row the columns of the top `n` effects, one per group, and whether each is big enough."""
    names = list(effects.columns)
    groups = [GROUPS.get(name, name) for name in names]
    values = effects.to_numpy()
    order = np.argsort(-values, axis=1, kind="stable")
    rows = np.arange(len(values))
    picked = np.full((len(values), n), -1)
    taken = np.zeros(len(values), dtype=np.int64)
    seen: list[Array] = []
    for rank in range(order.shape[1]):
        column = order[:, rank]
        group = np.array(groups, dtype=object)[column]
        duplicate = np.zeros(len(values), dtype=bool)
        for earlier in seen:
            duplicate |= earlier == group
        use = ~duplicate & (taken < n) & (values[rows, column] >= min_effect)
        picked[rows[use], taken[use]] = column[use]
        taken += use
        marks = group.copy()
        marks[~use] = None
        seen.append(marks)
        if (taken >= n).all():
            break
    return picked, values


def top_factor_lists(
    model: TrainedModel, frame: pd.DataFrame, n: int = 3, min_effect: float = MIN_EFFECT
) -> list[list[Factor]]:
    """Return, per row, up to `n` factors that pushed its risk up the most (at least `min_effect` each)."""
    effects = factor_effects(model, frame, only_above=min_effect)
    picked, values = _ranked(effects, n, min_effect)
    names = list(effects.columns)
    out: list[list[Factor]] = []
    for row in range(len(frame)):
        factors = []
        for column in picked[row]:
            if column < 0:
                continue
            feature = names[column]
            text = phrase(feature, frame[feature].iloc[row])
            factors.append(Factor(feature, round(float(values[row, column]), 4), text))
        out.append(factors)
    return out


def top_factors(
    model: TrainedModel, frame: pd.DataFrame, n: int = 3, min_effect: float = MIN_EFFECT
) -> pd.Series:
    """Return, per row, the plain-language reasons its risk is high, most important first, joined by "; "."""
    effects = factor_effects(model, frame, only_above=min_effect)
    picked, _ = _ranked(effects, n, min_effect)
    names = list(effects.columns)
    texts = [pd.Series("", index=frame.index, dtype="object") for _ in range(n)]
    for rank in range(n):
        for column, feature in enumerate(names):
            rows = picked[:, rank] == column
            if rows.any():
                texts[rank][rows] = _phrases(feature, frame.loc[rows, feature]).to_numpy()
    joined = texts[0]
    for more in texts[1:]:
        joined = joined.str.cat(more, sep="; ")
    return joined.str.replace(r"(; )+$", "", regex=True).rename("risk_reasons")


def scorecard_factors_in_words(risk_factors: str, card: Scorecard | None = None) -> str:
    """Return the scorecard's compact factors ("tenure+25,low_activity+25") in plain words."""
    # With the scorecard that made them, each factor gets the label of the band its points came from.
    words = []
    for part in filter(None, (p.strip() for p in risk_factors.split(","))):
        name, _, points = part.partition("+")
        text = _SCORECARD_WORDS.get(name)
        if text is None:
            continue
        if card is not None and name in _SCORECARD_TABLES and points.isdigit():
            table = getattr(card, _SCORECARD_TABLES[name])
            text = next((row.label for row in table if row.points == int(points) and row.label), text)
        words.append(text)
    return "; ".join(words)
