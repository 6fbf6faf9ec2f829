"""Segment v1: renewal window, days past due, inactivity and a transparent renewal-risk scorecard."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from tasks.domain.features import ACTIVITY_MONTHS

SCORECARD_VERSION = "scorecard-v1"
OPEN = "active"
LATE_PAYMENT_DAYS = 365

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Band:
    """A labelled range `[low, high]` of whole numbers (None = open)."""

    __pydantic_config__ = {"extra": "forbid"}

    label: str
    low: int | None = None
    high: int | None = None


@dataclass(frozen=True)
class Points:
    """Points added when a factor's value lies in `[low, high]`."""

    __pydantic_config__ = {"extra": "forbid"}

    points: int
    low: float | None = None
    high: float | None = None
    label: str = ""


@dataclass(frozen=True)
class Scorecard:
    """Points per factor; the score is their sum, clipped to 0..100 (higher = likelier to churn)."""

    __pydantic_config__ = {"extra": "forbid"}

    tenure_years: tuple[Points, ...]
    late_payments_12m: tuple[Points, ...]
    transactions_per_month: tuple[Points, ...]
    no_auto_renew: int
    medium_from: int
    high_from: int

    def __post_init__(self) -> None:
        if not 0 < self.medium_from < self.high_from <= 100:
            raise ValueError("need 0 < medium_from < high_from <= 100")


@dataclass(frozen=True)
class RiskBands:
    """Where a learned model's risk score (its calibrated probability in percent) turns medium and high."""

    __pydantic_config__ = {"extra": "forbid"}

    medium_from: int
    high_from: int

    def __post_init__(self) -> None:
        if not 0 < self.medium_from < self.high_from <= 100:
            raise ValueError("need 0 < medium_from < high_from <= 100")


@dataclass(frozen=True)
class SegmentationConfig:
    """Thresholds for windows, buckets and inactivity."""

    __pydantic_config__ = {"extra": "forbid"}

    renewal_windows: tuple[Band, ...]
    dpd_buckets: tuple[Band, ...]
    renewal_due_days: int
    inactive_below_transactions: float
    activity_months: int
    scorecard: Scorecard
    model_bands: RiskBands = RiskBands(medium_from=30, high_from=60)

    def __post_init__(self) -> None:
        _check_bands("renewal_windows", self.renewal_windows)
        _check_bands("dpd_buckets", self.dpd_buckets)
        if self.activity_months < 1:
            raise ValueError("activity_months must be at least 1")


def _check_bands(name: str, bands: tuple[Band, ...]) -> None:
    if not bands:
        raise ValueError(f"{name} needs at least one band")
    if bands[0].low is not None or bands[-1].high is not None:
        raise ValueError(f"{name} must start and end open (first low and last high empty)")
    for prev, nxt in zip(bands, bands[1:], strict=False):
        if prev.high is None or nxt.low is None or nxt.low != prev.high + 1:
            raise ValueError(f"{name}: {prev.label!r} and {nxt.label!r} must be contiguous")


SEGMENTS = (
    "arrears_severe",
    "arrears",
    "renewal_due_high_risk",
    "renewal_due",
    "lapsed",
    "inactive",
    "active",
)


def label_bands(values: pd.Series, bands: tuple[Band, ...]) -> pd.Series:
    """Label each whole-number value with the band it falls in."""
    conditions = []
    for band in bands:
        cond = pd.Series(True, index=values.index)
        if band.low is not None:
            cond &= values >= band.low
        if band.high is not None:
            cond &= values <= band.high
        conditions.append(cond.to_numpy())
    return pd.Series(np.select(conditions, [b.label for b in bands], default=""), index=values.index)


def _points(values: pd.Series, table: tuple[Points, ...]) -> pd.Series:
    conditions, choices = [], []
    for row in table:
        cond = pd.Series(True, index=values.index)
        if row.low is not None:
            cond &= values >= row.low
        if row.high is not None:
            cond &= values < row.high
        conditions.append(cond.to_numpy())
        choices.append(row.points)
    return pd.Series(np.select(conditions, choices, default=0), index=values.index, dtype="int64")


def _days(later: pd.Series, earlier: pd.Series | pd.Timestamp) -> pd.Series:
    return (later - earlier).dt.days


def activity_months(as_of: date, config: SegmentationConfig, scoring: bool = True) -> tuple[date, date]:
    """Return the first month of activity segmenting (and scoring) looks at, and the month after the last."""
    # The scorecard looks back `activity_months`; the models compare the last 3 months with the 3 before.
    after = as_of.year * 12 + as_of.month - 1
    first = after - (max(config.activity_months, 2 * ACTIVITY_MONTHS) if scoring else config.activity_months)
    return date(first // 12, first % 12 + 1, 1), date(after // 12, after % 12 + 1, 1)


def _rows_in(keys: pd.Series, known: pd.Series) -> Array:
    """Return each key's row in `known` (unique keys), -1 where it is not there or empty."""
    # One factorize over both: far cheaper than mapping or reindexing by text at millions of rows.
    codes, _ = pd.factorize(pd.concat([known, keys], ignore_index=True))
    slot = np.full(int(codes.max(initial=-1)) + 2, -1, dtype=np.int64)
    mine = codes[: len(known)]
    slot[mine[mine >= 0]] = np.flatnonzero(mine >= 0)
    return np.asarray(slot[codes[len(known) :]])


def _stamps(values: pd.Series) -> Array:
    return np.asarray(pd.to_datetime(values).to_numpy(dtype="datetime64[ns]"))


def scorecard_instalments(as_of: date) -> tuple[date, date]:
    """Return (after, before): the scorecard looks at instalments due in between, or unpaid and due before."""
    return as_of - timedelta(days=LATE_PAYMENT_DAYS), as_of


def customer_features(
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    instalment_customer: Array,
    activity: pd.DataFrame,
    as_of: date,
    config: SegmentationConfig,
) -> pd.DataFrame:
    """Return tenure, late payments in the last 12 months and mean monthly transactions per customer.

    `instalment_customer` is the row in `customers` of each instalment's customer (-1 for none).
    """
    today = pd.Timestamp(as_of)
    out = pd.DataFrame(index=pd.Index(customers["customer_key"], name="customer_key"))
    since = pd.to_datetime(customers.set_index("customer_key")["customer_since"])
    out["tenure_years"] = (
        (_days(pd.Series(today, index=since.index), since) / 365.25).fillna(0.0).clip(lower=0)
    )

    now = today.to_datetime64()
    due = _stamps(instalments["due_date"])
    paid = _stamps(instalments["paid_date"])
    in_year = (due > (today - pd.Timedelta(days=LATE_PAYMENT_DAYS)).to_datetime64()) & (due < now)
    late = in_year & ((paid > due) | (np.isnat(paid) & (due < now))) & (instalment_customer >= 0)
    counts = np.bincount(instalment_customer[late], minlength=len(out))
    out["late_payments_12m"] = counts.astype("int64")

    first_month = (today.to_period("M") - config.activity_months).to_timestamp().to_datetime64()
    this_month = today.to_period("M").to_timestamp().to_datetime64()
    months = _stamps(activity["month"])
    who = _rows_in(activity["customer_key"], customers["customer_key"])
    counted = (months >= first_month) & (months < this_month) & (who >= 0)
    transactions = pd.Series(activity["transactions"]).to_numpy(dtype=np.float64, na_value=0.0)
    totals = np.bincount(who[counted], weights=transactions[counted], minlength=len(out))
    out["transactions_per_month"] = (pd.Series(totals, index=out.index) / config.activity_months).round(2)
    return out


def contract_dpd(instalments: pd.DataFrame, instalment_contract: Array, contracts: int, as_of: date) -> Array:
    """Return per contract the days past due of its oldest unpaid instalment (0 when current).

    `instalment_contract` is the row of each instalment's contract (-1 for none) among `contracts` rows.
    """
    now = pd.Timestamp(as_of).to_datetime64()
    due = _stamps(instalments["due_date"])
    unpaid = np.isnat(_stamps(instalments["paid_date"])) & (due < now) & (instalment_contract >= 0)
    overdue: Array = now - due[unpaid]
    dpd = np.zeros(contracts, dtype=np.int64)
    np.maximum.at(dpd, instalment_contract[unpaid], overdue // np.timedelta64(1, "D"))
    return dpd


def score_renewal_risk(
    features: pd.DataFrame, auto_renew: pd.Series, card: Scorecard
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Return the 0..100 risk score, its band and the factors that made it, per row."""
    tenure = _points(features["tenure_years"], card.tenure_years)
    late = _points(features["late_payments_12m"].astype("float64"), card.late_payments_12m)
    activity = _points(features["transactions_per_month"], card.transactions_per_month)
    renew = pd.Series(np.where(auto_renew.to_numpy(dtype=bool), 0, card.no_auto_renew), index=features.index)
    score = (tenure + late + activity + renew).clip(0, 100).astype("int64")
    band = band_of(score, card.medium_from, card.high_from)
    parts = pd.DataFrame(
        {"tenure": tenure, "late_payments": late, "low_activity": activity, "no_auto_renew": renew}
    )
    factors = _top_factors(parts)
    return score, band, factors


@dataclass(frozen=True, eq=False)
class ModelRisk:
    """A learned model's scores: its version and, per open contract, the probability and reasons."""

    version: str
    contract_key: pd.Series
    probability: pd.Series
    reasons: pd.Series


def band_of(score: pd.Series, medium_from: int, high_from: int) -> pd.Series:
    """Return "low", "medium" or "high" per 0..100 score."""
    return pd.Series(
        np.select([score >= high_from, score >= medium_from], ["high", "medium"], default="low"),
        index=score.index,
    )


def _apply_model(out: pd.DataFrame, model: ModelRisk, bands: RiskBands) -> None:
    """Replace the scorecard's score, band and version with the model's where it scored the contract."""
    # The scorecard's points stay in risk_factors: cheap to keep, and they let the two be compared.
    by_key = pd.DataFrame(
        {"probability": model.probability.to_numpy(), "reasons": model.reasons.to_numpy()},
        index=pd.Index(model.contract_key.to_numpy(), name="contract_key"),
    )
    by_key = by_key[~by_key.index.duplicated()]
    joined = by_key.reindex(out["contract_key"].to_numpy())
    scored = joined["probability"].notna().to_numpy()
    score = pd.Series(
        np.rint(np.clip(joined["probability"].to_numpy(dtype=np.float64) * 100, 0, 100)), index=out.index
    )
    out.loc[scored, "risk_score"] = score[scored].astype("int64")
    out.loc[scored, "risk_band"] = band_of(score, bands.medium_from, bands.high_from)[scored]
    out.loc[scored, "risk_reasons"] = joined["reasons"].fillna("").to_numpy()[scored]
    out.loc[scored, "model_version"] = model.version


def _top_factors(parts: pd.DataFrame) -> pd.Series:
    # Points come from a few bands, so rows share a handful of combinations: word each one once.
    combo = np.zeros(len(parts), dtype=np.int64)
    for column in parts.columns:
        codes, uniques = pd.factorize(parts[column])
        combo = combo * len(uniques) + codes
    which, combos = pd.factorize(combo)
    first = np.zeros(len(combos), dtype=np.int64)
    first[which[::-1]] = np.arange(len(which) - 1, -1, -1)
    texts = _factor_texts(parts.iloc[first].reset_index(drop=True))
    return pd.Series(texts.to_numpy()[which], index=parts.index, dtype=texts.dtype)


def _factor_texts(parts: pd.DataFrame) -> pd.Series:
    names = np.array(parts.columns, dtype=object)
    values = parts.to_numpy()
    order = np.argsort(-values, axis=1, kind="stable")[:, :3]
    rows = np.arange(len(parts))
    pieces = []
    for rank in range(order.shape[1]):
        value = values[rows, order[:, rank]]
        text = (
            pd.Series(names[order[:, rank]], index=parts.index)
            + "+"
            + pd.Series(value, index=parts.index).astype(str)
        )
        pieces.append(text.where(value > 0, ""))
    joined = pieces[0]
    for piece in pieces[1:]:
        joined = joined.str.cat(piece, sep=",")
    return joined.str.replace(r",+$", "", regex=True).str.replace(r"^,+", "", regex=True)


def segment_contracts(
    contracts: pd.DataFrame,
    customers: pd.DataFrame,
    instalments: pd.DataFrame,
    activity: pd.DataFrame,
    as_of: date,
    config: SegmentationConfig,
    model: ModelRisk | None = None,
) -> pd.DataFrame:
    """Return one segment row per contract: features, score and band (the model's, if given), segment."""
    today = pd.Timestamp(as_of)
    inst_contract = _rows_in(instalments["contract_key"], contracts["contract_key"])
    contract_customer = np.append(_rows_in(contracts["customer_key"], customers["customer_key"]), -1)
    feats = customer_features(
        customers, instalments, contract_customer[inst_contract], activity, as_of, config
    )

    out = contracts[
        ["contract_key", "customer_key", "product", "status", "term_end", "auto_renew", "price", "currency"]
    ].copy()
    out = out.merge(customers[["customer_key", "market"]], on="customer_key", how="left")
    out["days_to_term_end"] = _days(pd.to_datetime(out["term_end"]), today).astype("int64")
    out["renewal_window"] = label_bands(out["days_to_term_end"], config.renewal_windows)
    out["dpd"] = contract_dpd(instalments, inst_contract, len(contracts), as_of)
    out["dpd_bucket"] = label_bands(out["dpd"], config.dpd_buckets)
    joined = feats.reset_index(drop=True).reindex(contract_customer[:-1])
    out["tenure_years"] = joined["tenure_years"].round(2).to_numpy()
    out["late_payments_12m"] = joined["late_payments_12m"].to_numpy()
    out["transactions_per_month"] = joined["transactions_per_month"].to_numpy()
    out["inactive"] = out["transactions_per_month"] < config.inactive_below_transactions
    score, band, factors = score_renewal_risk(
        out[["tenure_years", "late_payments_12m", "transactions_per_month"]],
        out["auto_renew"].astype(bool),
        config.scorecard,
    )
    out["risk_score"] = score.to_numpy()
    out["risk_band"] = band.to_numpy()
    out["risk_factors"] = factors.to_numpy()
    out["model_version"] = SCORECARD_VERSION
    out["risk_reasons"] = pd.Series(None, index=out.index, dtype="object")
    if model is not None:
        _apply_model(out, model, config.model_bands)

    days = out["days_to_term_end"]
    in_window = (days >= 0) & (days <= config.renewal_due_days)
    conditions = [
        out["dpd"] >= 60,
        out["dpd"] >= 1,
        in_window & (out["risk_band"] == "high"),
        in_window,
        (days < 0) & (out["status"] == "active"),
        out["inactive"],
    ]
    out["segment"] = np.select([c.to_numpy() for c in conditions], list(SEGMENTS[:-1]), default="active")
    return out.drop(columns=["price", "currency"])
