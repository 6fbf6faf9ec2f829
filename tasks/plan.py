"""Plan: the playbook steps due today, the holdout control group and the candidate messages."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection, select

from tasks._prefect import STEP
from tasks.domain.planning import candidate_messages, due_steps, split_holdout
from tasks.domain.playbook import Playbook
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame, update_frame
from tasks.store.repository import insert_holdouts, insert_messages, read_segments, utcnow

OPEN_STATUSES = ("planned", "queued", "rendered")
DRY_PREFIX = "dry"


def _existing(conn: Connection, keys: pd.Series) -> pd.DataFrame:
    m = s.messages
    frames = []
    values = keys.tolist()
    for start in range(0, len(values), 5000):
        chunk = values[start : start + 5000]
        frames.append(
            read_frame(
                conn, select(m.c.message_key, m.c.status, m.c.cycle_id).where(m.c.message_key.in_(chunk))
            )
        )
    if not frames:
        return pd.DataFrame({"message_key": [], "status": [], "cycle_id": []})
    return pd.concat(frames, ignore_index=True)


def plan_cycle(
    conn: Connection, cycle_id: int, playbook: Playbook, as_of: date, markets: list[str], dry_run: bool
) -> dict[str, Any]:
    """Store today's new candidate messages, adopt unfinished ones from earlier runs, expire stale ones."""
    now = utcnow()
    segments = read_segments(conn, cycle_id)
    due = due_steps(segments, playbook, as_of)
    treated, control = split_holdout(due, playbook)
    insert_holdouts(conn, cycle_id, control, playbook.id)
    candidates = candidate_messages(treated, playbook)
    if dry_run:
        candidates["message_key"] = f"{DRY_PREFIX}:{cycle_id}:" + candidates["message_key"]

    existing = _existing(conn, candidates["message_key"])
    known = candidates["message_key"].isin(existing["message_key"])
    fresh = candidates.loc[~known].assign(
        cycle_id=cycle_id, status="planned", attempts=0, planned_at=now, updated_at=now
    )
    inserted = insert_messages(conn, fresh)
    unfinished = existing.loc[existing["status"].isin(OPEN_STATUSES + ("sending",))]
    adopted = update_frame(
        conn,
        s.messages,
        unfinished[["message_key"]].assign(cycle_id=cycle_id, updated_at=now),
        ["message_key"],
    )
    expired = (
        0 if dry_run else _expire_stale(conn, playbook.id, markets, cycle_id, set(candidates["message_key"]))
    )
    return {
        "due_steps": len(due),
        "by_step": {str(k): int(v) for k, v in due["step"].value_counts().sort_index().items()},
        "held_out": len(control),
        "candidates": len(candidates),
        "new": inserted,
        "adopted_unfinished": adopted,
        "already_handled": int(known.sum()) - len(unfinished),
        "expired_stale": expired,
    }


def _expire_stale(
    conn: Connection, playbook_id: str, markets: list[str], cycle_id: int, due_keys: set[str]
) -> int:
    """Mark unsent messages from earlier runs that are no longer due today as expired (never sent)."""
    m = s.messages
    stale = read_frame(
        conn,
        select(m.c.message_key).where(
            m.c.playbook == playbook_id,
            m.c.market.in_(markets),
            m.c.status.in_(OPEN_STATUSES),
            m.c.cycle_id != cycle_id,
            ~m.c.message_key.startswith(f"{DRY_PREFIX}:"),
        ),
    )
    stale = stale.loc[~stale["message_key"].isin(due_keys)]
    return update_frame(
        conn, s.messages, stale.assign(status="expired", updated_at=utcnow()), ["message_key"]
    )


@task(name="plan", **STEP)
def plan(cycle_id: int, playbook_id: str, as_of: date, markets: list[str], dry_run: bool) -> dict[str, Any]:
    """Plan the cycle's messages from the playbook."""
    rt = get_runtime()
    book = rt.playbook(playbook_id)
    with rt.engine.begin() as conn:
        stats = plan_cycle(conn, cycle_id, book, as_of, markets, dry_run)
    get_run_logger().info(
        "planned: %s due, %s held out, %s new, %s adopted, %s already handled",
        stats["due_steps"],
        stats["held_out"],
        stats["new"],
        stats["adopted_unfinished"],
        stats["already_handled"],
    )
    return stats
