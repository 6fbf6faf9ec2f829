"""Cycle bookkeeping: open the cycle row, and summarise and close it at the end."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.settings import PREFECT_UI_URL
from sqlalchemy import Connection

from tasks._prefect import STEP
from tasks.domain.frames import records
from tasks.domain.summary import headline, markdown
from tasks.render import check_whatsapp_steps
from tasks.runtime import get_runtime
from tasks.store.repository import audit, count_by, create_cycle, finish_cycle, rewards_granted_on
from tasks.worklist import build_worklist, recent


@task(name="open-cycle", **STEP)
def open_cycle(as_of: date, markets: list[str], playbook_ids: list[str], dry_run: bool) -> int:
    """Validate the playbooks and open the cycle row; a bad playbook or template stops the run here."""
    rt = get_runtime()
    books = [rt.playbook(pid) for pid in playbook_ids]
    unknown = sorted(set(markets) - set(rt.markets))
    if unknown:
        raise ValueError(f"unknown market(s) {unknown}; configured: {sorted(rt.markets)}")
    for book in books:
        check_whatsapp_steps(book, [rt.markets[m] for m in markets], rt.whatsapp_registry)
    ctx = get_run_context()
    flow_run = getattr(ctx, "task_run", None)
    run_id = str(flow_run.flow_run_id) if flow_run is not None else None
    with rt.engine.begin() as conn:
        cycle_id = create_cycle(
            conn,
            as_of=as_of,
            markets=markets,
            playbook=",".join(b.id for b in books),
            playbook_version=books[0].version if len(books) == 1 else 0,
            dry_run=dry_run,
            flow_run_id=run_id,
        )
        audit(conn, "cycle.started", cycle_id=cycle_id, details={"markets": markets, "dry_run": dry_run})
    return cycle_id


@task(name="open-release", **STEP)
def open_release(as_of: date, markets: list[str] | None) -> int:
    """Open a cycle row for a deferred-message release run."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        cycle_id = create_cycle(
            conn,
            as_of=as_of,
            markets=markets or sorted(rt.markets),
            playbook="(deferred release)",
            playbook_version=0,
            dry_run=False,
            flow_run_id=None,
        )
        audit(conn, "release.started", cycle_id=cycle_id)
    return cycle_id


def cycle_summary(conn: Connection, base: dict[str, Any], cycle_id: int) -> dict[str, Any]:
    """Return the full summary: stage stats plus counts per segment, channel/status and decision reason."""
    per_channel = {
        f"{r['channel']}:{r['status']}": int(r["n"])
        for r in count_by(conn, "messages", cycle_id, ["channel", "status"])
    }
    per_reason = {
        f"{r['stage']}:{r['outcome']}:{r['reason']}": int(r["n"])
        for r in count_by(conn, "decisions", cycle_id, ["stage", "outcome", "reason"])
    }
    per_segment = {
        r["segment"]: int(r["n"]) for r in count_by(conn, "segment_assignments", cycle_id, ["segment"])
    }
    return {**base, "per_channel": per_channel, "per_reason": per_reason, "per_segment": per_segment}


TABLE_KEYS = {
    "segments": "cycle-segments",
    "decisions": "cycle-decisions",
    "messages": "cycle-messages",
    "rewards": "cycle-rewards",
    "worklist": "cycle-worklist",
}


def cycle_tables(conn: Connection, cycle_id: int, summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return the cycle's aggregate tables (and its worklist of customer keys): never contact data."""
    rt = get_runtime()
    books = [rt.playbook(p) for p in str(summary.get("playbook_ids") or "").split(",") if p]
    worklist = build_worklist(conn, cycle_id, books, rt.worklist, rt.fx.eur_per_unit, recent(7))
    return {
        "segments": [
            {"segment": r["segment"], "risk_band": r["risk_band"], "contracts": int(r["n"])}
            for r in count_by(conn, "segment_assignments", cycle_id, ["segment", "risk_band"])
        ],
        "decisions": [
            {"stage": r["stage"], "outcome": r["outcome"], "reason": r["reason"], "decisions": int(r["n"])}
            for r in count_by(conn, "decisions", cycle_id, ["stage", "outcome", "reason"])
        ],
        "messages": [
            {
                "playbook": r["playbook"],
                "channel": r["channel"],
                "status": r["status"],
                "messages": int(r["n"]),
            }
            for r in count_by(conn, "messages", cycle_id, ["playbook", "channel", "status"])
        ],
        "rewards": rewards_granted_on(conn, date.fromisoformat(str(summary["as_of"])), summary["markets"]),
        "worklist": records(worklist.astype("object")),
    }


# The worklist is sorted by value at risk; a specialist works from the top, and a table artifact of a
# whole large portfolio's escalations would be megabytes the UI cannot page through.
WORKLIST_ARTIFACT_ROWS = 1_000


def publish(cycle_id: int, summary: dict[str, Any], tables: dict[str, list[dict[str, Any]]]) -> None:
    """Publish the summary (Markdown with links to the tables) and the tables as Prefect artifacts."""
    names = {
        "segments": "contracts per segment and risk band",
        "decisions": "consent decisions per stage, outcome and reason",
        "messages": "messages per playbook, channel and status",
        "rewards": "rewards decided today per rule, market and status (by grant-rewards)",
        "worklist": "escalations for specialists (customer keys, reasons, value at risk)",
    }
    ui = PREFECT_UI_URL.value()
    links = "\n".join(
        f"- [{names[k]}]({ui.rstrip('/')}/artifacts/key/{TABLE_KEYS[k]})"
        if ui
        else f"- {names[k]}: artifact `{TABLE_KEYS[k]}`"
        for k in TABLE_KEYS
    )
    create_markdown_artifact(
        markdown=markdown(summary) + "\n## Tables\n\n" + links + "\n",
        key="renewal-cycle-summary",
        description=f"Cycle {cycle_id}: {summary['headline']}",
    )
    for name, rows in tables.items():
        shown = rows[:WORKLIST_ARTIFACT_ROWS] if name == "worklist" else rows
        more = (
            f"; the first {len(shown):,} of {len(rows):,} (all: `renewals worklist`)" if shown != rows else ""
        )
        create_table_artifact(
            table=shown or [{"note": "nothing in this cycle"}],
            key=TABLE_KEYS[name],
            description=f"Cycle {cycle_id}: {names[name]}{more}",
        )


@task(name="summarise", **STEP)
def summarise(cycle_id: int, base: dict[str, Any]) -> dict[str, Any]:
    """Close the cycle with its summary, publish it and its tables as artifacts, and return it."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        summary = cycle_summary(conn, base, cycle_id)
        summary["headline"] = headline(summary)
        tables = cycle_tables(conn, cycle_id, summary)
        summary["worklist_rows"] = len(tables["worklist"])
        finish_cycle(conn, cycle_id, summary["status"], summary)
        audit(conn, "cycle.finished", cycle_id=cycle_id, details={"status": summary["status"]})
    publish(cycle_id, summary, tables)
    get_run_logger().info(summary["headline"])
    return summary


def fail_cycle(cycle_id: int, base: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """Mark the cycle failed with the error that stopped it (a file or field, never a person)."""
    rt = get_runtime()
    summary = {**base, "status": "failed", "error": str(error)[:1000]}
    summary["headline"] = headline(summary)
    with rt.engine.begin() as conn:
        finish_cycle(conn, cycle_id, "failed", summary)
        audit(conn, "cycle.failed", cycle_id=cycle_id, details={"error": summary["error"]})
    return summary
