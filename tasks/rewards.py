"""Rewards: claw back, expire, grant within budget, fulfil, and tell the customer through the normal dispatch.

A reward row with its unique key is written before anything is fulfilled, in the same transaction that
raises the budget's `spent` under a row lock, so reruns grant nothing twice and two concurrent runs
never overspend. Notifications are ordinary message rows (playbook `rewards`) that go through the
consent gate, are rendered here with the reward's own context, and are sent by the normal dispatch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pandas as pd
from babel.numbers import format_decimal
from jinja2 import TemplateError
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from sqlalchemy import Connection, Engine, and_, false, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from config.rewards_loader import RewardConfig, load_reward_rules
from tasks._prefect import IO_RETRIES, STEP
from tasks.channels.base import Sender
from tasks.channels.rendering import Renderer, TemplateMissing, babel_locale, format_long_date, format_money
from tasks.dispatch import dispatch_cycle
from tasks.domain.frames import records
from tasks.domain.markets import Market
from tasks.domain.rewards import (
    CLAWBACK_FROM,
    Fulfilment,
    Lot,
    RewardInputs,
    RewardKind,
    RewardRule,
    RewardStatus,
    Trigger,
    claw_back_points,
    clawbacks,
    decide,
    expiring,
    pick_channel,
    priced,
    qualifying_events,
    redeem,
    summary,
    to_minor,
)
from tasks.domain.shards import Shard
from tasks.fulfilment import Event, Fulfiller, Grant, Outcome, Result
from tasks.fulfilment.points import Credit, PointsFulfiller
from tasks.fulfilment.vouchers import VoucherFulfiller, read_voucher_csv
from tasks.fulfilment.webhook import Unconfigured, WebhookFulfiller
from tasks.gate import gate_cycle
from tasks.render import link_token
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import insert_new, read_frame, update_frame
from tasks.store.repository import audit, create_cycle, finish_cycle, insert_ignore, set_status, utcnow
from tasks.store.sharding import in_shard

REWARDS_PLAYBOOK = "rewards"
NOTIFY_STEP = "reward-granted"
NOTIFY_TEMPLATE = "reward_earned"
CHUNK = 5000
OPEN_MESSAGE = ("planned", "queued", "deferred", "standby")


class BudgetExceeded(RuntimeError):
    """A grant would have raised a budget above its limit; the transaction is rolled back."""


# --- wiring ----------------------------------------------------------------------------------------


@dataclass
class RewardsContext:
    """What the rewards use cases need: store, rules, markets, fulfillers, and the send path."""

    engine: Engine
    config: RewardConfig
    markets: Mapping[str, Market]
    fulfillers: Mapping[Fulfilment, Fulfiller]
    hash_key: bytes
    renderer: Renderer | None = None
    senders: Mapping[str, Sender] = field(default_factory=dict)
    company: str = "Renewals"
    link_base: str = "https://example.invalid/renew"
    unsubscribe_base: str = "https://example.invalid/unsubscribe"
    dispatch_batch_size: int = 1000
    dispatch_options: dict[str, Any] = field(default_factory=dict)

    def rules_for(self, markets: Sequence[str]) -> list[RewardRule]:
        """Return the rules that run in any of `markets`."""
        return [r for r in self.config.rules if set(r.markets) & set(markets)]


def message_key(reward_key: str) -> str:
    """Return the idempotency key of a reward's notification: one message per reward."""
    return f"{REWARDS_PLAYBOOK}:{reward_key}"


def _chunks(values: Sequence[str], size: int = CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _write_lock(conn: Connection) -> None:
    """Start the transaction with a write on SQLite.

    pysqlite only opens the transaction at the first write, so a read before it could see data another
    writer changes before ours begins; a write first takes SQLite's single writer lock at once.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(update(s.reward_budgets).where(false()).values(spent=s.reward_budgets.c.spent))


def _lock_customers(conn: Connection, customer_keys: Iterable[str]) -> None:
    """Serialise points movements per customer (row locks in key order on PostgreSQL)."""
    _write_lock(conn)
    if conn.dialect.name != "postgresql":
        return
    keys = sorted(set(customer_keys))
    for chunk in _chunks(keys):
        conn.execute(
            select(s.customers.c.customer_key)
            .where(s.customers.c.customer_key.in_(chunk))
            .order_by(s.customers.c.customer_key)
            .with_for_update()
        ).all()


# --- reading the store -----------------------------------------------------------------------------


def read_inputs(conn: Connection, markets: Sequence[str], rules: Sequence[RewardRule]) -> RewardInputs:
    """Return customers (with their latest contract), contracts, instalments and activity of `markets`."""
    cust, ct, inst, act = s.customers, s.contracts, s.instalments, s.activity
    codes = list(markets)
    customers = read_frame(
        conn,
        select(cust.c.customer_key, cust.c.market, cust.c.customer_since).where(
            cust.c.market.in_(codes), cust.c.erased_at.is_(None)
        ),
    )
    market_of = customers.set_index("customer_key")["market"]
    contracts = read_frame(
        conn,
        select(ct.c.contract_key, ct.c.customer_key, ct.c.status, ct.c.term_end, ct.c.renewed_at)
        .join(cust, cust.c.customer_key == ct.c.customer_key)
        .where(cust.c.market.in_(codes), cust.c.erased_at.is_(None)),
    )
    contracts["market"] = contracts["customer_key"].map(market_of)
    instalments = read_frame(
        conn,
        select(
            inst.c.instalment_key, inst.c.contract_key, inst.c.due_date, inst.c.paid_date, ct.c.customer_key
        )
        .join(ct, ct.c.contract_key == inst.c.contract_key)
        .join(cust, cust.c.customer_key == ct.c.customer_key)
        .where(cust.c.market.in_(codes), cust.c.erased_at.is_(None)),
    )
    instalments["market"] = instalments["customer_key"].map(market_of)
    activity = read_frame(
        conn,
        select(act.c.customer_key, act.c.month, act.c.transactions)
        .join(cust, cust.c.customer_key == act.c.customer_key)
        .where(cust.c.market.in_(codes), cust.c.erased_at.is_(None)),
    )
    latest = (
        contracts.sort_values(["term_end", "contract_key"], ascending=False, kind="stable")
        .drop_duplicates("customer_key")
        .set_index("customer_key")["contract_key"]
    )
    customers["contract_key"] = customers["customer_key"].map(latest).astype("object")
    customers["contract_key"] = customers["contract_key"].where(customers["contract_key"].notna(), None)
    return RewardInputs(customers, contracts, instalments, activity, _used_instalments(conn, rules, codes))


def _used_instalments(
    conn: Connection, rules: Sequence[RewardRule], markets: list[str]
) -> dict[str, frozenset[str]]:
    """Return, per streak rule, the instalments its rewards counted already (clawed-back ones excepted)."""
    streak = [r.id for r in rules if r.trigger is Trigger.ON_TIME_STREAK]
    if not streak:
        return {}
    r = s.rewards
    rows = read_frame(
        conn,
        select(r.c.rule, r.c.evidence).where(
            r.c.rule.in_(streak), r.c.market.in_(markets), r.c.status != RewardStatus.CLAWED_BACK.value
        ),
    )
    used: dict[str, set[str]] = {rule: set() for rule in streak}
    for rule, evidence in zip(rows["rule"], rows["evidence"], strict=True):
        used[str(rule)].update(str(k) for k in evidence or [])
    return {rule: frozenset(keys) for rule, keys in used.items()}


def _existing_rewards(conn: Connection, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(
            str(row[0])
            for row in conn.execute(select(s.rewards.c.reward_key).where(s.rewards.c.reward_key.in_(chunk)))
        )
    return found


def _reachability(conn: Connection, customer_keys: Sequence[str]) -> pd.DataFrame:
    """Return whether each customer has an email address and a phone number (not the addresses)."""
    cust = s.customers
    frames = [
        read_frame(
            conn,
            select(
                cust.c.customer_key,
                cust.c.email.is_not(None).label("has_email"),
                cust.c.phone_e164.is_not(None).label("has_phone"),
            ).where(cust.c.customer_key.in_(chunk)),
        )
        for chunk in _chunks(list(dict.fromkeys(customer_keys)))
    ]
    if not frames:
        return pd.DataFrame(columns=["customer_key", "has_email", "has_phone"])
    return pd.concat(frames, ignore_index=True)


def _lots(conn: Connection, customer_keys: Sequence[str]) -> dict[str, list[Lot]]:
    """Return each customer's points lots with what is left of them."""
    r, p = s.rewards, s.points_ledger
    out: dict[str, list[Lot]] = {}
    for chunk in _chunks(sorted(set(customer_keys))):
        rows = conn.execute(
            select(r.c.reward_key, r.c.customer_key, r.c.granted_at, r.c.expires_on, func.sum(p.c.points))
            .join(p, p.c.lot_key == r.c.reward_key)
            .where(r.c.customer_key.in_(chunk), r.c.kind == RewardKind.POINTS.value)
            .group_by(r.c.reward_key, r.c.customer_key, r.c.granted_at, r.c.expires_on)
        ).all()
        for key, customer, granted_at, expires_on, remaining in rows:
            granted_on = pd.Timestamp(granted_at).date()
            out.setdefault(str(customer), []).append(
                Lot(str(key), granted_on, expires_on, int(remaining or 0))
            )
    return out


# --- clawback --------------------------------------------------------------------------------------


def claw_back_rewards(
    ctx: RewardsContext, as_of: date, markets: Sequence[str], now: datetime, dry_run: bool
) -> dict[str, Any]:
    """Take back rewards whose renewal was undone or whose streak payment was reversed."""
    r = s.rewards
    with ctx.engine.connect() as conn:
        live = read_frame(
            conn,
            select(r.c.reward_key, r.c.customer_key, r.c.trigger, r.c.contract_key, r.c.evidence).where(
                r.c.market.in_(list(markets)), r.c.status.in_([st.value for st in CLAWBACK_FROM])
            ),
        )
        if live.empty:
            return {"clawed_back": 0, "by_reason": {}}
        inputs = read_inputs(conn, markets, [])
    found = clawbacks(live, inputs.contracts, inputs.instalments)
    stats: dict[str, Any] = {"clawed_back": len(found), "by_reason": summary(found["reason"])}
    if dry_run or found.empty:
        return stats
    found = found.merge(live[["reward_key", "customer_key"]], on="reward_key")
    reversed_points = 0
    shortfall = 0
    with ctx.engine.begin() as conn:
        _lock_customers(conn, found["customer_key"].astype(str))
        # Re-read under the lock: a concurrent run may have clawed some of them back already.
        still = _with_status(conn, found["reward_key"].astype(str).tolist(), CLAWBACK_FROM)
        found = found.loc[found["reward_key"].isin(still)]
        stats.update(clawed_back=len(found), by_reason=summary(found["reason"]))
        update_frame(
            conn,
            r,
            pd.DataFrame(
                {
                    "reward_key": found["reward_key"],
                    "status": RewardStatus.CLAWED_BACK.value,
                    "clawback_reason": found["reason"],
                    "clawed_back_at": now,
                    "updated_at": now,
                }
            ),
            ["reward_key"],
            only_where_in=("status", tuple(st.value for st in CLAWBACK_FROM)),
        )
        earned = _earned_points(conn, found["reward_key"].astype(str).tolist())
        lots = _lots(conn, list(found["customer_key"].astype(str)))
        entries = []
        for key, customer in zip(
            found["reward_key"].astype(str), found["customer_key"].astype(str), strict=True
        ):
            points = earned.get(key, 0)
            if points <= 0:
                continue
            taken, short = claw_back_points(lots.get(customer, []), key, points, as_of)
            shortfall += short
            for lot_key, n in taken.items():
                entries.append(_entry(customer, lot_key, "clawback", -n, key, now))
                reversed_points += n
            lots[customer] = [
                Lot(lot.lot_key, lot.granted_on, lot.expires_on, lot.remaining - taken.get(lot.lot_key, 0))
                for lot in lots.get(customer, [])
            ]
        if entries:
            insert_new(conn, s.points_ledger, pd.DataFrame(entries), ["lot_key", "kind", "reference"])
        void = conn.execute(
            update(s.messages)
            .where(
                s.messages.c.message_key.in_([message_key(k) for k in found["reward_key"]]),
                s.messages.c.status.in_(OPEN_MESSAGE),
            )
            .values(
                status="expired", error_code="REWARD_VOID", error_detail="reward clawed back", updated_at=now
            )
        ).rowcount
        stats.update(
            points_reversed=reversed_points, points_shortfall=shortfall, notifications_cancelled=int(void)
        )
        audit(conn, "rewards.clawed_back", details=stats)
    return stats


def _with_status(conn: Connection, keys: Sequence[str], statuses: Iterable[RewardStatus]) -> set[str]:
    r = s.rewards
    wanted = [st.value for st in statuses]
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(
            str(row[0])
            for row in conn.execute(
                select(r.c.reward_key).where(r.c.reward_key.in_(chunk), r.c.status.in_(wanted))
            )
        )
    return found


def _earned_points(conn: Connection, lot_keys: Sequence[str]) -> dict[str, int]:
    p = s.points_ledger
    out: dict[str, int] = {}
    for chunk in _chunks(lot_keys):
        rows = conn.execute(
            select(p.c.lot_key, func.sum(p.c.points))
            .where(p.c.lot_key.in_(chunk), p.c.kind == "earn")
            .group_by(p.c.lot_key)
        ).all()
        out.update({str(k): int(v or 0) for k, v in rows})
    return out


def _entry(
    customer: str, lot_key: str, kind: str, points: int, reference: str, now: datetime
) -> dict[str, Any]:
    return {
        "customer_key": customer,
        "lot_key": lot_key,
        "kind": kind,
        "points": points,
        "reference": reference,
        "created_at": now,
    }


# --- expiry ----------------------------------------------------------------------------------------


def expire_rewards(
    ctx: RewardsContext, as_of: date, markets: Sequence[str], now: datetime, dry_run: bool
) -> dict[str, Any]:
    """Expire points left in lots past their last day (oldest first) and unused vouchers past theirs."""
    r = s.rewards
    with ctx.engine.connect() as conn:
        due = read_frame(
            conn,
            select(r.c.reward_key, r.c.customer_key, r.c.kind, r.c.status).where(
                r.c.market.in_(list(markets)),
                r.c.expires_on < as_of,
                r.c.status.in_([RewardStatus.GRANTED.value, RewardStatus.FULFILLED.value]),
            ),
        )
    if due.empty:
        return {"expired": 0, "points_expired": 0}
    points = due.loc[
        (due["kind"] == RewardKind.POINTS.value) & (due["status"] == RewardStatus.FULFILLED.value)
    ]
    other = due.loc[~due["reward_key"].isin(points["reward_key"])]
    if dry_run:
        return {"expired": len(due), "points_expired": None}
    expired_points = 0
    with ctx.engine.begin() as conn:
        _lock_customers(conn, points["customer_key"].astype(str))
        lots = _lots(conn, points["customer_key"].astype(str).tolist())
        wanted = set(points["reward_key"].astype(str))
        entries = []
        for customer, own in lots.items():
            for lot_key, n in expiring([lot for lot in own if lot.lot_key in wanted], as_of).items():
                entries.append(_entry(customer, lot_key, "expire", -n, lot_key, now))
                expired_points += n
        if entries:
            insert_new(conn, s.points_ledger, pd.DataFrame(entries), ["lot_key", "kind", "reference"])
        redeemed = _redeemed_lots(conn, sorted(wanted))
        final = pd.DataFrame({"reward_key": sorted(wanted)})
        final["status"] = final["reward_key"].map(
            lambda k: RewardStatus.REDEEMED.value if k in redeemed else RewardStatus.EXPIRED.value
        )
        rows = pd.concat(
            [final, pd.DataFrame({"reward_key": other["reward_key"], "status": RewardStatus.EXPIRED.value})],
            ignore_index=True,
        ).assign(expired_at=now, updated_at=now)
        changed = update_frame(
            conn,
            r,
            rows,
            ["reward_key"],
            only_where_in=("status", (RewardStatus.GRANTED.value, RewardStatus.FULFILLED.value)),
        )
        stats = {"expired": int(changed), "points_expired": expired_points}
        audit(conn, "rewards.expired", details=stats)
    return stats


def _redeemed_lots(conn: Connection, lot_keys: Sequence[str]) -> set[str]:
    p = s.points_ledger
    found: set[str] = set()
    for chunk in _chunks(lot_keys):
        found.update(
            str(row[0])
            for row in conn.execute(
                select(p.c.lot_key).where(p.c.lot_key.in_(chunk), p.c.kind == "redeem").distinct()
            )
        )
    return found


# --- grant -----------------------------------------------------------------------------------------

REWARD_COLUMNS = [
    "reward_key",
    "rule",
    "rule_version",
    "trigger",
    "customer_key",
    "market",
    "contract_key",
    "event_key",
    "event_date",
    "evidence",
    "kind",
    "fulfilment",
    "points",
    "value",
    "currency",
    "cost_eur",
    "status",
    "budget_month",
    "granted_at",
    "expires_on",
    "fulfil_attempts",
    "message_key",
    "cycle_id",
    "run_id",
    "updated_at",
]


def grant_rewards(
    ctx: RewardsContext,
    cycle_id: int,
    as_of: date,
    markets: Sequence[str],
    now: datetime,
    dry_run: bool,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Grant every qualifying event once: holdout, then budget per rule, market and month, oldest first."""
    run = run_id or uuid.uuid4().hex
    rules = ctx.rules_for(markets)
    with ctx.engine.connect() as conn:
        inputs = read_inputs(conn, markets, rules)
    currencies = {code: m.currency for code, m in ctx.markets.items()}
    month = as_of.replace(day=1)
    by_rule: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {"qualifying": 0, "already_decided": 0}
    for rule in rules:
        events = qualifying_events(rule, inputs, as_of)
        events = events.loc[events["market"].isin(markets)]
        counted: dict[str, int] = {"qualifying": len(events)}
        if events.empty:
            by_rule[rule.id] = counted
            continue
        events = priced(events, rule, currencies, ctx.config.fx)
        for market, group in events.groupby("market", sort=True):
            done = _grant_group(
                ctx,
                rule,
                str(market),
                group.reset_index(drop=True),
                cycle_id,
                as_of,
                month,
                now,
                run,
                dry_run,
            )
            for key, value in done.items():
                counted[key] = counted.get(key, 0) + value
        by_rule[rule.id] = counted
        for key, value in counted.items():
            totals[key] = totals.get(key, 0) + value
    if not dry_run:
        with ctx.engine.begin() as conn:
            audit(conn, "rewards.granted", cycle_id=cycle_id, details={"run_id": run, "by_rule": by_rule})
    return {**totals, "by_rule": by_rule, "run_id": run}


def _grant_group(
    ctx: RewardsContext,
    rule: RewardRule,
    market: str,
    events: pd.DataFrame,
    cycle_id: int,
    as_of: date,
    month: date,
    now: datetime,
    run: str,
    dry_run: bool,
) -> dict[str, int]:
    """Decide and record one rule's events in one market in a single transaction holding the budget lock."""
    b = s.reward_budgets
    limit = rule.budget[market]
    currency = str(ctx.markets[market].currency)
    where = and_(b.c.rule == rule.id, b.c.market == market, b.c.month == month)
    with ctx.engine.begin() as conn:
        if dry_run:
            row = conn.execute(select(b.c.spent).where(where)).first()
            spent = Decimal(str(row[0])) if row is not None else Decimal(0)
        else:
            # The insert is also the first write, which takes SQLite's writer lock for the whole transaction.
            insert_ignore(
                conn,
                b,
                {
                    "rule": rule.id,
                    "market": market,
                    "month": month,
                    "currency": currency,
                    "limit_amount": limit,
                    "spent": Decimal(0),
                    "updated_at": now,
                },
            )
            locked = conn.execute(select(b.c.spent, b.c.limit_amount).where(where).with_for_update()).one()
            spent = Decimal(str(locked.spent))
            if Decimal(str(locked.limit_amount)) != limit:
                conn.execute(update(b).where(where).values(limit_amount=limit, updated_at=now))
        known = _existing_rewards(conn, events["reward_key"].astype(str).tolist())
        fresh = events.loc[~events["reward_key"].isin(known)].reset_index(drop=True)
        counts = {"already_decided": len(known)}
        if fresh.empty:
            return counts
        remaining = max(to_minor(limit) - to_minor(spent), 0)
        status = decide(fresh, rule, remaining)
        counts.update(summary(status))
        if dry_run:
            return counts
        rows = _reward_rows(conn, fresh, status, rule, cycle_id, as_of, month, now, run)
        insert_new(conn, s.rewards, rows[REWARD_COLUMNS], ["reward_key"])
        mine = read_frame(
            conn,
            select(s.rewards.c.reward_key, s.rewards.c.status, s.rewards.c.value).where(
                s.rewards.c.run_id == run, s.rewards.c.rule == rule.id, s.rewards.c.market == market
            ),
        )
        granted = mine.loc[mine["status"] == RewardStatus.GRANTED.value]
        delta = sum((Decimal(str(v)) for v in granted["value"]), Decimal(0))
        over = int((mine["status"] == RewardStatus.OVER_BUDGET.value).sum())
        # Rounded to the cent: SQLite keeps NUMERIC as floating point, where 7.99 * 3 > 23.97.
        new_spent = func.round(b.c.spent + delta, 2)
        raised = conn.execute(
            update(b)
            .where(where, new_spent <= b.c.limit_amount)
            .values(
                spent=new_spent,
                granted=b.c.granted + len(granted),
                over_budget=b.c.over_budget + over,
                updated_at=now,
            )
        ).rowcount
        if raised != 1:
            raise BudgetExceeded(
                f"rule {rule.id} in {market}: {delta} {currency} would exceed the {month:%Y-%m} budget"
            )
        notify = rows.loc[rows["reward_key"].isin(granted["reward_key"]) & rows["message_key"].notna()]
        counts["notifications"] = insert_new(
            conn, s.messages, _message_rows(notify, cycle_id, as_of, now), ["message_key"]
        )
        counts["new"] = len(mine)
    return counts


def _reward_rows(
    conn: Connection,
    fresh: pd.DataFrame,
    status: pd.Series,
    rule: RewardRule,
    cycle_id: int,
    as_of: date,
    month: date,
    now: datetime,
    run: str,
) -> pd.DataFrame:
    granted = status == RewardStatus.GRANTED.value
    rows = fresh.assign(
        status=status,
        rule_version=rule.version,
        budget_month=month,
        granted_at=now,
        fulfil_attempts=0,
        cycle_id=cycle_id,
        run_id=run,
        updated_at=now,
    )
    rows["value"] = rows["value"].map(float)
    rows["cost_eur"] = [float(c) if g else 0.0 for c, g in zip(rows["cost_eur"], granted, strict=True)]
    rows["expires_on"] = [rule.expires_on(as_of) if g else None for g in granted]
    reach = _reachability(conn, rows.loc[granted, "customer_key"].astype(str).tolist())
    merged = rows[["customer_key"]].merge(reach, on="customer_key", how="left")
    channel = pick_channel(merged["has_email"], merged["has_phone"], rule.notify)
    rows["channel"] = channel.where(granted, None).to_numpy()
    rows["message_key"] = [
        message_key(k) if c is not None and not pd.isna(c) else None
        for k, c in zip(rows["reward_key"], rows["channel"], strict=True)
    ]
    return rows[[*REWARD_COLUMNS, "channel"]]


def _message_rows(notify: pd.DataFrame, cycle_id: int, as_of: date, now: datetime) -> pd.DataFrame:
    """Return the planned notification messages of newly granted rewards (one per reward)."""
    return pd.DataFrame(
        {
            "message_key": notify["message_key"],
            "cycle_id": cycle_id,
            "playbook": REWARDS_PLAYBOOK,
            "contract_key": notify["contract_key"].fillna(""),
            "customer_key": notify["customer_key"],
            "market": notify["market"],
            "step": NOTIFY_STEP,
            "channel": notify["channel"],
            "rank": 0,
            "send_rule": "all",
            "template": NOTIFY_TEMPLATE,
            "purpose": "service",
            "anchor_date": as_of,
            "has_offer": False,
            "recipient": "customer",
            "status": "planned",
            "attempts": 0,
            "planned_at": now,
            "updated_at": now,
        }
    )


# --- fulfilment ------------------------------------------------------------------------------------


def _grants(frame: pd.DataFrame, event: Event) -> list[Grant]:
    return [
        Grant(
            reward_key=str(r["reward_key"]),
            customer_key=str(r["customer_key"]),
            market=str(r["market"]),
            rule=str(r["rule"]),
            kind=str(r["kind"]),
            value=Decimal(str(r["value"])).quantize(Decimal("0.01")),
            currency=str(r["currency"]),
            points=int(r["points"]) if r["points"] is not None else None,
            granted_on=pd.Timestamp(r["granted_at"]).date(),
            expires_on=pd.Timestamp(r["expires_on"]).date() if r["expires_on"] is not None else None,
            event=event,
            reason=r.get("clawback_reason"),
        )
        for r in records(frame)
    ]


def fulfil_rewards(
    ctx: RewardsContext, markets: Sequence[str], now: datetime, batch: int = 500
) -> dict[str, Any]:
    """Fulfil granted rewards through their adapters; report clawbacks of webhook rewards to the platform."""
    r = s.rewards
    columns = [
        r.c.reward_key,
        r.c.customer_key,
        r.c.market,
        r.c.rule,
        r.c.kind,
        r.c.fulfilment,
        r.c.value,
        r.c.currency,
        r.c.points,
        r.c.granted_at,
        r.c.expires_on,
        r.c.clawback_reason,
    ]
    with ctx.engine.connect() as conn:
        todo = read_frame(
            conn,
            select(*columns)
            .where(r.c.market.in_(list(markets)), r.c.status == RewardStatus.GRANTED.value)
            .order_by(r.c.granted_at, r.c.reward_key),
        )
        void = read_frame(
            conn,
            select(*columns).where(
                r.c.market.in_(list(markets)),
                r.c.status == RewardStatus.CLAWED_BACK.value,
                r.c.fulfilment == Fulfilment.WEBHOOK.value,
                r.c.fulfilled_at.is_not(None),
                r.c.clawback_synced_at.is_(None),
            ),
        )
    tally: dict[str, int] = {}
    for kind, group in todo.groupby("fulfilment", sort=True):
        fulfiller = ctx.fulfillers.get(Fulfilment(str(kind)))
        for start in range(0, len(group), batch):
            part = group.iloc[start : start + batch]
            results = (
                fulfiller.fulfil(_grants(part, Event.GRANTED))
                if fulfiller is not None
                else [
                    Result(str(k), Outcome.RETRY, error=f"no {kind} fulfiller configured", attempts=0)
                    for k in part["reward_key"]
                ]
            )
            _settle(ctx.engine, results, now)
            for result in results:
                key = f"{kind}:{result.outcome.value}"
                tally[key] = tally.get(key, 0) + 1
    synced = 0
    if not void.empty and Fulfilment.WEBHOOK in ctx.fulfillers:
        results = ctx.fulfillers[Fulfilment.WEBHOOK].fulfil(_grants(void, Event.CLAWED_BACK))
        done = [x.reward_key for x in results if x.outcome is Outcome.FULFILLED]
        if done:
            with ctx.engine.begin() as conn:
                conn.execute(
                    update(r).where(r.c.reward_key.in_(done)).values(clawback_synced_at=now, updated_at=now)
                )
        synced = len(done)
    stats = {"by_outcome": dict(sorted(tally.items())), "clawbacks_reported": synced}
    with ctx.engine.begin() as conn:
        audit(conn, "rewards.fulfilled", details=stats)
    return stats


def _settle(engine: Engine, results: Sequence[Result], now: datetime) -> None:
    """Store fulfilment outcomes; only a still-granted reward moves (a clawback in between wins)."""
    if not results:
        return
    rows = []
    for x in results:
        row: dict[str, Any] = {"reward_key": x.reward_key, "fulfil_error": x.error, "updated_at": now}
        if x.outcome is Outcome.FULFILLED:
            row.update(status=RewardStatus.FULFILLED.value, fulfilled_at=now, fulfilment_ref=x.reference)
        elif x.outcome is Outcome.FAILED:
            row.update(status=RewardStatus.FAILED.value, fulfilled_at=None, fulfilment_ref=None)
        else:
            row.update(status=RewardStatus.GRANTED.value, fulfilled_at=None, fulfilment_ref=None)
        rows.append(row)
    frame = pd.DataFrame(rows)
    r = s.rewards
    with engine.begin() as conn:
        update_frame(conn, r, frame, ["reward_key"], only_where_in=("status", (RewardStatus.GRANTED.value,)))
        done = [x.reward_key for x in results if x.outcome is Outcome.FULFILLED]
        if done:
            # Clawed back while the platform was booking it: record that it was booked, so the clawback is
            # reported to the platform on the next run.
            conn.execute(
                update(r)
                .where(r.c.reward_key.in_(done), r.c.status == RewardStatus.CLAWED_BACK.value)
                .where(r.c.fulfilment == Fulfilment.WEBHOOK.value, r.c.fulfilled_at.is_(None))
                .values(fulfilled_at=now)
            )
        attempts = {x.reward_key: x.attempts for x in results if x.attempts}
        for value in sorted(set(attempts.values())):
            keys = [k for k, n in attempts.items() if n == value]
            conn.execute(
                update(r).where(r.c.reward_key.in_(keys)).values(fulfil_attempts=r.c.fulfil_attempts + value)
            )


class SqlPointsLedger:
    """The points ledger in the store (implements tasks.fulfilment.points.PointsLedger)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def credit(self, credits: Sequence[Credit]) -> None:
        """Add each lot's earn entry while its reward is still granted; an existing entry is left alone."""
        now = self.clock()
        with self.engine.begin() as conn:
            _lock_customers(conn, [c.customer_key for c in credits])
            # Under the customer lock, so a reward clawed back meanwhile is never credited.
            live = _with_status(conn, [c.lot_key for c in credits], [RewardStatus.GRANTED])
            rows = [_entry(c.customer_key, c.lot_key, "earn", c.points, c.lot_key, now) for c in credits]
            frame = pd.DataFrame([row for row in rows if row["lot_key"] in live])
            if len(frame):
                insert_new(conn, s.points_ledger, frame, ["lot_key", "kind", "reference"])


class SqlVoucherPool:
    """The imported voucher codes in the store (implements tasks.fulfilment.vouchers.VoucherPool)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow, tries: int = 5) -> None:
        self.engine = engine
        self.clock = clock
        self.tries = tries

    def issue(self, reward_key: str, rule: str, market: str, today: date) -> str | None:
        """Return the reward's code, taking a free valid one (FOR UPDATE SKIP LOCKED) if it has none yet."""
        for _ in range(self.tries):
            try:
                with self.engine.begin() as conn:
                    code, free = self._issue(conn, reward_key, rule, market, today)
            except IntegrityError:
                # Another issuer gave this reward a code first (reward_key is unique): read that one next.
                continue
            if code is not None or not free:
                return code
        return None

    def _issue(
        self, conn: Connection, reward_key: str, rule: str, market: str, today: date
    ) -> tuple[str | None, int]:
        v = s.voucher_codes
        held = conn.execute(select(v.c.code).where(v.c.reward_key == reward_key)).scalar()
        if held is not None:
            return str(held), 1
        pick = (
            select(v.c.code)
            .where(
                v.c.rule == rule,
                v.c.market == market,
                v.c.reward_key.is_(None),
                (v.c.valid_until.is_(None)) | (v.c.valid_until >= today),
            )
            .order_by(v.c.code)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        issued = conn.execute(
            update(v)
            .where(v.c.code == pick.scalar_subquery(), v.c.reward_key.is_(None))
            .values(reward_key=reward_key, issued_at=self.clock())
            .returning(v.c.code)
        ).scalar()
        if issued is not None:
            return str(issued), 1
        # Nothing taken: the pool is empty, or every free code was locked by another issuer right now.
        free = conn.execute(
            select(func.count()).where(
                v.c.rule == rule,
                v.c.market == market,
                v.c.reward_key.is_(None),
                (v.c.valid_until.is_(None)) | (v.c.valid_until >= today),
            )
        ).scalar_one()
        return None, int(free)


def import_vouchers(path: Path, engine: Engine | None = None, now: datetime | None = None) -> dict[str, int]:
    """Import voucher codes from a CSV file (code, rule, market[, valid_until]); known codes are skipped."""
    codes = read_voucher_csv(path)
    target = engine or get_runtime().engine
    moment = now or utcnow()
    frame = pd.DataFrame(
        {
            "code": [c.code for c in codes],
            "rule": [c.rule for c in codes],
            "market": [c.market for c in codes],
            "valid_until": [c.valid_until for c in codes],
            "source": path.name,
            "imported_at": moment,
        }
    )
    with target.begin() as conn:
        added = insert_new(conn, s.voucher_codes, frame, ["code"])
        stats = {"read": len(codes), "imported": int(added), "already_known": len(codes) - int(added)}
        audit(conn, "rewards.vouchers_imported", subject_type="file", subject_key=path.name, details=stats)
    return stats


# --- points ----------------------------------------------------------------------------------------


def points_balance(conn: Connection, customer_key: str, today: date) -> int:
    """Return the points a customer can spend on `today`."""
    return sum(
        lot.remaining for lot in _lots(conn, [customer_key]).get(customer_key, []) if lot.usable(today)
    )


def redeem_points(
    engine: Engine,
    customer_key: str,
    points: int,
    redemption_key: str,
    today: date,
    now: datetime | None = None,
) -> dict[str, int]:
    """Spend points oldest lot first, all or nothing (NotEnoughPoints); idempotent per redemption key."""
    p, r = s.points_ledger, s.rewards
    moment = now or utcnow()
    with engine.begin() as conn:
        _lock_customers(conn, [customer_key])
        done = conn.execute(
            select(p.c.lot_key, p.c.points).where(p.c.kind == "redeem", p.c.reference == redemption_key)
        ).all()
        if done:
            return {str(k): -int(n) for k, n in done}
        lots = _lots(conn, [customer_key]).get(customer_key, [])
        taken = redeem(lots, points, today)
        conn.execute(
            insert(p),
            [
                _entry(customer_key, lot_key, "redeem", -n, redemption_key, moment)
                for lot_key, n in taken.items()
            ],
        )
        emptied = [
            lot.lot_key for lot in lots if lot.lot_key in taken and lot.remaining == taken[lot.lot_key]
        ]
        if emptied:
            conn.execute(
                update(r)
                .where(r.c.reward_key.in_(emptied), r.c.status == RewardStatus.FULFILLED.value)
                .values(status=RewardStatus.REDEEMED.value, redeemed_at=moment, updated_at=moment)
            )
        audit(
            conn,
            "rewards.points_redeemed",
            subject_type="customer",
            subject_key=customer_key,
            details={"points": points, "lots": len(taken)},
        )
    return taken


# --- notification ----------------------------------------------------------------------------------


@lru_cache(maxsize=10_000)
def _points(value: int, locale: str) -> str:
    return format_decimal(value, locale=babel_locale(locale))


def reward_context(
    row: Mapping[str, Any], *, company: str, link_secret: bytes, link_base: str, unsubscribe_base: str
) -> dict[str, Any]:
    """Return the template context of a reward notification (value and dates formatted for the locale)."""
    locale = str(row["locale"])
    kind = str(row["kind"])
    points = int(row["points"]) if row.get("points") is not None else 0
    expires = row.get("expires_on")
    token = link_token(link_secret, str(row["message_key"]))
    rewards_url = urljoin(link_base.rstrip("/") + "/", f"../rewards/{token}")
    return {
        "first_name": row.get("first_name") or "",
        "last_name": row.get("last_name") or "",
        "company": company,
        "reward_kind": kind,
        "reward_reason": str(row["trigger"]),
        "reward_value": _points(points, locale)
        if kind == RewardKind.POINTS.value
        else format_money(float(row["value"]), str(row["currency"]), locale),
        "points": points,
        "expires_on": format_long_date(pd.Timestamp(expires).date(), locale) if expires is not None else "",
        "voucher_code": row.get("voucher_code") or "",
        "rewards_url": rewards_url,
        # The shared email layout links its button to renew_url; for a reward that is the rewards page.
        "renew_url": rewards_url,
        "unsubscribe_url": f"{unsubscribe_base.rstrip('/')}/{token}",
        "is_marketing": False,
    }


def adopt_notifications(conn: Connection, cycle_id: int, markets: Sequence[str], now: datetime) -> int:
    """Move reward notifications an earlier run left planned or queued into this cycle."""
    m = s.messages
    result = conn.execute(
        update(m)
        .where(
            m.c.playbook == REWARDS_PLAYBOOK,
            m.c.market.in_(list(markets)),
            m.c.status.in_(["planned", "queued"]),
            m.c.cycle_id != cycle_id,
        )
        .values(cycle_id=cycle_id, updated_at=now)
    )
    return int(result.rowcount)


def render_notifications(
    conn: Connection,
    cycle_id: int,
    renderer: Renderer,
    *,
    company: str,
    link_secret: bytes,
    link_base: str,
    unsubscribe_base: str,
    markets: Sequence[str] | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Render queued reward notifications of fulfilled rewards; waiting ones stay queued, void ones expire."""
    m, r, c, v = s.messages, s.rewards, s.customers, s.voucher_codes
    stmt = (
        select(
            m.c.message_key,
            m.c.channel,
            r.c.status.label("reward_status"),
            r.c.kind,
            r.c.trigger,
            r.c.points,
            r.c.value,
            r.c.currency,
            r.c.expires_on,
            c.c.locale,
            c.c.first_name,
            c.c.last_name,
            v.c.code.label("voucher_code"),
        )
        .join(r, r.c.message_key == m.c.message_key)
        .join(c, c.c.customer_key == m.c.customer_key)
        .outerjoin(v, v.c.reward_key == r.c.reward_key)
        .where(m.c.playbook == REWARDS_PLAYBOOK, m.c.status == "queued", in_shard(m.c.customer_key, shard))
    )
    stmt = stmt.where(m.c.market.in_(list(markets))) if markets else stmt.where(m.c.cycle_id == cycle_id)
    rows = read_frame(conn, stmt)
    now = utcnow()
    ready = {RewardStatus.FULFILLED.value, RewardStatus.REDEEMED.value}
    out: list[dict[str, Any]] = []
    waiting = 0
    for row in records(rows):
        status = str(row["reward_status"])
        if status == RewardStatus.GRANTED.value:
            waiting += 1
            continue
        if status not in ready:
            out.append(
                {
                    "message_key": row["message_key"],
                    "status": "expired",
                    "error_code": "REWARD_VOID",
                    "error_detail": f"reward {status}",
                }
            )
            continue
        try:
            ctx = reward_context(
                row,
                company=company,
                link_secret=link_secret,
                link_base=link_base,
                unsubscribe_base=unsubscribe_base,
            )
            done = renderer.render(str(row["channel"]), NOTIFY_TEMPLATE, str(row["locale"]), ctx)
        except (TemplateMissing, TemplateError, KeyError, ValueError, LookupError) as exc:
            out.append(
                {
                    "message_key": row["message_key"],
                    "status": "render_failed",
                    "error_code": "RENDER",
                    "error_detail": f"{type(exc).__name__}: {str(exc)[:300]}",
                }
            )
            continue
        out.append(
            {
                "message_key": row["message_key"],
                "cycle_id": cycle_id,
                "status": "rendered",
                **done.columns(),
                "rendered_at": now,
            }
        )
    frame = pd.DataFrame(out)
    by_status: dict[str, int] = {}
    if len(frame):
        for _, part in frame.groupby("status"):
            set_status(conn, part.dropna(axis=1, how="all"), now)
        by_status = summary(frame["status"])
    return {
        "rendered": by_status.get("rendered", 0),
        "waiting_for_fulfilment": waiting,
        "by_status": by_status,
    }


# --- the whole run without Prefect -----------------------------------------------------------------


def open_rewards_cycle(
    conn: Connection,
    config: RewardConfig,
    as_of: date,
    markets: Sequence[str],
    dry_run: bool,
    flow_run_id: str | None,
) -> int:
    """Open the cycle row that the run's notifications belong to."""
    cycle_id = create_cycle(
        conn,
        as_of=as_of,
        markets=markets,
        playbook=REWARDS_PLAYBOOK,
        playbook_version=max((r.version for r in config.rules), default=0),
        dry_run=dry_run,
        flow_run_id=flow_run_id,
    )
    audit(conn, "rewards.started", cycle_id=cycle_id, details={"markets": list(markets), "dry_run": dry_run})
    return cycle_id


def run_rewards(
    ctx: RewardsContext, as_of: date, markets: Sequence[str], now: datetime, dry_run: bool = False
) -> dict[str, Any]:
    """Run claw back, expire, grant, fulfil, gate, render and dispatch in order (what the flow does)."""
    with ctx.engine.begin() as conn:
        cycle_id = open_rewards_cycle(conn, ctx.config, as_of, markets, dry_run, None)
    stats: dict[str, Any] = {"cycle_id": cycle_id}
    stats["claw-back"] = claw_back_rewards(ctx, as_of, markets, now, dry_run)
    stats["expire"] = expire_rewards(ctx, as_of, markets, now, dry_run)
    stats["grant"] = grant_rewards(ctx, cycle_id, as_of, markets, now, dry_run)
    if dry_run:
        return stats
    stats["fulfil"] = fulfil_rewards(ctx, markets, now)
    stats.update(notify(ctx, cycle_id, markets, now))
    with ctx.engine.begin() as conn:
        finish_cycle(conn, cycle_id, "completed", _jsonable(stats))
    return stats


def notify(ctx: RewardsContext, cycle_id: int, markets: Sequence[str], now: datetime) -> dict[str, Any]:
    """Send the run's reward notifications through the normal path: consent gate, render, dispatch."""
    if ctx.renderer is None:
        raise ValueError("notifications need a renderer")
    stats: dict[str, Any] = {}
    with ctx.engine.begin() as conn:
        adopt_notifications(conn, cycle_id, markets, now)
        stats["consent-gate"] = gate_cycle(
            conn, cycle_id, ctx.markets, ctx.hash_key, now, list(markets), REWARDS_PLAYBOOK
        )
    with ctx.engine.begin() as conn:
        stats["render"] = render_notifications(
            conn,
            cycle_id,
            ctx.renderer,
            company=ctx.company,
            link_secret=ctx.hash_key,
            link_base=ctx.link_base,
            unsubscribe_base=ctx.unsubscribe_base,
            markets=markets,
        )
    stats["dispatch"] = dispatch_cycle(
        ctx.engine,
        cycle_id,
        ctx.senders,
        ctx.markets,
        ctx.hash_key,
        ctx.dispatch_batch_size,
        clock=lambda: now,
        **ctx.dispatch_options,
    )
    return stats


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    return value


# --- Prefect tasks ---------------------------------------------------------------------------------


_context: tuple[object, RewardsContext] | None = None


def runtime_context() -> RewardsContext:
    """Return the rewards context of the process runtime (built once per runtime)."""
    global _context
    rt = get_runtime()
    if _context is None or _context[0] is not rt:
        _context = (rt, _build_context())
    return _context[1]


def _build_context() -> RewardsContext:
    rt = get_runtime()
    st = rt.settings
    config = load_reward_rules(st.config_dir, rt.markets)
    return RewardsContext(
        engine=rt.engine,
        config=config,
        markets=rt.markets,
        fulfillers={
            Fulfilment.POINTS: PointsFulfiller(SqlPointsLedger(rt.engine)),
            Fulfilment.VOUCHER: VoucherFulfiller(SqlVoucherPool(rt.engine)),
            Fulfilment.WEBHOOK: _webhook_from_settings(st),
        },
        hash_key=st.pii_hash_key.get_secret_value().encode(),
        renderer=rt.renderer,
        senders={c: rt.sender(c) for c in ("email", "sms", "whatsapp")},
        company=st.company_name,
        link_base=str(st.renew_base_url),
        unsubscribe_base=str(st.unsubscribe_base_url),
        dispatch_batch_size=st.dispatch_batch_size,
    )


def _webhook_from_settings(settings: Any) -> Fulfiller:
    """Return the platform client, or a stand-in that defers webhook rewards while it is not configured."""
    url = settings.rewards_webhook_url
    key = settings.rewards_webhook_secret.get_secret_value()
    if not url or not key:
        return Unconfigured("RENEWALS_REWARDS_WEBHOOK_URL and RENEWALS_REWARDS_WEBHOOK_SECRET are not set")
    return WebhookFulfiller(
        url,
        key.encode(),
        timeout=settings.rewards_webhook_timeout_seconds,
        max_attempts=settings.retry_max_attempts,
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
    )


def resolve_markets(markets: Sequence[str] | None) -> list[str]:
    """Return the requested market codes (upper-cased, sorted), or every market a rule runs in."""
    config = load_reward_rules(get_runtime().settings.config_dir, get_runtime().markets)
    known = {m for r in config.rules for m in r.markets}
    if not markets:
        return sorted(known)
    codes = sorted({m.strip().upper() for m in markets if m.strip()})
    unknown = sorted(set(codes) - set(get_runtime().markets))
    if unknown:
        raise ValueError(f"unknown market(s) {unknown}; configured: {sorted(get_runtime().markets)}")
    return codes


@task(name="open-rewards", **STEP)
def open_rewards(as_of: date, markets: list[str], dry_run: bool) -> int:
    """Validate the reward rules and open the run's cycle row; a bad rule file stops the run here."""
    rt = get_runtime()
    config = load_reward_rules(rt.settings.config_dir, rt.markets)
    run = getattr(get_run_context(), "task_run", None)
    with rt.engine.begin() as conn:
        return open_rewards_cycle(
            conn, config, as_of, markets, dry_run, str(run.flow_run_id) if run else None
        )


@task(name="claw-back", **STEP)
def claw_back(as_of: date, markets: list[str], dry_run: bool) -> dict[str, Any]:
    """Take back rewards whose qualifying payment or renewal was reversed."""
    stats = claw_back_rewards(runtime_context(), as_of, markets, utcnow(), dry_run)
    get_run_logger().info("clawed back %s rewards: %s", stats["clawed_back"], stats["by_reason"])
    return stats


@task(name="expire-rewards", **STEP)
def expire(as_of: date, markets: list[str], dry_run: bool) -> dict[str, Any]:
    """Expire points and vouchers past their last day."""
    stats = expire_rewards(runtime_context(), as_of, markets, utcnow(), dry_run)
    get_run_logger().info("expired %s rewards (%s points)", stats["expired"], stats["points_expired"])
    return stats


@task(name="grant", **STEP)
def grant(cycle_id: int, as_of: date, markets: list[str], dry_run: bool) -> dict[str, Any]:
    """Grant qualifying events within budget; a rerun grants nothing twice."""
    stats = grant_rewards(runtime_context(), cycle_id, as_of, markets, utcnow(), dry_run)
    get_run_logger().info(
        "%s qualifying events, %s decided before; %s",
        stats["qualifying"],
        stats["already_decided"],
        {k: v for k, v in stats.items() if k in {st.value for st in RewardStatus}},
    )
    return {k: v for k, v in stats.items() if k != "run_id"}


@task(name="fulfil", **STEP, **IO_RETRIES)
def fulfil(markets: list[str]) -> dict[str, Any]:
    """Fulfil granted rewards (points ledger, voucher codes, rewards platform)."""
    stats = fulfil_rewards(runtime_context(), markets, utcnow())
    get_run_logger().info("fulfilment: %s", stats["by_outcome"])
    return stats


@task(name="render-rewards", **STEP)
def render_rewards(cycle_id: int, markets: list[str]) -> dict[str, Any]:
    """Render the queued notifications of fulfilled rewards."""
    ctx = runtime_context()
    if ctx.renderer is None:
        raise ValueError("notifications need a renderer")
    with ctx.engine.begin() as conn:
        stats = render_notifications(
            conn,
            cycle_id,
            ctx.renderer,
            company=ctx.company,
            link_secret=ctx.hash_key,
            link_base=ctx.link_base,
            unsubscribe_base=ctx.unsubscribe_base,
            markets=markets,
        )
    get_run_logger().info(
        "rendered %s reward notifications (%s waiting)", stats["rendered"], stats["waiting_for_fulfilment"]
    )
    return stats


@task(name="adopt-notifications", **STEP)
def adopt(cycle_id: int, markets: list[str]) -> int:
    """Bring reward notifications left planned or queued by earlier runs into this run."""
    with get_runtime().engine.begin() as conn:
        return adopt_notifications(conn, cycle_id, markets, utcnow())


@task(name="summarise-rewards", **STEP)
def close_rewards(cycle_id: int, base: dict[str, Any]) -> dict[str, Any]:
    """Close the run's cycle with its summary and publish it as a Markdown artifact."""
    summary_: dict[str, Any] = _jsonable(base)
    with get_runtime().engine.begin() as conn:
        finish_cycle(conn, cycle_id, str(summary_.get("status", "completed")), summary_)
        audit(conn, "rewards.finished", cycle_id=cycle_id, details={"status": summary_.get("status")})
    grant_stats = summary_.get("stages", {}).get("grant", {})
    lines = [
        f"# Rewards {summary_.get('as_of')} ({', '.join(summary_.get('markets', []))})",
        "",
        "| rule | qualifying | granted | holdout | over budget |",
        "|---|---:|---:|---:|---:|",
    ]
    for rule, counts in sorted(grant_stats.get("by_rule", {}).items()):
        lines.append(
            f"| {rule} | {counts.get('qualifying', 0)} | {counts.get('granted', 0)} | "
            f"{counts.get('holdout', 0)} | {counts.get('over_budget', 0)} |"
        )
    create_markdown_artifact(
        markdown="\n".join(lines), key="grant-rewards-summary", description=f"Rewards run {cycle_id}"
    )
    return summary_
