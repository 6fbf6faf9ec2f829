"""The cycle summary: counts per stage, segment, channel and decision reason, and its text forms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

STAGES = ("extract", "validate", "load", "segment", "plan", "consent-gate", "render", "dispatch")


def counts(series: pd.Series) -> dict[str, int]:
    """Return value counts as a plain, sorted dict."""
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def _fmt(mapping: Mapping[str, Any], limit: int = 6) -> str:
    items = [(k, v) for k, v in mapping.items() if v]
    shown = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in items[:limit])
    return shown + (f", +{len(items) - limit} more" if len(items) > limit else "")


def stage_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Return (stage, headline, detail, seconds) rows describing what each stage did."""
    seconds = summary.get("seconds", {})
    return [(stage, what, detail, _secs(seconds.get(stage))) for stage, what, detail in _stage_text(summary)]


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


def _stage_text(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    st = summary.get("stages", {})
    rows: list[tuple[str, str, str]] = []
    if "validate" in st:
        v = st["validate"]
        rows.append(("extract", f"{sum(v['rows_read'].values()):,} rows read", _fmt(v["rows_read"])))
        quarantined = sum(v["rows_quarantined"].values())
        rows.append(
            (
                "validate",
                f"{sum(v['rows_valid'].values()):,} valid, {quarantined:,} quarantined",
                _fmt(v["problems_by_reason"]) or "no problems",
            )
        )
    if "load" in st:
        loaded = {k: v for k, v in st["load"].items() if isinstance(v, dict)}
        ins = sum(v["inserted"] for v in loaded.values())
        upd = sum(v["updated"] for v in loaded.values())
        same = sum(v["unchanged"] for v in loaded.values())
        customers = loaded.get("customers", {})
        dropped = st["load"].get("suppressed_addresses_dropped", 0)
        rows.append(
            (
                "load",
                f"{ins:,} new, {upd:,} updated, {same:,} unchanged",
                f"customers: {customers.get('inserted', 0):,} new, {customers.get('updated', 0):,} updated"
                + (f"; {dropped:,} suppressed addresses dropped" if dropped else ""),
            )
        )
    if "segment" in st:
        s = st["segment"]
        rows.append(
            (
                "segment",
                f"{s['contracts']:,} contracts of {s['customers']:,} customers",
                _fmt(s["by_segment"], limit=7)
                + (f"; model {s['model_version']}" if s.get("model_version") else ""),
            )
        )
    if "plan" in st:
        p = st["plan"]
        rows.append(
            (
                "plan",
                f"{p['due_steps']:,} steps due, {p['new']:,} new messages",
                f"held out {p['held_out']:,}; adopted {p['adopted_unfinished']:,}; "
                f"already handled {p['already_handled']:,}; expired {p['expired_stale']:,}",
            )
        )
    if "consent-gate" in st:
        g = st["consent-gate"]
        released = g.get("released", {}).get("decided", 0)
        rows.append(
            (
                "consent-gate",
                f"{g['decided']:,} decisions: " + (_fmt(g["by_outcome"]) or "none"),
                _fmt(g["by_reason"]) + (f"; {released:,} deferred released" if released else ""),
            )
        )
    if "render" in st:
        r = st["render"]
        rows.append(
            (
                "render",
                f"{r['rendered']:,} rendered, {r['failed']:,} failed",
                "; ".join(
                    part
                    for part in (
                        _fmt(r["by_locale"]),
                        f"{r['language_fallbacks']:,} language fallbacks" if r["language_fallbacks"] else "",
                        f"{r['sms_segments']:,} SMS segments" if r["sms_segments"] else "",
                    )
                    if part
                ),
            )
        )
    if "dispatch" in st:
        d = st["dispatch"]
        if d.get("skipped"):
            rows.append(("dispatch", "skipped (dry run)", "nothing sent"))
        else:
            rows.append(
                (
                    "dispatch",
                    f"{d['sent']:,} sent, {d['failed']:,} failed, {d['in_doubt']:,} in doubt",
                    (_fmt(d["by_channel"]) or "nothing to send")
                    + (f"; {d['blocked_at_send']:,} blocked at send" if d["blocked_at_send"] else ""),
                )
            )
    return rows


def headline(summary: Mapping[str, Any]) -> str:
    """Return one sentence saying what the cycle did."""
    st = summary.get("stages", {})
    plan = st.get("plan", {})
    disp = st.get("dispatch", {})
    if summary.get("status") == "failed":
        return (
            f"Cycle {summary.get('cycle_id')} stopped before sending: {summary.get('error', 'see the log')}"
        )
    if summary.get("dry_run"):
        return f"Dry run: {plan.get('new', 0):,} messages would be new; nothing was sent."
    sent = disp.get("sent", 0)
    if plan.get("new", 0) == 0 and plan.get("adopted_unfinished", 0) == 0 and sent == 0:
        return (
            "Nothing new to send: every message due today was already handled "
            f"({plan.get('already_handled', 0):,} by earlier runs)."
        )
    return f"Sent {sent:,} messages ({plan.get('new', 0):,} newly planned)."


def markdown(summary: Mapping[str, Any]) -> str:
    """Return the summary as a Markdown document for a Prefect artifact (no personal data)."""
    lines = [
        f"# Renewal cycle {summary.get('cycle_id')} - {', '.join(summary.get('markets', []))} "
        f"{summary.get('as_of')} - {summary.get('playbook')}",
        "",
        headline(summary),
        "",
        "| stage | what happened | detail | time |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in stage_rows(summary)]
    for title, key in (
        ("Messages by channel and status", "per_channel"),
        ("Decisions by reason", "per_reason"),
    ):
        table = summary.get(key) or {}
        if table:
            lines += ["", f"## {title}", "", "| key | count |", "|---|---|"]
            lines += [f"| {k} | {v:,} |" for k, v in table.items()]
    return "\n".join(lines) + "\n"
