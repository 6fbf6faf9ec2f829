"""Consent audit: decisions by market, purpose, channel and reason, and the anomalies that must be zero."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from sqlalchemy import Connection, select

from tasks._prefect import STEP
from tasks.domain.consent import ALLOWING, Reason
from tasks.domain.frames import records
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.repository import audit

MARKETING_BASES = {r.value for r in ALLOWING if r is not Reason.CONTRACT_BASIS}


def audit_period(conn: Connection, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (decisions grouped by market, purpose, channel, stage, outcome and reason; anomalies)."""
    d, m, c, cust = s.decisions, s.messages, s.consents, s.customers
    decisions = read_frame(
        conn,
        select(
            d.c.message_key,
            d.c.stage,
            d.c.outcome,
            d.c.reason,
            d.c.consent_id,
            d.c.effective_purpose,
            d.c.purpose,
            d.c.channel,
            m.c.market,
        )
        .join(m, m.c.message_key == d.c.message_key)
        .where(d.c.decided_at >= start, d.c.decided_at < end),
    )
    decisions["purpose"] = decisions["effective_purpose"].fillna(decisions["purpose"])
    grouped = (
        decisions.groupby(["market", "purpose", "channel", "stage", "outcome", "reason"], dropna=False)
        .size()
        .rename("decisions")
        .reset_index()
        .sort_values(["market", "purpose", "channel", "stage", "outcome", "reason"])
    )
    sent = read_frame(
        conn,
        select(m.c.message_key, m.c.purpose, m.c.has_offer, m.c.offer_removed, m.c.sent_at, cust.c.erased_at)
        .join(cust, cust.c.customer_key == m.c.customer_key)
        .where(m.c.sent_at >= start, m.c.sent_at < end),
    )
    allowed = decisions.loc[decisions["outcome"] == "allowed"]
    per_message = allowed.groupby("message_key").agg(allowed=("reason", "size"), reasons=("reason", set))
    sent = sent.join(per_message, on="message_key")
    marketing = (sent["purpose"] == "marketing") | (
        sent["has_offer"].astype(bool) & ~sent["offer_removed"].astype(bool)
    )
    basis_ok = sent["reasons"].map(lambda r: isinstance(r, set) and bool(r & MARKETING_BASES))
    known_consents = set(read_frame(conn, select(c.c.consent_id))["consent_id"].dropna().astype(int))
    cited = decisions["consent_id"].dropna().astype(int)
    anomalies = pd.DataFrame(
        [
            {
                "check": "marketing content sent without a marketing basis",
                "count": int((marketing & ~basis_ok).sum()),
            },
            {
                "check": "sent message without exactly one allowed decision",
                "count": int((sent["allowed"].fillna(0) != 1).sum()),
            },
            {
                "check": "sent to a customer after their erasure",
                "count": int((sent["erased_at"].notna() & (sent["sent_at"] > sent["erased_at"])).sum()),
            },
            {
                "check": "decision citing a consent record that does not exist",
                "count": int((~cited.isin(known_consents)).sum()),
            },
        ]
    )
    return grouped, anomalies


def write_csv(path: Path, grouped: pd.DataFrame, anomalies: pd.DataFrame) -> Path:
    """Write both tables into one CSV a compliance officer can open in a spreadsheet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["section", *grouped.columns])
        for row in grouped.itertuples(index=False):
            writer.writerow(["decisions", *row])
        writer.writerow([])
        writer.writerow(["section", "check", "count"])
        for row in anomalies.itertuples(index=False):
            writer.writerow(["anomalies", *row])
    return path


@task(name="consent-audit", **STEP)
def consent_audit_task(start: datetime, end: datetime) -> dict[str, Any]:
    """Build the consent audit for [start, end): CSV file, table artifacts, anomaly counts."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        grouped, anomalies = audit_period(conn, start, end)
        path = write_csv(
            rt.settings.home / "reports" / f"consent-audit-{start:%Y-%m-%d}-{end:%Y-%m-%d}.csv",
            grouped,
            anomalies,
        )
        audit(
            conn,
            "consent.audit",
            details={"from": start.isoformat(), "to": end.isoformat(), "file": str(path)},
        )
    create_table_artifact(
        table=records(grouped.astype(str)) or [{"note": "no decisions in the period"}],
        key="consent-audit-decisions",
        description=f"Consent decisions {start:%Y-%m-%d} to {end:%Y-%m-%d} per market, purpose, channel",
    )
    create_table_artifact(
        table=records(anomalies.astype(str)),
        key="consent-audit-anomalies",
        description="Anomalies: every count must be zero",
    )
    total = int(anomalies["count"].sum())
    get_run_logger().info(
        "consent audit %s..%s: %s decision groups, %s anomalies", start, end, len(grouped), total
    )
    return {
        "file": str(path),
        "decision_groups": len(grouped),
        "anomalies": anomalies.set_index("check")["count"].to_dict(),
    }
