"""The manager's report: one self-contained HTML file of KPI charts and tables, aggregates only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tasks.domain import kpis
from tasks.reporting import charts

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"

# Columns that identify a person or their contract: the report shows aggregates, so a frame carrying
# any of them is a bug upstream, never something to print.
PERSONAL_COLUMNS = frozenset(
    {
        "customer_key",
        "contract_key",
        "instalment_key",
        "message_key",
        "reward_key",
        "provider_message_id",
        "email",
        "phone",
        "phone_e164",
        "first_name",
        "last_name",
    }
)

METRICS: dict[str, tuple[str, ...]] = {
    "funnel": kpis.FUNNEL_COLUMNS,
    "renewal_uplift": kpis.UPLIFT_COLUMNS,
    "churn": kpis.UPLIFT_COLUMNS,
    "repayment_uplift": kpis.UPLIFT_COLUMNS,
    "ladder": kpis.LADDER_COLUMNS,
    "reactivation": kpis.UPLIFT_COLUMNS,
    "reward_economics": kpis.REWARD_COLUMNS,
    "reminder_to_renewal": kpis.TIMING_COLUMNS,
    "channel_health": kpis.CHANNEL_COLUMNS,
}

CHART_NAMES = (
    "renewal-funnel",
    "renewal-uplift",
    "churn",
    "repayment-uplift",
    "dpd-ladder",
    "reactivation",
    "reward-roi",
    "reminder-to-renewal",
    "channel-health",
)


class NotAggregated(ValueError):
    """A report frame carries a column that identifies a person or a contract."""


@dataclass(frozen=True, eq=False)
class ReportData:
    """What the report shows: the KPI result frames (aggregates only) and the period they cover."""

    period_start: date
    period_end: date
    generated_at: datetime
    markets: tuple[str, ...]
    funnel: pd.DataFrame = field(default_factory=pd.DataFrame)
    renewal_uplift: pd.DataFrame = field(default_factory=pd.DataFrame)
    churn: pd.DataFrame = field(default_factory=pd.DataFrame)
    repayment_uplift: pd.DataFrame = field(default_factory=pd.DataFrame)
    ladder: pd.DataFrame = field(default_factory=pd.DataFrame)
    reactivation: pd.DataFrame = field(default_factory=pd.DataFrame)
    reward_economics: pd.DataFrame = field(default_factory=pd.DataFrame)
    reminder_to_renewal: pd.DataFrame = field(default_factory=pd.DataFrame)
    channel_health: pd.DataFrame = field(default_factory=pd.DataFrame)
    locale: str = "en"
    confidence: float = kpis.CONFIDENCE
    cure_days: int = kpis.CURE_DAYS
    title: str = "Renewals: KPIs and uplift"


@dataclass(frozen=True)
class Table:
    """A table of formatted cells; `numeric` holds the indexes of right-aligned columns."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int]


@dataclass(frozen=True)
class Section:
    """One part of the report: heading, a sentence of context, a chart, its numbers and a caveat."""

    id: str
    title: str
    lead: str
    chart: str
    table: Table
    note: str = ""


@dataclass(frozen=True)
class Tile:
    """A headline figure."""

    label: str
    value: str
    detail: str


class Numbers:
    """Number, money and date formatting in the reader's locale; anything not a finite number prints `n/a`."""

    def __init__(self, tag: str) -> None:
        try:
            self.locale = Locale.parse(tag, sep="-")
        except (UnknownLocaleError, ValueError):
            self.locale = Locale("en")

    def _number(self, value: object, pattern: str, suffix: str = "") -> str:
        v = _f(value)
        return kpis.NA if math.isnan(v) else format_decimal(v, pattern, locale=self.locale) + suffix

    def _percent(self, value: object, pattern: str) -> str:
        v = _f(value)
        return kpis.NA if math.isnan(v) else format_percent(v, pattern, locale=self.locale)

    def pct(self, value: object) -> str:
        """Format a share, e.g. `12.3%`."""
        return self._percent(value, "#,##0.0%")

    def pct0(self, value: object) -> str:
        """Format a share without decimals, for axes."""
        return self._percent(value, "#,##0%")

    def signed_pct(self, value: object) -> str:
        """Format a ratio such as ROI as a signed percentage."""
        return self._percent(value, "+#,##0%;-#,##0%")

    def pp(self, value: object) -> str:
        """Format a difference of shares in signed percentage points."""
        return self._number(_f(value) * 100, "+#,##0.0;-#,##0.0", " pp")

    def signed(self, value: object) -> str:
        """Format a difference of shares in signed percentage points without the unit."""
        return self._number(_f(value) * 100, "+#,##0.0;-#,##0.0")

    def count(self, value: object) -> str:
        """Format a count."""
        return self._number(value, "#,##0")

    def offset(self, value: object) -> str:
        """Format a signed day offset, e.g. `-30`."""
        return self._number(value, "+0;-0")

    def decimal(self, value: object) -> str:
        """Format a number with one decimal."""
        return self._number(value, "#,##0.0")

    def days(self, value: object) -> str:
        """Format a number of days."""
        return self._number(value, "#,##0.#", " d")

    def eur(self, value: object) -> str:
        """Format an amount in EUR without cents."""
        v = _f(value)
        if math.isnan(v):
            return kpis.NA
        return format_currency(v, "EUR", "¤#,##0", locale=self.locale, currency_digits=False)

    def eur2(self, value: object) -> str:
        """Format an amount in EUR with cents."""
        v = _f(value)
        return kpis.NA if math.isnan(v) else format_currency(v, "EUR", locale=self.locale)

    def interval(self, low: object, high: object, fmt: Callable[[object], str]) -> str:
        """Format an interval, or `n/a` when either end is undefined."""
        lo, hi = _f(low), _f(high)
        return kpis.NA if math.isnan(lo) or math.isnan(hi) else f"{fmt(lo)} to {fmt(hi)}"

    def with_interval(self, value: object, low: object, high: object, fmt: Callable[[object], str]) -> str:
        """Format an estimate followed by its interval in brackets, or `n/a` alone when undefined."""
        if math.isnan(_f(value)):
            return kpis.NA
        return f"{fmt(value)} ({self.interval(low, high, fmt)})"

    def day(self, value: date) -> str:
        """Format a date."""
        return format_date(value, "medium", locale=self.locale)

    def moment(self, value: datetime) -> str:
        """Format a timestamp."""
        return format_datetime(value, "medium", locale=self.locale)


def _f(value: object) -> float:
    """Return a value as a finite float, or NaN for anything else (None, NaN, NaT, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return math.nan
    number = float(value)
    return number if math.isfinite(number) else math.nan


def check_aggregated(data: ReportData) -> None:
    """Raise unless every frame is an aggregate with the columns its chart needs."""
    for name, metrics in METRICS.items():
        frame: pd.DataFrame = getattr(data, name)
        personal = sorted(PERSONAL_COLUMNS & {str(c) for c in frame.columns})
        if personal:
            raise NotAggregated(f"report frame {name} has personal column(s) {', '.join(personal)}")
        if len(frame) and (missing := [c for c in metrics if c not in frame.columns]):
            raise ValueError(f"report frame {name} is missing column(s) {', '.join(missing)}")


def _keys(frame: pd.DataFrame, name: str) -> list[str]:
    return [str(c) for c in frame.columns if c not in METRICS[name]]


def _labels(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    if not keys:
        return ["all"] * len(frame)
    return [
        " · ".join("(none)" if pd.isna(v) else str(v) for v in row)
        for row in frame[list(keys)].itertuples(index=False)
    ]


def _with_data(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "treated_n" not in frame.columns:
        return frame
    return frame[(frame["treated_n"] + frame["control_n"]) > 0].reset_index(drop=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> Table:
    return Table(
        tuple(headers),
        tuple(tuple(r) for r in rows),
        frozenset(range(text_columns, len(headers))),
    )


def _uplift_section(
    data: ReportData,
    nf: Numbers,
    *,
    name: str,
    chart: str,
    section: str,
    title: str,
    lead: str,
    outcome: str,
    note: str,
) -> Section:
    frame = _with_data(getattr(data, name))
    keys = _keys(frame, name)
    labels = _labels(frame, keys)
    level = f"{data.confidence:.0%}"
    svg = charts.uplift_chart(
        chart,
        f"{title}: treated minus control, with {level} interval",
        labels,
        [_f(v) for v in frame.get("uplift", [])],
        [_f(v) for v in frame.get("uplift_low", [])],
        [_f(v) for v in frame.get("uplift_high", [])],
        fmt=nf.pp,
        bound_fmt=nf.signed,
        x_label=f"difference in {outcome} (percentage points)",
    )
    rows = [
        [
            labels[i],
            nf.count(r.treated_n),
            nf.pct(r.treated_rate),
            nf.count(r.control_n),
            nf.pct(r.control_rate),
            nf.pp(r.uplift),
            nf.interval(r.uplift_low, r.uplift_high, nf.pp),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = [" · ".join(keys) or "group", "treated", f"treated {outcome}", "control", f"control {outcome}"]
    headers += ["uplift", f"{level} interval"]
    return Section(section, title, lead, svg, _table(headers, rows, 1), note)


def _bar_section(
    data: ReportData, nf: Numbers, *, name: str, chart: str, section: str, title: str, lead: str, outcome: str
) -> Section:
    frame = _with_data(getattr(data, name))
    keys = _keys(frame, name)
    labels = _labels(frame, keys)
    level = f"{data.confidence:.0%}"
    svg = charts.bar_chart(
        chart,
        f"{title}: treated vs control",
        labels,
        [
            charts.Series("treated", [_f(v) for v in frame.get("treated_rate", [])], charts.TREATED),
            charts.Series("control", [_f(v) for v in frame.get("control_rate", [])], charts.CONTROL),
        ],
        fmt=nf.pct,
        tick_fmt=nf.pct0,
        y_label=outcome,
        x_label=" · ".join(keys),
    )
    rows = [
        [
            labels[i],
            nf.count(r.treated_n),
            nf.pct(r.treated_rate),
            nf.interval(r.treated_low, r.treated_high, nf.pct),
            nf.count(r.control_n),
            nf.pct(r.control_rate),
            nf.pp(r.uplift),
            nf.interval(r.uplift_low, r.uplift_high, nf.pp),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = [" · ".join(keys) or "group", "treated", outcome, f"{level} interval", "control", outcome]
    headers += ["difference", f"{level} interval"]
    return Section(section, title, lead, svg, _table(headers, rows, 1))


def _funnel_section(data: ReportData, nf: Numbers) -> Section:
    frame = data.funnel
    keys = _keys(frame, "funnel")
    if len(frame):
        pooled = frame.groupby(["offset_days", "step"], sort=True)[
            ["reached", "renewed_before_next", "cumulative_renewed"]
        ].sum()
        entered = (
            float(frame.drop_duplicates(keys)["entered"].sum()) if keys else float(frame["entered"].max())
        )
        steps = [str(s) for _, s in pooled.index]
        reached = [float(v) for v in pooled["reached"]]
        share = [
            r / n if n else math.nan for r, n in zip(pooled["renewed_before_next"], reached, strict=True)
        ]
        cumulative = [c / entered if entered else math.nan for c in pooled["cumulative_renewed"]]
    else:
        steps, reached, share, cumulative = [], [], [], []
    svg = charts.funnel_chart(
        "renewal-funnel",
        "Renewal funnel by T-minus step",
        steps,
        reached,
        share,
        cumulative,
        count_fmt=nf.count,
        share_fmt=nf.pct0,
    )
    labels = _labels(frame, keys)
    rows = [
        ([labels[i]] if keys else [])
        + [
            str(r.step),
            nf.offset(r.offset_days),
            nf.count(r.reached),
            nf.count(r.renewed_before_next),
            nf.pct(r.renewed_share),
            nf.pct(r.cumulative_share),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = ([" · ".join(keys)] if keys else []) + ["step", "days from term end", "reached"]
    headers += ["renewed before next step", "share", "cumulative share of all terms"]
    return Section(
        "funnel",
        "Renewal funnel",
        "Terms each reminder step reached, and how many renewed before the next step was due.",
        svg,
        _table(headers, rows, len(keys) + 1),
        "Treated terms only; a term enters the funnel with its first message.",
    )


def _ladder_section(data: ReportData, nf: Numbers) -> Section:
    frame = data.ladder
    keys = _keys(frame, "ladder")
    level = f"{data.confidence:.0%}"
    if len(frame):
        pooled = frame.groupby(["offset_days", "step"], sort=True)[
            ["treated_reached", "treated_cured", "control_unpaid", "control_cured"]
        ].sum()
        steps = [str(s) for _, s in pooled.index]
        treated = [
            c / n if n else math.nan
            for c, n in zip(pooled["treated_cured"], pooled["treated_reached"], strict=True)
        ]
        control = [
            c / n if n else math.nan
            for c, n in zip(pooled["control_cured"], pooled["control_unpaid"], strict=True)
        ]
    else:
        steps, treated, control = [], [], []
    svg = charts.line_chart(
        "dpd-ladder",
        f"Days-past-due ladder: share cured within {data.cure_days} days of each step",
        steps,
        [
            charts.Series("treated: reached the step", treated, charts.TREATED),
            charts.Series("control: unpaid at that day", control, charts.CONTROL, dashed=True),
        ],
        fmt=nf.pct0,
        x_label="ladder step (days past due)",
        y_label="cure rate",
    )
    labels = _labels(frame, keys)
    rows = [
        ([labels[i]] if keys else [])
        + [
            str(r.step),
            nf.count(r.treated_reached),
            nf.count(r.stopped_here),
            nf.count(r.treated_cured),
            nf.pct(r.treated_rate),
            nf.interval(r.treated_low, r.treated_high, nf.pct),
            nf.count(r.control_unpaid),
            nf.pct(r.control_rate),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = ([" · ".join(keys)] if keys else []) + [
        "step",
        "reached",
        "last step sent",
        "cured",
        "cure rate",
    ]
    headers += [f"{level} interval", "control unpaid", "control cure rate"]
    return Section(
        "ladder",
        "Days-past-due ladder",
        f"Instalments each reminder step reached and the share paid within {data.cure_days} days after it.",
        svg,
        _table(headers, rows, len(keys) + 1),
        "Reaching a step depends on not having paid, so the control line is a comparison, not a randomised "
        "uplift per step.",
    )


def _reward_section(data: ReportData, nf: Numbers) -> Section:
    frame = data.reward_economics
    keys = _keys(frame, "reward_economics")
    level = f"{data.confidence:.0%}"
    # Rows with rewards but no treated term (not yet mature, or no term at all) have no ROI to draw.
    drawn = frame[frame["treated_n"] > 0].reset_index(drop=True) if len(frame) else frame
    svg = charts.uplift_chart(
        "reward-roi",
        f"Incentive ROI with {level} interval",
        _labels(drawn, keys),
        [_f(v) for v in drawn.get("roi", [])],
        [_f(v) for v in drawn.get("roi_low", [])],
        [_f(v) for v in drawn.get("roi_high", [])],
        fmt=nf.signed_pct,
        x_label="(incremental revenue − reward and messaging cost) / that cost",
        missing="n/a: no control group or no cost",
    )
    labels = _labels(frame, keys)
    rows = [
        [
            labels[i],
            nf.decimal(r.incremental_renewals),
            nf.eur(r.incremental_revenue_eur),
            nf.eur(r.reward_cost_eur),
            nf.eur(r.messaging_cost_eur),
            nf.with_interval(r.roi, r.roi_low, r.roi_high, nf.signed_pct),
            nf.eur2(r.cost_per_retained_eur),
            nf.eur2(r.cost_per_incremental_renewal_eur),
            f"{nf.pct(r.redemption_rate)} of {nf.count(r.rewards)}",
            nf.count(r.clawed_back),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = [" · ".join(keys) or "group", "incremental renewals", "incremental revenue", "reward cost"]
    headers += [
        "messaging cost",
        f"ROI ({level} interval)",
        "cost per retained",
        "cost per incremental renewal",
    ]
    headers += ["redeemed", "clawed back"]
    return Section(
        "rewards",
        "Reward ROI",
        "What the incremental renewals earned against what rewards and messages cost.",
        svg,
        _table(headers, rows, 1),
        "Amounts in EUR at the fixed reporting rate. Clawed-back rewards count neither as cost nor in the "
        "redemption rate; rewards are matched to the customer's renewal nearest the grant.",
    )


def _timing_section(data: ReportData, nf: Numbers) -> Section:
    frame = data.reminder_to_renewal
    frame = frame[frame["renewals"] > 0].reset_index(drop=True) if len(frame) else frame
    keys = _keys(frame, "reminder_to_renewal")
    labels = _labels(frame, keys)
    svg = charts.bar_chart(
        "reminder-to-renewal",
        "Days from first reminder to renewal",
        labels,
        [
            charts.Series("median", [_f(v) for v in frame.get("median_days", [])], charts.TREATED),
            charts.Series("90th percentile", [_f(v) for v in frame.get("p90_days", [])], charts.WARN),
        ],
        fmt=nf.days,
        y_label="days",
        x_label=" · ".join(keys),
    )
    rows = [
        [
            labels[i],
            nf.count(r.renewals),
            nf.days(r.median_days),
            nf.days(r.p90_days),
            nf.count(r.renewed_before_contact),
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = [" · ".join(keys) or "group", "renewals after contact", "median", "90th percentile"]
    headers += ["renewed before first contact"]
    return Section(
        "timing",
        "Reminder to renewal",
        "How long treated customers took to renew after the first reminder.",
        svg,
        _table(headers, rows, 1),
    )


def _channel_section(data: ReportData, nf: Numbers) -> Section:
    frame = data.channel_health
    keys = _keys(frame, "channel_health")
    labels = _labels(frame, keys)
    parts = [
        ("delivered", "delivered", charts.GOOD),
        ("pending", "sent, no receipt yet", charts.WARN),
        ("in_doubt", "in doubt", charts.DOUBT),
        ("failed", "failed", charts.BAD),
    ]
    svg = charts.stacked_bar_chart(
        "channel-health",
        "Channel health: what happened to messages handed to providers",
        labels,
        [charts.Series(label, [_f(v) for v in frame.get(col, [])], color) for col, label, color in parts],
        count_fmt=nf.count,
        share_fmt=nf.pct0,
        x_label="share of attempted and in-doubt messages",
    )
    rows = [
        [
            labels[i],
            nf.count(r.messages),
            nf.count(r.attempted),
            nf.pct(r.delivery_rate),
            nf.pct(r.failure_rate),
            nf.count(r.pending),
            nf.count(r.in_doubt),
            nf.count(r.blocked),
            nf.eur2(r.cost_eur),
            nf.eur2(r.cost_per_delivered_eur),
            str(r.top_errors) or "none",
        ]
        for i, r in enumerate(frame.itertuples(index=False))
    ]
    headers = [
        " · ".join(keys) or "group",
        "messages",
        "attempted",
        "delivery rate",
        "failure rate",
        "no receipt",
    ]
    headers += ["in doubt", "blocked", "cost", "cost per delivered", "top error codes"]
    table = _table(headers, rows, 1)
    table = Table(table.headers, table.rows, table.numeric - {len(headers) - 1})
    return Section(
        "channels",
        "Channel health",
        "Delivery and failure rates among messages handed to a provider.",
        svg,
        table,
        "Rates divide by attempted messages: delivered, failed and sent-without-receipt. In-doubt "
        "messages are counted apart; blocked ones were never attempted.",
    )


def _tiles(data: ReportData, nf: Numbers) -> list[Tile]:
    tiles: list[Tile] = []
    for name, label in (
        ("renewal_uplift", "On-time renewal"),
        ("repayment_uplift", "On-time repayment"),
        ("churn", "Churn"),
        ("reactivation", "Reactivation"),
    ):
        u = kpis.total_uplift(getattr(data, name), data.confidence)
        if u.treated.n + u.control.n == 0:
            tiles.append(Tile(label, kpis.NA, charts.NO_DATA))
            continue
        difference = nf.with_interval(u.difference, u.low, u.high, nf.pp)
        detail = f"control {nf.pct(u.control.rate)}; difference {difference}"
        tiles.append(Tile(label, nf.pct(u.treated.rate), detail))
    e = kpis.total_economics(data.reward_economics)
    tiles.append(
        Tile(
            "Incentive ROI",
            nf.signed_pct(e.roi),
            f"incremental revenue {nf.eur(e.incremental_revenue_eur)}; cost {nf.eur(e.total_cost_eur)}",
        )
    )
    tiles.append(
        Tile(
            "Cost per retained customer",
            nf.eur2(e.cost_per_retained_eur),
            f"redemption rate {nf.pct(e.redemption_rate)}",
        )
    )
    ch = data.channel_health
    attempted = float(ch["attempted"].sum()) if len(ch) else 0.0
    delivered = float(ch["delivered"].sum()) if len(ch) else 0.0
    failed = float(ch["failed"].sum()) if len(ch) else 0.0
    tiles.append(
        Tile(
            "Delivery rate",
            nf.pct(delivered / attempted if attempted else math.nan),
            f"failure rate {nf.pct(failed / attempted if attempted else math.nan)} "
            f"of {nf.count(attempted)} attempted",
        )
    )
    return tiles


def build_sections(data: ReportData) -> list[Section]:
    """Return the report's sections in reading order."""
    nf = Numbers(data.locale)
    return [
        _funnel_section(data, nf),
        _uplift_section(
            data,
            nf,
            name="renewal_uplift",
            chart="renewal-uplift",
            section="renewal",
            title="On-time renewal uplift",
            lead="Share of mature terms renewed by their term end, treated minus holdout.",
            outcome="on-time renewal",
            note="A term is mature once its term end plus the grace period has passed.",
        ),
        _bar_section(
            data,
            nf,
            name="churn",
            chart="churn",
            section="churn",
            title="Churn",
            lead="Share of mature terms not renewed within the grace period; lower is better.",
            outcome="churn",
        ),
        _uplift_section(
            data,
            nf,
            name="repayment_uplift",
            chart="repayment-uplift",
            section="repayment",
            title="On-time repayment uplift",
            lead="Share of mature instalments paid by their due date, treated minus holdout.",
            outcome="paid on time",
            note="",
        ),
        _ladder_section(data, nf),
        _bar_section(
            data,
            nf,
            name="reactivation",
            chart="reactivation",
            section="reactivation",
            title="Reactivation",
            lead="Share of inactive customers active again within the window.",
            outcome="reactivated",
        ),
        _reward_section(data, nf),
        _timing_section(data, nf),
        _channel_section(data, nf),
    ]


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(data: ReportData) -> str:
    """Return the report as one self-contained HTML document."""
    check_aggregated(data)
    nf = Numbers(data.locale)
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=data.title,
            lang=str(data.locale).replace("_", "-"),
            period=f"{nf.day(data.period_start)} – {nf.day(data.period_end)}",
            generated=nf.moment(data.generated_at),
            markets=", ".join(data.markets) or "all markets",
            confidence=f"{data.confidence:.0%}",
            tiles=_tiles(data, nf),
            sections=build_sections(data),
        )
    )


def write_report(data: ReportData, path: Path) -> Path:
    """Render the report and write it to `path` (UTF-8); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path
