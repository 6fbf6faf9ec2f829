"""Plan: the playbook steps due today, the holdout control groups and the candidate messages.

A cycle plans several playbooks in priority order (config/cycle.yaml). When steps of two playbooks
fall due for one customer on one day, only the higher-priority one is planned (dunning before renewal
before win-back); the other stays due for its catch-up days.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection, select

from tasks._prefect import STEP
from tasks.domain.planning import (
    activity_targets,
    candidate_messages,
    coordinate,
    due_steps,
    renewal_targets,
    repayment_targets,
    split_holdout,
)
from tasks.domain.playbook import Playbook, PlaybookKind
from tasks.domain.shards import Shard
from tasks.domain.summary import counts
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame, update_frame
from tasks.store.repository import (
    audit,
    customers_contacted_on,
    insert_holdouts,
    insert_messages,
    last_activity,
    read_lapsed_contracts,
    read_segments,
    read_unpaid_instalments,
    utcnow,
)
from tasks.store.sharding import in_shard
from tasks.store.statistics import refresh_statistics

OPEN_STATUSES = ("planned", "queued", "rendered")
WAITING_STATUSES = (*OPEN_STATUSES, "deferred", "standby")
DRY_PREFIX = "dry"
# The tables plan joins: load and segment have just written them in bulk.
JOINED_TABLES = ("instalments", "segment_assignments", "messages")


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


class Targets:
    """Reads what each kind of playbook works on, once per cycle."""

    def __init__(
        self, conn: Connection, cycle_id: int, as_of: date, markets: list[str], shard: Shard | None = None
    ) -> None:
        self.conn, self.cycle_id, self.as_of, self.markets = conn, cycle_id, as_of, markets
        self.shard = shard
        self.segments = read_segments(conn, cycle_id, shard)
        self._cache: dict[PlaybookKind, pd.DataFrame] = {}

    def for_playbook(self, book: Playbook) -> pd.DataFrame:
        """Return the targets of a playbook's kind."""
        if book.kind not in self._cache:
            self._cache[book.kind] = self._read(book)
        return self._cache[book.kind]

    def _read(self, book: Playbook) -> pd.DataFrame:
        reach = max(abs(step.offset_days) for step in book.steps) + book.catch_up_days + 1
        since = self.as_of - timedelta(days=reach)
        if book.kind is PlaybookKind.RENEWAL:
            return renewal_targets(self.segments)
        if book.kind is PlaybookKind.REPAYMENT:
            return repayment_targets(
                read_unpaid_instalments(self.conn, self.cycle_id, since, self.shard), self.segments
            )
        if book.kind is PlaybookKind.WINBACK:
            return renewal_targets(read_lapsed_contracts(self.conn, self.markets, since, self.shard))
        return activity_targets(
            self.segments, last_activity(self.conn, self.segments["customer_key"].tolist())
        )


def cancel_paid(
    conn: Connection, playbooks: Sequence[Playbook], markets: list[str], shard: Shard | None = None
) -> int:
    """Cancel unsent ladder steps of instalments that are now paid (the billing sync just loaded them)."""
    ladders = [b.id for b in playbooks if b.kind is PlaybookKind.REPAYMENT]
    if not ladders:
        return 0
    m, inst = s.messages, s.instalments
    waiting = read_frame(
        conn,
        select(m.c.message_key, m.c.playbook).where(
            m.c.playbook.in_(ladders),
            m.c.status.in_(WAITING_STATUSES),
            m.c.market.in_(markets),
            in_shard(m.c.customer_key, shard),
        ),
    )
    if waiting.empty:
        return 0
    waiting["instalment_key"] = waiting["message_key"].str.split(":").str[1]
    paid = read_frame(
        conn,
        select(inst.c.instalment_key).where(
            inst.c.instalment_key.in_(waiting["instalment_key"].unique().tolist()),
            inst.c.paid_date.is_not(None),
        ),
    )
    cancel = waiting.loc[waiting["instalment_key"].isin(paid["instalment_key"]), ["message_key"]]
    done = update_frame(
        conn, s.messages, cancel.assign(status="cancelled", updated_at=utcnow()), ["message_key"]
    )
    if done:
        audit(conn, "ladder.cancelled_on_payment", details={"messages": done})
    return done


def plan_playbook(
    conn: Connection,
    cycle_id: int,
    book: Playbook,
    targets: pd.DataFrame,
    as_of: date,
    markets: list[str],
    dry_run: bool,
    busy: set[str],
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Plan one playbook: new candidates stored, unfinished ones adopted, stale ones expired."""
    now = utcnow()
    due = due_steps(targets, book, as_of)
    due, superseded = coordinate(due, busy)
    treated, control = split_holdout(due, book)
    insert_holdouts(conn, cycle_id, control, book.id)
    candidates = candidate_messages(treated, book)
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
        0
        if dry_run
        else _expire_stale(conn, book.id, markets, cycle_id, set(candidates["message_key"]), shard)
    )
    # Only a message that goes out today makes the customer busy, not one already handled on an earlier day.
    going = set(fresh["message_key"]) | set(unfinished["message_key"])
    busy.update(candidates.loc[candidates["message_key"].isin(going), "customer_key"])
    return {
        "due_steps": len(due),
        "by_step": counts(due["step"]),
        "held_out": len(control),
        "superseded_same_day": len(superseded),
        "candidates": len(candidates),
        "new": inserted,
        "adopted_unfinished": adopted,
        "already_handled": int(known.sum()) - len(unfinished),
        "expired_stale": expired,
    }


def plan_cycle(
    conn: Connection,
    cycle_id: int,
    playbooks: Sequence[Playbook] | Playbook,
    as_of: date,
    markets: list[str],
    dry_run: bool,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Plan every playbook of the cycle (for one shard's customers) in priority order; return counts."""
    books = [playbooks] if isinstance(playbooks, Playbook) else list(playbooks)
    refresh_statistics(conn, JOINED_TABLES)
    cancelled = 0 if dry_run else cancel_paid(conn, books, markets, shard)
    targets = Targets(conn, cycle_id, as_of, markets, shard)
    earlier = customers_contacted_on(conn, as_of, markets, shard)
    per_book: dict[str, dict[str, Any]] = {}
    busy_by_higher: set[str] = set()
    for book in books:
        # Customers an earlier run today already contacted through a higher-priority playbook count too.
        higher = {b.id for b in books[: books.index(book)]}
        busy = busy_by_higher | set(earlier.loc[earlier["playbook"].isin(higher), "customer_key"])
        per_book[book.id] = plan_playbook(
            conn, cycle_id, book, targets.for_playbook(book), as_of, markets, dry_run, busy, shard
        )
        busy_by_higher = busy
    totals: dict[str, Any] = {
        key: sum(stats[key] for stats in per_book.values())
        for key in (
            "due_steps",
            "held_out",
            "superseded_same_day",
            "candidates",
            "new",
            "adopted_unfinished",
            "already_handled",
            "expired_stale",
        )
    }
    totals["by_step"] = {
        f"{pid}:{step}": n for pid, st in per_book.items() for step, n in st["by_step"].items()
    }
    totals["cancelled_paid"] = cancelled
    totals["by_playbook"] = per_book
    return totals


def _expire_stale(
    conn: Connection,
    playbook_id: str,
    markets: list[str],
    cycle_id: int,
    due_keys: set[str],
    shard: Shard | None = None,
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
            # Another shard's messages are not in this shard's due keys: they are that shard's to expire.
            in_shard(m.c.customer_key, shard),
        ),
    )
    stale = stale.loc[~stale["message_key"].isin(due_keys)]
    return update_frame(
        conn, s.messages, stale.assign(status="expired", updated_at=utcnow()), ["message_key"]
    )


@task(name="plan", **STEP)
def plan(
    cycle_id: int,
    playbook_ids: list[str],
    as_of: date,
    markets: list[str],
    dry_run: bool,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Plan the cycle's messages from its playbooks, in priority order."""
    rt = get_runtime()
    books = [rt.playbook(pid) for pid in playbook_ids]
    with rt.engine.begin() as conn:
        stats = plan_cycle(conn, cycle_id, books, as_of, markets, dry_run, shard)
    get_run_logger().info(
        "planned: %s due, %s held out, %s superseded, %s new, %s adopted, %s already handled, %s cancelled",
        stats["due_steps"],
        stats["held_out"],
        stats["superseded_same_day"],
        stats["new"],
        stats["adopted_unfinished"],
        stats["already_handled"],
        stats["cancelled_paid"],
    )
    return stats
