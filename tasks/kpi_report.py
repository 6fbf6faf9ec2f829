"""The KPI report: read a period's cycles from the store, compute the KPIs, write the HTML, publish artifacts.

A period is the cycles whose day (`as_of`) falls in [start, end]; dry runs never count. Outcomes
(renewals, payments, activity) are read as they stand today, and a term only counts once it has had
time to mature (see docs/kpis.md), so a report on last week mostly shows channel health.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from sqlalchemy import ColumnElement, Connection, Select, select, true, union

from config.loader import load_playbooks
from tasks._prefect import IO_RETRIES, STEP
from tasks.domain import kpis
from tasks.domain.frames import records
from tasks.domain.kpi_inputs import StoreRows, kpi_inputs
from tasks.domain.playbook import Playbook, PlaybookKind
from tasks.reporting.report import ReportData, write_report
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.repository import audit

# Activity before the period's first cycle still tells when a customer went quiet.
ACTIVITY_LOOKBACK_DAYS = 400


def _cycles(start: date, end: date) -> Select[Any]:
    c = s.cycles
    return select(c.c.cycle_id).where(c.c.as_of >= start, c.c.as_of <= end, c.c.dry_run.is_(False))


def _in_markets(column: ColumnElement[Any], markets: Sequence[str]) -> ColumnElement[bool]:
    return column.in_(list(markets)) if markets else true()


def read_rows(conn: Connection, start: date, end: date, markets: Sequence[str] = ()) -> StoreRows:
    """Return the raw rows of the non-dry cycles run on days in [start, end], optionally for some markets."""
    m, h, ct, inst, act, seg, rw, cust = (
        s.messages,
        s.holdouts,
        s.contracts,
        s.instalments,
        s.activity,
        s.segment_assignments,
        s.rewards,
        s.customers,
    )
    cycles = _cycles(start, end)
    messages = read_frame(
        conn,
        select(
            m.c.message_key,
            m.c.cycle_id,
            m.c.playbook,
            m.c.contract_key,
            m.c.customer_key,
            m.c.market,
            m.c.step,
            m.c.channel,
            m.c.anchor_date,
            m.c.status,
            m.c.error_code,
            m.c.cost,
            m.c.cost_currency,
            m.c.sent_at,
        ).where(m.c.cycle_id.in_(cycles), _in_markets(m.c.market, markets)),
    )
    holdouts = read_frame(
        conn,
        select(
            h.c.cycle_id,
            h.c.playbook,
            h.c.contract_key,
            h.c.customer_key,
            cust.c.market,
            h.c.step,
            h.c.anchor_date,
        )
        .join(cust, cust.c.customer_key == h.c.customer_key)
        .where(h.c.cycle_id.in_(cycles), _in_markets(cust.c.market, markets)),
    )
    contract_keys = union(
        select(m.c.contract_key).where(m.c.cycle_id.in_(cycles)),
        select(h.c.contract_key).where(h.c.cycle_id.in_(cycles)),
    ).subquery()
    customer_keys = union(
        select(m.c.customer_key).where(m.c.cycle_id.in_(cycles)),
        select(h.c.customer_key).where(h.c.cycle_id.in_(cycles)),
    ).subquery()
    contracts = read_frame(
        conn,
        select(
            ct.c.contract_key, ct.c.customer_key, ct.c.term_end, ct.c.renewed_at, ct.c.price, ct.c.currency
        ).where(ct.c.contract_key.in_(select(contract_keys.c.contract_key))),
    )
    instalments = read_frame(
        conn,
        select(
            inst.c.instalment_key,
            inst.c.contract_key,
            inst.c.due_date,
            inst.c.amount,
            inst.c.currency,
            inst.c.paid_date,
        ).where(inst.c.contract_key.in_(select(contract_keys.c.contract_key))),
    )
    activity = read_frame(
        conn,
        select(act.c.customer_key, act.c.month, act.c.transactions, act.c.last_active).where(
            act.c.customer_key.in_(select(customer_keys.c.customer_key)),
            act.c.month >= start - timedelta(days=ACTIVITY_LOOKBACK_DAYS),
        ),
    )
    segments = read_frame(
        conn,
        select(seg.c.cycle_id, seg.c.contract_key, seg.c.segment).where(
            seg.c.cycle_id.in_(cycles),
            seg.c.contract_key.in_(select(contract_keys.c.contract_key)),
        ),
    )
    begin = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    finish = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    rewards = read_frame(
        conn,
        select(
            rw.c.reward_key,
            rw.c.customer_key,
            rw.c.market,
            rw.c.contract_key,
            rw.c.rule,
            rw.c.status,
            rw.c.cost_eur,
            rw.c.granted_at,
        ).where(
            rw.c.granted_at >= begin,
            rw.c.granted_at < finish,
            _in_markets(rw.c.market, markets),
        ),
    )
    return StoreRows(messages, holdouts, contracts, instalments, activity, segments, rewards)


def report_data(
    inputs: Mapping[str, pd.DataFrame],
    start: date,
    end: date,
    as_of: date,
    markets: Sequence[str],
    locale: str = "en",
    ladder_steps: Sequence[str] | None = None,
) -> ReportData:
    """Return the report's KPI frames computed from the period's inputs, measured on `as_of`."""
    exposures = inputs["exposures"]
    instalments = inputs["instalment_exposures"]
    return ReportData(
        period_start=start,
        period_end=end,
        generated_at=datetime.now(UTC),
        markets=tuple(markets),
        funnel=kpis.renewal_funnel(inputs["funnel"], as_of=as_of),
        renewal_uplift=kpis.renewal_uplift(exposures, as_of),
        churn=kpis.churn_rate(exposures, as_of, by=["market", "playbook"]),
        repayment_uplift=kpis.repayment_uplift(instalments, as_of),
        ladder=kpis.ladder_cure_rates(instalments, as_of, steps=ladder_steps),
        reactivation=kpis.reactivation_rate(inputs["reactivation"], as_of),
        reward_economics=kpis.reward_economics(exposures, inputs["rewards"], as_of),
        reminder_to_renewal=kpis.reminder_to_renewal_days(exposures, as_of=as_of),
        channel_health=kpis.channel_health(inputs["deliveries"], by=("market", "channel")),
        locale=locale,
    )


def headline_rows(data: ReportData) -> list[dict[str, Any]]:
    """Return one row per KPI family: the pooled treated and control rates, uplift and its interval."""
    rows: list[dict[str, Any]] = []
    for name, frame in (
        ("on-time renewal", data.renewal_uplift),
        ("churn", data.churn),
        ("repayment on time", data.repayment_uplift),
        ("reactivation / win-back", data.reactivation),
    ):
        u = kpis.total_uplift(frame, data.confidence)
        rows.append(
            {
                "kpi": name,
                "treated": f"{u.treated.successes}/{u.treated.n}",
                "treated_rate": _percent(u.treated.rate, u.treated.n),
                "control": f"{u.control.successes}/{u.control.n}",
                "control_rate": _percent(u.control.rate, u.control.n),
                "uplift": f"{u.difference * 100:+.1f} pp" if u.treated.n and u.control.n else kpis.NA,
                "interval_95": kpis.interval_text(u.low, u.high) if u.treated.n and u.control.n else kpis.NA,
            }
        )
    return rows


def _percent(rate: float, n: int) -> str:
    return f"{rate:.1%}" if n else kpis.NA


def _channel_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    keep = ["market", "channel", "messages", "attempted", "delivered", "failed", "in_doubt", "blocked"]
    out = frame[[c for c in keep if c in frame]].copy()
    out["delivery_rate"] = frame["delivery_rate"].map(lambda v: kpis.NA if pd.isna(v) else f"{v:.1%}")
    out["cost_eur"] = frame["cost_eur"].round(2)
    return records(out)


def report_path(home: Path, start: date, end: date, markets: Sequence[str]) -> Path:
    """Return where a period's report is written by default."""
    scope = "-".join(markets) if markets else "all"
    return home / "reports" / f"kpi-report-{scope}-{start:%Y%m%d}-{end:%Y%m%d}.html"


def build_report(
    conn: Connection,
    playbooks: Mapping[str, Playbook],
    eur_per_unit: Mapping[str, object],
    start: date,
    end: date,
    as_of: date,
    markets: Sequence[str] = (),
    locale: str = "en",
) -> tuple[ReportData, dict[str, pd.DataFrame]]:
    """Return the period's report data and the input frames it was computed from."""
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    inputs = kpi_inputs(read_rows(conn, start, end, markets), playbooks, eur_per_unit)
    found = sorted(set(inputs["deliveries"]["market"]) | set(inputs["exposures"]["market"]))
    steps = [
        step.id
        for book in playbooks.values()
        if book.kind is PlaybookKind.REPAYMENT
        for step in book.ordered_steps
        if step.offset_days >= 0
    ]
    data = report_data(inputs, start, end, as_of, tuple(markets) or tuple(found), locale, steps or None)
    return data, inputs


@task(name="kpi-report", **STEP, **IO_RETRIES)
def kpi_report_task(
    start: date, end: date, as_of: date, markets: Sequence[str], out: str | None, locale: str
) -> dict[str, Any]:
    """Compute the period's KPIs, write the report, and publish it with its headline table as artifacts."""
    rt = get_runtime()
    logger = get_run_logger()
    playbooks = load_playbooks(rt.settings.config_dir)
    with rt.engine.connect() as conn:
        data, inputs = build_report(conn, playbooks, rt.fx.eur_per_unit, start, end, as_of, markets, locale)
    path = Path(out) if out else report_path(rt.settings.home, start, end, markets)
    write_report(data, path)
    counts = {name: len(frame) for name, frame in inputs.items()}
    headline = headline_rows(data)
    with rt.engine.begin() as conn:
        audit(
            conn,
            "report.written",
            subject_type="report",
            subject_key=path.name,
            details={"start": str(start), "end": str(end), "markets": list(markets), "rows": counts},
        )
    scope = ", ".join(data.markets) or "no markets"
    create_link_artifact(
        key="kpi-report",
        link=path.resolve().as_uri(),
        link_text=path.name,
        description=f"KPI report {start}..{end} ({scope}), measured on {as_of}",
    )
    create_table_artifact(
        key="kpi-headline",
        table=headline,
        description=f"Treated vs holdout, pooled over {scope}, {start}..{end}",
    )
    create_table_artifact(
        key="kpi-channel-health",
        table=_channel_rows(data.channel_health) or [{"note": "no messages in this period"}],
        description=f"Delivery per market and channel, {start}..{end}",
    )
    create_markdown_artifact(
        key="kpi-report-summary",
        markdown=_markdown(data, counts, path, as_of, headline),
        description=f"KPI report {start}..{end}",
    )
    logger.info("KPI report %s..%s written to %s (%s)", start, end, path, counts)
    return {"path": str(path), "rows": counts, "headline": headline}


def _markdown(
    data: ReportData, counts: Mapping[str, int], path: Path, as_of: date, headline: list[dict[str, Any]]
) -> str:
    lines = [
        f"# KPI report {data.period_start} to {data.period_end}",
        "",
        f"Markets: {', '.join(data.markets) or 'none'}. Outcomes measured on {as_of}; a renewal term counts "
        f"{kpis.GRACE_DAYS} days after its end, an instalment on its due date.",
        "",
        f"Report file: `{path}` (self-contained HTML, opens offline).",
        "",
        "| KPI | treated | rate | control | rate | uplift | 95% interval |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['kpi']} | {r['treated']} | {r['treated_rate']} | {r['control']} | {r['control_rate']} "
            f"| {r['uplift']} | {r['interval_95']} |"
            for r in headline
        ),
        "",
        "Inputs: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
    ]
    return "\n".join(lines) + "\n"
