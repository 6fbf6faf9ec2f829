"""KPIs of the renewal, repayment and retention cycles: rates with intervals, uplift, economics, channels.

Every function is pure: it takes the input frames described by the schemas below (built from the store
by the kpi-report flow) and returns a tidy frame or a small dataclass. Definitions live in docs/kpis.md.
Days are UTC calendar days: every timestamp is converted to UTC and cut to its day before comparing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

# The 97.5% standard normal quantile, so the default 95% intervals need no statistics library.
Z_95 = 1.959963984540054
CONFIDENCE = 0.95
GRACE_DAYS = 14
CURE_DAYS = 30
REACTIVATION_WINDOW_DAYS = 30
TOP_ERRORS = 3
NA = "n/a"
TREATED = "treated"
CONTROL = "control"
GROUPS = (TREATED, CONTROL)
UNATTRIBUTED = "(unattributed)"

DateLike = date | datetime | pd.Timestamp | str


@dataclass(frozen=True)
class Column:
    """One input column: its name, the kind of values it holds and what it means."""

    name: str
    kind: str
    meaning: str


EXPOSURES: tuple[Column, ...] = (
    Column("contract_key", "str", "the contract"),
    Column("customer_key", "str", "its customer"),
    Column("market", "str", "market code, e.g. `DE`"),
    Column("playbook", "str", "the renewal playbook that acted on the term"),
    Column("segment", "str", "the contract's segment when the playbook first acted"),
    Column("group", "str", "`treated` or `control` (held out of every step of the term)"),
    Column("term_end", "date", "the end of the term the playbook reminded about"),
    Column("renewed_at", "date", "when that term was renewed; empty if not (yet) renewed"),
    Column("price_eur", "float", "price of the renewed term in EUR at the fixed reporting rate"),
    Column("first_contact_at", "date", "first message sent for the term; empty for control"),
    Column("messages_sent", "int", "messages sent for the term"),
    Column("messaging_cost_eur", "float", "provider cost of those messages in EUR"),
    Column(
        "reward_cost_eur",
        "float",
        "cost in EUR of the rewards granted for the term: granted, fulfilled, redeemed or expired; "
        "clawed-back ones excluded",
    ),
)
INSTALMENT_EXPOSURES: tuple[Column, ...] = (
    Column("instalment_key", "str", "the instalment"),
    Column("contract_key", "str", "its contract"),
    Column("customer_key", "str", "its customer"),
    Column("market", "str", "market code"),
    Column("playbook", "str", "the repayment playbook that acted on the instalment"),
    Column("group", "str", "`treated` or `control`"),
    Column("due_date", "date", "when the instalment was due"),
    Column("paid_date", "date", "when it was paid; empty if unpaid"),
    Column("amount_eur", "float", "amount due in EUR"),
    Column("max_step", "str", "latest ladder step sent, e.g. `D+7`; empty if none"),
)
REACTIVATION: tuple[Column, ...] = (
    Column("customer_key", "str", "the customer"),
    Column("market", "str", "market code"),
    Column("playbook", "str", "the retention playbook that acted on the customer"),
    Column("group", "str", "`treated` or `control`"),
    Column("became_inactive", "date", "when the customer became inactive"),
    Column("reactivated_at", "date", "first activity after that; empty if none"),
)
DELIVERIES: tuple[Column, ...] = (
    Column("message_key", "str", "the message"),
    Column("market", "str", "market code"),
    Column("channel", "str", "`email`, `sms`, `whatsapp`, ..."),
    Column("status", "str", "last known status (see channel health)"),
    Column("error_code", "str", "provider error code; empty if none"),
    Column("cost_eur", "float", "provider cost in EUR"),
)
REWARDS: tuple[Column, ...] = (
    Column("reward_key", "str", "the reward"),
    Column("customer_key", "str", "its customer"),
    Column("market", "str", "market code"),
    Column("rule", "str", "the reward rule that granted it"),
    Column("status", "str", "`granted`, `fulfilled`, `redeemed`, `expired` or `clawed_back`"),
    Column("cost_eur", "float", "cost in EUR"),
    Column("granted_at", "date", "when it was granted"),
)
FUNNEL: tuple[Column, ...] = (
    Column("contract_key", "str", "the contract"),
    Column("term_end", "date", "the term's end"),
    Column("step", "str", "playbook step id, e.g. `T-30`"),
    Column("offset_days", "int", "the step's offset from the term end in days"),
    Column("sent_at", "date", "when the message was sent; rows without it are ignored"),
    Column("renewed_at", "date", "when the term was renewed; empty if not"),
)
SCHEMAS: Mapping[str, tuple[Column, ...]] = {
    "exposures": EXPOSURES,
    "instalment_exposures": INSTALMENT_EXPOSURES,
    "reactivation": REACTIVATION,
    "deliveries": DELIVERIES,
    "rewards": REWARDS,
    "funnel": FUNNEL,
}

UPLIFT_COLUMNS = (
    "treated_n",
    "treated_successes",
    "treated_rate",
    "treated_low",
    "treated_high",
    "control_n",
    "control_successes",
    "control_rate",
    "control_low",
    "control_high",
    "uplift",
    "uplift_low",
    "uplift_high",
)
LADDER_COLUMNS = (
    "step",
    "offset_days",
    "treated_reached",
    "stopped_here",
    "treated_cured",
    "treated_rate",
    "treated_low",
    "treated_high",
    "control_unpaid",
    "control_cured",
    "control_rate",
    "control_low",
    "control_high",
)
CHANNEL_COLUMNS = (
    "messages",
    "attempted",
    "delivered",
    "pending",
    "failed",
    "in_doubt",
    "blocked",
    "other",
    "delivery_rate",
    "failure_rate",
    "pending_rate",
    "cost_eur",
    "cost_per_delivered_eur",
    "top_errors",
)
REWARD_COLUMNS = (
    *UPLIFT_COLUMNS,
    "mean_price_eur",
    "incremental_renewals",
    "incremental_revenue_eur",
    "incremental_revenue_low_eur",
    "incremental_revenue_high_eur",
    "reward_cost_eur",
    "messaging_cost_eur",
    "total_cost_eur",
    "roi",
    "roi_low",
    "roi_high",
    "cost_per_retained_eur",
    "cost_per_incremental_renewal_eur",
    "rewards",
    "redeemed",
    "redemption_rate",
    "clawed_back",
)
TIMING_COLUMNS = ("renewals", "median_days", "p90_days", "renewed_before_contact")
FUNNEL_COLUMNS = (
    "step",
    "offset_days",
    "reached",
    "renewed_before_next",
    "renewed_share",
    "cumulative_renewed",
    "cumulative_share",
    "entered",
)

_COUNTS = ("treated_n", "treated_successes", "control_n", "control_successes")
_DTYPES = {"str": "object", "date": "datetime64[ns]", "float": "float64", "int": "int64"}

DELIVERED = frozenset({"delivered", "read"})
FAILED = frozenset({"undelivered", "failed", "bounced", "dropped"})
PENDING = frozenset({"sent"})
IN_DOUBT = frozenset({"in_doubt"})
NOT_ATTEMPTED = frozenset({"blocked"})
REWARD_STATUSES = frozenset({"granted", "fulfilled", "redeemed", "expired"})
CLAWED_BACK = "clawed_back"


class MissingColumns(ValueError):
    """An input frame lacks columns its schema requires."""


@dataclass(frozen=True)
class Proportion:
    """A share `successes / n` with its Wilson score interval; NaN when `n` is 0."""

    successes: int
    n: int
    rate: float
    low: float
    high: float
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class Uplift:
    """Treated minus control rate with Newcombe's hybrid score interval; NaN when either group is empty."""

    treated: Proportion
    control: Proportion
    difference: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def conclusive(self) -> bool:
        """Return whether the interval excludes zero."""
        return bool(self.low > 0 or self.high < 0)


def z_value(confidence: float = CONFIDENCE) -> float:
    """Return the two-sided standard normal quantile for a confidence level."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if confidence == CONFIDENCE:
        return Z_95
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_bounds(
    successes: Any, n: Any, confidence: float = CONFIDENCE
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return (rate, low, high) arrays of Wilson score intervals; NaN where `n` is 0."""
    z = z_value(confidence)
    s = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    if np.any(m < 0) or np.any(s < 0) or np.any(s > m):
        raise ValueError("need 0 <= successes <= n")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(m > 0, s / m, np.nan)
        z2 = z * z
        denominator = 1 + z2 / m
        centre = (p + z2 / (2 * m)) / denominator
        half = z * np.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / denominator
    low = np.where(m > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(m > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return p, low, high


def newcombe_bounds(
    s_t: Any, n_t: Any, s_c: Any, n_c: Any, confidence: float = CONFIDENCE
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return (difference, low, high) arrays of Newcombe's method 10 for treated minus control."""
    p1, l1, u1 = wilson_bounds(s_t, n_t, confidence)
    p2, l2, u2 = wilson_bounds(s_c, n_c, confidence)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)


def proportion_ci(successes: int, n: int, confidence: float = CONFIDENCE) -> Proportion:
    """Return the share `successes / n` with its Wilson score interval."""
    p, low, high = wilson_bounds([successes], [n], confidence)
    return Proportion(int(successes), int(n), float(p[0]), float(low[0]), float(high[0]), confidence)


def uplift_ci(s_t: int, n_t: int, s_c: int, n_c: int, confidence: float = CONFIDENCE) -> Uplift:
    """Return treated minus control rate with Newcombe's hybrid score interval (method 10)."""
    d, low, high = newcombe_bounds([s_t], [n_t], [s_c], [n_c], confidence)
    return Uplift(
        proportion_ci(s_t, n_t, confidence),
        proportion_ci(s_c, n_c, confidence),
        float(d[0]),
        float(low[0]),
        float(high[0]),
        confidence,
    )


def interval_text(low: float, high: float, *, percent: bool = True, digits: int = 1) -> str:
    """Return an interval as text, e.g. `1.2 to 3.4`, or `n/a` when it is undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NA
    scale = 100 if percent else 1
    return f"{low * scale:.{digits}f} to {high * scale:.{digits}f}"


def schema_markdown() -> str:
    """Return the input schema tables of docs/kpis.md, generated from the schemas."""
    out: list[str] = []
    for name, schema in SCHEMAS.items():
        out.append(f"### `{name}`\n\n| column | kind | meaning |\n|---|---|---|\n")
        out.extend(f"| `{c.name}` | {c.kind} | {c.meaning} |\n" for c in schema)
        out.append("\n")
    return "".join(out).rstrip() + "\n"


def empty_frame(schema: Sequence[Column]) -> pd.DataFrame:
    """Return an empty frame with a schema's columns."""
    return pd.DataFrame({c.name: pd.Series(dtype=_DTYPES[c.kind]) for c in schema})


def day(value: DateLike) -> pd.Timestamp:
    """Return a date-like value as a naive UTC day."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.normalize()


def _days(values: pd.Series) -> pd.Series:
    # utc=True reads naive values as UTC and converts aware ones, so mixed inputs compare correctly.
    stamps = pd.to_datetime(values, utc=True)
    return stamps.dt.tz_localize(None).dt.normalize()


def _prepare(frame: pd.DataFrame, schema: Sequence[Column], name: str, by: Sequence[str]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    expected = [c.name for c in schema]
    missing = [c for c in expected if c not in frame.columns]
    unknown_keys = [k for k in by if k not in frame.columns]
    if missing or unknown_keys:
        parts = []
        if missing:
            parts.append(f"{name} is missing column(s) {', '.join(missing)}")
        if unknown_keys:
            parts.append(f"grouping key(s) {', '.join(unknown_keys)} are not columns of {name}")
        raise MissingColumns("; ".join(parts) + f" (expected: {', '.join(expected)})")
    out = frame.copy()
    for col in schema:
        if col.kind == "date":
            out[col.name] = _days(out[col.name])
        elif col.kind in ("float", "int"):
            out[col.name] = pd.to_numeric(out[col.name]).astype(float)
    if "group" in out.columns:
        bad = sorted({str(g) for g in out["group"].dropna().unique()} - set(GROUPS))
        if bad or out["group"].isna().any():
            raise ValueError(f"{name}.group must be 'treated' or 'control', found {bad or ['(empty)']}")
    return out


def _uplift_table(
    frame: pd.DataFrame, by: Sequence[str], success: pd.Series, confidence: float
) -> pd.DataFrame:
    return _with_rates(_uplift_counts(frame, by, success), by, confidence)


def _uplift_counts(frame: pd.DataFrame, by: Sequence[str], success: pd.Series) -> pd.DataFrame:
    keys = list(by)
    treated = frame["group"].eq(TREATED)
    control = frame["group"].eq(CONTROL)
    work = pd.DataFrame(
        {
            **{k: frame[k] for k in keys},
            "treated_n": treated,
            "treated_successes": treated & success,
            "control_n": control,
            "control_successes": control & success,
        },
        index=frame.index,
    )
    if keys:
        return work.groupby(keys, dropna=False, sort=True)[list(_COUNTS)].sum().reset_index()
    # Overall figures always have one row, even for an empty input.
    return pd.DataFrame([{c: int(work[c].sum()) for c in _COUNTS}])


def _with_rates(sums: pd.DataFrame, keys: Sequence[str], confidence: float) -> pd.DataFrame:
    out = sums.copy()
    for c in _COUNTS:
        out[c] = out[c].fillna(0).astype("int64")
    out["treated_rate"], out["treated_low"], out["treated_high"] = wilson_bounds(
        out["treated_successes"], out["treated_n"], confidence
    )
    out["control_rate"], out["control_low"], out["control_high"] = wilson_bounds(
        out["control_successes"], out["control_n"], confidence
    )
    out["uplift"], out["uplift_low"], out["uplift_high"] = newcombe_bounds(
        out["treated_successes"], out["treated_n"], out["control_successes"], out["control_n"], confidence
    )
    return out[[*keys, *UPLIFT_COLUMNS]].reset_index(drop=True)


def _mature_terms(frame: pd.DataFrame, as_of: DateLike, grace_days: int) -> pd.DataFrame:
    return frame[frame["term_end"] + pd.Timedelta(days=grace_days) <= day(as_of)]


def renewal_uplift(
    exposures: pd.DataFrame,
    as_of: DateLike,
    by: Sequence[str] = ("market", "playbook", "segment"),
    grace_days: int = GRACE_DAYS,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return the on-time renewal rate (renewed by the term end) of mature terms, treated vs control."""
    terms = _mature_terms(_prepare(exposures, EXPOSURES, "exposures", by), as_of, grace_days)
    on_time = terms["renewed_at"].notna() & (terms["renewed_at"] <= terms["term_end"])
    return _uplift_table(terms, by, on_time, confidence)


def churn_rate(
    exposures: pd.DataFrame,
    as_of: DateLike,
    by: Sequence[str] = ("market", "playbook", "segment"),
    grace_days: int = GRACE_DAYS,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return the share of mature terms not renewed within the grace period, treated vs control."""
    terms = _mature_terms(_prepare(exposures, EXPOSURES, "exposures", by), as_of, grace_days)
    deadline = terms["term_end"] + pd.Timedelta(days=grace_days)
    churned = terms["renewed_at"].isna() | (terms["renewed_at"] > deadline)
    return _uplift_table(terms, by, churned, confidence)


def repayment_uplift(
    instalment_exposures: pd.DataFrame,
    as_of: DateLike,
    by: Sequence[str] = ("market", "playbook"),
    within_days: int = 0,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return the share of mature instalments paid by due date + `within_days`, treated vs control."""
    rows = _prepare(instalment_exposures, INSTALMENT_EXPOSURES, "instalment_exposures", by)
    deadline = rows["due_date"] + pd.Timedelta(days=within_days)
    rows = rows[deadline <= day(as_of)]
    deadline = deadline[rows.index]
    paid = rows["paid_date"].notna() & (rows["paid_date"] <= deadline)
    return _uplift_table(rows, by, paid, confidence)


def reactivation_rate(
    reactivation: pd.DataFrame,
    as_of: DateLike,
    window_days: int = REACTIVATION_WINDOW_DAYS,
    by: Sequence[str] = ("market", "playbook"),
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return the share of inactive customers active again within `window_days`, treated vs control."""
    rows = _prepare(reactivation, REACTIVATION, "reactivation", by)
    end = rows["became_inactive"] + pd.Timedelta(days=window_days)
    rows = rows[end <= day(as_of)]
    end = end[rows.index]
    back = (
        rows["reactivated_at"].notna()
        & (rows["reactivated_at"] >= rows["became_inactive"])
        & (rows["reactivated_at"] <= end)
    )
    return _uplift_table(rows, by, back, confidence)


_OFFSET = re.compile(r"([+-]?)\s*(\d+)\s*$")


def step_offset(step: str) -> int:
    """Return the day offset a ladder step names, e.g. `D+7` -> 7, `D-3` -> -3, `D0` -> 0."""
    found = _OFFSET.search(step)
    if not found:
        raise ValueError(f"cannot read a day offset from ladder step {step!r} (expected e.g. 'D+7')")
    value = int(found.group(2))
    return -value if found.group(1) == "-" else value


def ladder_cure_rates(
    instalment_exposures: pd.DataFrame,
    as_of: DateLike,
    by: Sequence[str] = (),
    cure_days: int = CURE_DAYS,
    steps: Sequence[str] | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return per ladder step the treated instalments reaching it and the share paid within `cure_days`."""
    rows = _prepare(instalment_exposures, INSTALMENT_EXPOSURES, "instalment_exposures", by)
    rows["max_step"] = rows["max_step"].fillna("").astype(str).str.strip()
    sent = rows["max_step"] != ""
    ladder = sorted(
        set(steps) if steps is not None else set(rows.loc[sent & rows["group"].eq(TREATED), "max_step"]),
        key=lambda s: (step_offset(s), s),
    )
    offsets = {s: step_offset(s) for s in ladder}
    reached_offset = rows["max_step"].map(lambda s: step_offset(s) if s else np.nan).astype(float)
    treated = rows["group"].eq(TREATED)
    control = rows["group"].eq(CONTROL)
    today = day(as_of)
    keys = list(by)
    records: list[dict[str, Any]] = []
    for key, part in _keyed(rows, keys):
        for step in ladder:
            offset = offsets[step]
            step_day = part["due_date"] + pd.Timedelta(days=offset)
            cure_by = step_day + pd.Timedelta(days=cure_days)
            mature = cure_by <= today
            cured = part["paid_date"].notna() & (part["paid_date"] <= cure_by)
            reached = mature & treated[part.index] & (reached_offset[part.index] >= offset)
            unpaid = part["paid_date"].isna() | (part["paid_date"] > step_day)
            eligible = mature & control[part.index] & unpaid
            records.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "step": step,
                    "offset_days": offset,
                    "treated_reached": int(reached.sum()),
                    "stopped_here": int((reached & (part["max_step"] == step)).sum()),
                    "treated_cured": int((reached & cured).sum()),
                    "control_unpaid": int(eligible.sum()),
                    "control_cured": int((eligible & cured).sum()),
                }
            )
    out = pd.DataFrame.from_records(
        records,
        columns=[
            *keys,
            "step",
            "offset_days",
            "treated_reached",
            "stopped_here",
            "treated_cured",
            "control_unpaid",
            "control_cured",
        ],
    )
    out["treated_rate"], out["treated_low"], out["treated_high"] = wilson_bounds(
        out["treated_cured"].astype(float), out["treated_reached"].astype(float), confidence
    )
    out["control_rate"], out["control_low"], out["control_high"] = wilson_bounds(
        out["control_cured"].astype(float), out["control_unpaid"].astype(float), confidence
    )
    for c in (
        "offset_days",
        "treated_reached",
        "stopped_here",
        "treated_cured",
        "control_unpaid",
        "control_cured",
    ):
        out[c] = out[c].astype("int64")
    return out[[*keys, *LADDER_COLUMNS]]


def _keyed(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    if not keys:
        return [((), frame)]
    return [
        (key if isinstance(key, tuple) else (key,), part)
        for key, part in frame.groupby(list(keys), dropna=False, sort=True)
    ]


def channel_health(
    deliveries: pd.DataFrame, by: Sequence[str] = ("channel",), top_errors: int = TOP_ERRORS
) -> pd.DataFrame:
    """Return per channel the delivered and failed shares of messages handed to the provider."""
    rows = _prepare(deliveries, DELIVERIES, "deliveries", by)
    status = rows["status"].fillna("").astype(str).str.lower()
    keys = list(by)
    records: list[dict[str, Any]] = []
    for key, part in _keyed(rows, keys):
        st = status[part.index]
        delivered = int(st.isin(DELIVERED).sum())
        failed = int(st.isin(FAILED).sum())
        pending = int(st.isin(PENDING).sum())
        in_doubt = int(st.isin(IN_DOUBT).sum())
        blocked = int(st.isin(NOT_ATTEMPTED).sum())
        attempted = delivered + failed + pending
        cost = float(part["cost_eur"].sum())
        records.append(
            {
                **dict(zip(keys, key, strict=True)),
                "messages": len(part),
                "attempted": attempted,
                "delivered": delivered,
                "pending": pending,
                "failed": failed,
                "in_doubt": in_doubt,
                "blocked": blocked,
                "other": len(part) - attempted - in_doubt - blocked,
                "delivery_rate": delivered / attempted if attempted else math.nan,
                "failure_rate": failed / attempted if attempted else math.nan,
                "pending_rate": pending / attempted if attempted else math.nan,
                "cost_eur": cost,
                "cost_per_delivered_eur": cost / delivered if delivered else math.nan,
                "top_errors": _top_errors(part.loc[st.isin(FAILED | IN_DOUBT), "error_code"], top_errors),
            }
        )
    return pd.DataFrame.from_records(records, columns=[*keys, *CHANNEL_COLUMNS])


def _top_errors(codes: pd.Series, limit: int) -> str:
    cleaned = codes.dropna().astype(str).str.strip()
    cleaned = cleaned[cleaned != ""]
    if cleaned.empty:
        return ""
    counted = sorted(cleaned.value_counts().items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return ", ".join(f"{code} ({count})" for code, count in counted[:limit])


def reward_economics(
    exposures: pd.DataFrame,
    rewards: pd.DataFrame,
    as_of: DateLike,
    by: Sequence[str] = ("market", "playbook"),
    grace_days: int = GRACE_DAYS,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Return incentive ROI: incremental renewal revenue net of reward and messaging cost, per that cost."""
    keys = list(by)
    terms = _mature_terms(_prepare(exposures, EXPOSURES, "exposures", by), as_of, grace_days)
    on_time = terms["renewed_at"].notna() & (terms["renewed_at"] <= terms["term_end"])
    counts = _uplift_counts(terms, keys, on_time)
    status = _reward_status(terms, rewards, as_of, keys)
    # Outer join: rewards of customers without a mature term still show up, with no uplift to credit.
    both = counts.merge(status, on=keys, how="outer") if keys else pd.concat([counts, status], axis=1)
    out = _with_rates(both, keys, confidence)
    for c in ("rewards", "redeemed", "clawed_back"):
        out[c] = both[c].fillna(0).astype("int64").to_numpy()
    treated = terms[terms["group"].eq(TREATED)]
    money = _aggregate(
        treated, keys, {"price_eur": "mean", "reward_cost_eur": "sum", "messaging_cost_eur": "sum"}
    )
    out = out.merge(money, on=keys, how="left") if keys else pd.concat([out, money], axis=1)
    out = out.rename(columns={"price_eur": "mean_price_eur"})
    out["reward_cost_eur"] = out["reward_cost_eur"].fillna(0.0)
    out["messaging_cost_eur"] = out["messaging_cost_eur"].fillna(0.0)
    n_t = out["treated_n"].astype(float)
    price = out["mean_price_eur"].astype(float)
    out["incremental_renewals"] = out["uplift"] * n_t
    out["incremental_revenue_eur"] = out["incremental_renewals"] * price
    out["incremental_revenue_low_eur"] = out["uplift_low"] * n_t * price
    out["incremental_revenue_high_eur"] = out["uplift_high"] * n_t * price
    cost = out["reward_cost_eur"] + out["messaging_cost_eur"]
    out["total_cost_eur"] = cost
    paid = cost.where(cost > 0)
    out["roi"] = (out["incremental_revenue_eur"] - cost) / paid
    out["roi_low"] = (out["incremental_revenue_low_eur"] - cost) / paid
    out["roi_high"] = (out["incremental_revenue_high_eur"] - cost) / paid
    renewed = out["treated_successes"].astype(float)
    out["cost_per_retained_eur"] = cost / renewed.where(renewed > 0)
    incremental = out["incremental_renewals"]
    out["cost_per_incremental_renewal_eur"] = cost / incremental.where(incremental > 0)
    out["redemption_rate"] = out["redeemed"] / out["rewards"].where(out["rewards"] > 0)
    return out[[*keys, *REWARD_COLUMNS]].reset_index(drop=True)


def _aggregate(frame: pd.DataFrame, keys: list[str], how: Mapping[str, str]) -> pd.DataFrame:
    if keys:
        return frame.groupby(keys, dropna=False, sort=True).agg(dict(how)).reset_index()
    return pd.DataFrame([{col: frame[col].agg(fn) if len(frame) else math.nan for col, fn in how.items()}])


def _reward_status(
    terms: pd.DataFrame, rewards: pd.DataFrame, as_of: DateLike, keys: list[str]
) -> pd.DataFrame:
    # Rewards carry only customer and market; other keys come from the customer's treated term whose end
    # lies nearest the grant, so a reward counts once, for the renewal it most plausibly belongs to.
    rows = _prepare(rewards, REWARDS, "rewards", [k for k in keys if k in {c.name for c in REWARDS}])
    rows = rows[rows["granted_at"] <= day(as_of)].copy()
    rows["status"] = rows["status"].fillna("").astype(str).str.lower()
    borrowed = [k for k in keys if k not in rows.columns]
    if borrowed:
        rows = _attribute(rows, terms[terms["group"].eq(TREATED)], borrowed)
    for k in keys:
        rows[k] = rows[k].astype(object).where(rows[k].notna(), UNATTRIBUTED)
    counted = rows["status"].isin(REWARD_STATUSES)
    work = pd.DataFrame(
        {
            **{k: rows[k] for k in keys},
            "rewards": counted,
            "redeemed": rows["status"].eq("redeemed"),
            "clawed_back": rows["status"].eq(CLAWED_BACK),
        },
        index=rows.index,
    )
    if keys:
        return (
            work.groupby(keys, dropna=False, sort=True)[["rewards", "redeemed", "clawed_back"]]
            .sum()
            .reset_index()
        )
    return pd.DataFrame([{c: int(work[c].sum()) for c in ("rewards", "redeemed", "clawed_back")}])


def _attribute(rows: pd.DataFrame, treated_terms: pd.DataFrame, borrowed: list[str]) -> pd.DataFrame:
    if rows.empty or treated_terms.empty:
        return rows.assign(**dict.fromkeys(borrowed, np.nan))
    candidates = treated_terms[["customer_key", "term_end", *borrowed]].rename(
        columns={k: f"_term_{k}" for k in borrowed}
    )
    pairs = rows.rename_axis("_row").reset_index().merge(candidates, on="customer_key", how="left")
    pairs["_distance"] = (pairs["term_end"] - pairs["granted_at"]).abs()
    pairs = pairs.sort_values(["_distance", "term_end"], na_position="last", kind="stable")
    best = pairs.drop_duplicates("_row", keep="first").set_index("_row")
    out = rows.copy()
    for k in borrowed:
        out[k] = best[f"_term_{k}"].reindex(out.index)
    return out


def reminder_to_renewal_days(
    exposures: pd.DataFrame,
    by: Sequence[str] = ("market", "playbook"),
    as_of: DateLike | None = None,
    grace_days: int = GRACE_DAYS,
) -> pd.DataFrame:
    """Return the median and 90th percentile of days from first contact to renewal for treated terms."""
    rows = _prepare(exposures, EXPOSURES, "exposures", by)
    if as_of is not None:
        rows = _mature_terms(rows, as_of, grace_days)
    rows = rows[rows["group"].eq(TREATED) & rows["first_contact_at"].notna() & rows["renewed_at"].notna()]
    days = (rows["renewed_at"] - rows["first_contact_at"]).dt.days.astype(float)
    keys = list(by)
    records: list[dict[str, Any]] = []
    for key, part in _keyed(rows, keys):
        d = days[part.index]
        after = d[d >= 0]
        records.append(
            {
                **dict(zip(keys, key, strict=True)),
                "renewals": len(after),
                "median_days": float(after.median()) if len(after) else math.nan,
                "p90_days": float(after.quantile(0.9)) if len(after) else math.nan,
                "renewed_before_contact": int((d < 0).sum()),
            }
        )
    return pd.DataFrame.from_records(records, columns=[*keys, *TIMING_COLUMNS])


def renewal_funnel(
    funnel: pd.DataFrame,
    as_of: DateLike | None = None,
    grace_days: int = GRACE_DAYS,
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Return per step in offset order the terms reached and the share renewed before the next step."""
    rows = _prepare(funnel, FUNNEL, "funnel", by)
    rows = rows[rows["sent_at"].notna()]
    if as_of is not None:
        rows = _mature_terms(rows, as_of, grace_days)
    keys = list(by)
    records: list[dict[str, Any]] = []
    for key, part in _keyed(rows, keys):
        steps = sorted(
            {(int(offset), str(step)) for step, offset in zip(part["step"], part["offset_days"], strict=True)}
        )
        terms = part.drop_duplicates(["contract_key", "term_end"])[["contract_key", "term_end", "renewed_at"]]
        entered = len(terms)
        for i, (offset, step) in enumerate(steps):
            reached = part[part["step"] == step].drop_duplicates(["contract_key", "term_end"])
            # Renewed strictly before the next step's day, so that step was no longer needed; after the
            # last step, renewed within the grace period.
            cutoff = steps[i + 1][0] if i + 1 < len(steps) else max(grace_days, offset) + 1
            renewed = _renewed_before(reached, cutoff)
            cumulative = _renewed_before(terms, cutoff)
            records.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "step": step,
                    "offset_days": offset,
                    "reached": len(reached),
                    "renewed_before_next": renewed,
                    "renewed_share": renewed / len(reached) if len(reached) else math.nan,
                    "cumulative_renewed": cumulative,
                    "cumulative_share": cumulative / entered if entered else math.nan,
                    "entered": entered,
                }
            )
    return pd.DataFrame.from_records(records, columns=[*keys, *FUNNEL_COLUMNS])


def _renewed_before(terms: pd.DataFrame, offset_days: int) -> int:
    cutoff = terms["term_end"] + pd.Timedelta(days=offset_days)
    return int((terms["renewed_at"].notna() & (terms["renewed_at"] < cutoff)).sum())


def total_uplift(frame: pd.DataFrame, confidence: float = CONFIDENCE) -> Uplift:
    """Return the uplift of all rows of an uplift frame pooled (fair when the holdout share is uniform)."""
    n_t, s_t, n_c, s_c = (int(frame[c].sum()) if c in frame else 0 for c in _COUNTS)
    return uplift_ci(s_t, n_t, s_c, n_c, confidence)


@dataclass(frozen=True)
class Economics:
    """Totals of a reward-economics frame over the rows that have an uplift estimate."""

    incremental_revenue_eur: float
    total_cost_eur: float
    roi: float
    cost_per_retained_eur: float
    redemption_rate: float


def total_economics(frame: pd.DataFrame) -> Economics:
    """Return ROI, cost per retained customer and redemption rate over all rows of a reward frame."""
    if frame.empty:
        return Economics(math.nan, 0.0, math.nan, math.nan, math.nan)
    estimated = frame[np.isfinite(frame["incremental_revenue_eur"].astype(float))]
    revenue = float(estimated["incremental_revenue_eur"].sum()) if len(estimated) else math.nan
    cost_estimated = float(estimated["total_cost_eur"].sum())
    cost = float(frame["total_cost_eur"].fillna(0).sum())
    renewed = float(frame["treated_successes"].sum())
    rewards = float(frame["rewards"].sum())
    return Economics(
        incremental_revenue_eur=revenue,
        total_cost_eur=cost,
        roi=(revenue - cost_estimated) / cost_estimated if cost_estimated > 0 else math.nan,
        cost_per_retained_eur=cost / renewed if renewed > 0 else math.nan,
        redemption_rate=float(frame["redeemed"].sum()) / rewards if rewards > 0 else math.nan,
    )
