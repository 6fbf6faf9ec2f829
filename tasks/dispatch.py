"""Dispatch: claim, re-check consent, send through the channel, settle; at most once per message.

A message is claimed (`sending`, with the dispatcher's id) and committed before its provider call and
settled after it. A dispatcher that dies leaves its claims behind; they are only reconciled once the
owner is provably gone (on PostgreSQL it holds an advisory lock while alive), so two dispatchers can
drain one cycle side by side without ever sending a message twice.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from sqlalchemy import Engine, select, text, update

from tasks._prefect import IO_RETRIES, STEP
from tasks.channels.base import Outbound, Sender, SendResult, SendStatus
from tasks.channels.results import ChannelResult
from tasks.domain.consent import Outcome, Reason, labelled, required_label
from tasks.domain.frames import records
from tasks.domain.markets import Market
from tasks.gate import decide_for, decision_rows
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame, update_frame
from tasks.store.repository import audit, claim_batch, count_status, insert_decisions, set_status, utcnow
from tasks.tracking import CONSENT_PURPOSES, activate_fallback, in_doubt_evidence, record_consent_change


@contextmanager
def dispatcher_lease(engine: Engine) -> Iterator[int]:
    """Yield this dispatcher's id, held as a PostgreSQL advisory lock for as long as it runs."""
    owner = secrets.randbits(62) + 1
    if engine.dialect.name != "postgresql":
        yield owner
        return
    conn = engine.connect()
    try:
        conn.execute(text("SELECT pg_advisory_lock(:owner)"), {"owner": owner})
        conn.commit()
        yield owner
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:owner)"), {"owner": owner})
        conn.commit()
        conn.close()


def dead_owners(engine: Engine, owners: set[int], mine: int) -> set[int]:
    """Return the dispatcher ids among `owners` whose process is gone (their advisory lock is free)."""
    others = {o for o in owners if o != mine}
    if engine.dialect.name != "postgresql" or not others:
        return others
    dead = set()
    with engine.connect() as conn:
        for owner in others:
            if conn.execute(text("SELECT pg_try_advisory_lock(:o)"), {"o": owner}).scalar():
                conn.execute(text("SELECT pg_advisory_unlock(:o)"), {"o": owner})
                dead.add(owner)
        conn.commit()
    return dead


def _address(row: dict[str, Any]) -> str:
    return str(row["email"] if row["channel"] == "email" else row["phone_e164"])


def _settled(result: SendResult, now: datetime) -> dict[str, Any]:
    rich = result if isinstance(result, ChannelResult) else None
    return {
        "message_key": result.message_key,
        "status": result.status.value,
        "provider": result.provider,
        "provider_message_id": result.provider_message_id,
        "error_code": result.error_code,
        "error_class": rich.error_class.value if rich is not None and rich.error_class is not None else None,
        "error_detail": result.error_detail,
        "cost": float(rich.cost) if rich is not None and rich.cost is not None else None,
        "cost_currency": rich.currency if rich is not None else None,
        "sent_at": now if result.status is SendStatus.SENT else None,
    }


def settle(engine: Engine, results: list[SendResult], now: datetime) -> dict[str, int]:
    """Store outcomes; the status only replaces `sending`, so a faster webhook callback is never undone."""
    if not results:
        return {}
    frame = pd.DataFrame([_settled(r, now) for r in results])
    follow: Counter[str] = Counter()
    with engine.begin() as conn:
        details = frame.drop(columns=["status", "sent_at"])
        update_frame(conn, s.messages, details.assign(updated_at=now), ["message_key"])
        update_frame(
            conn,
            s.messages,
            frame[["message_key", "status", "sent_at"]],
            ["message_key"],
            only_where_in=("status", ("sending",)),
        )
        for result in results:
            if not isinstance(result, ChannelResult):
                continue
            if (
                result.status is SendStatus.FAILED
                and result.fallback
                and activate_fallback(conn, result.message_key, now)
            ):
                follow["fallback_queued"] += 1
            if result.opt_out:
                row = conn.execute(
                    select(s.messages.c.customer_key, s.messages.c.channel).where(
                        s.messages.c.message_key == result.message_key
                    )
                ).first()
                if row is not None:
                    record_consent_change(
                        conn,
                        row.customer_key,
                        row.channel,
                        CONSENT_PURPOSES,
                        "withdrawn",
                        origin="provider_optout",
                        method=f"opted out at the provider ({result.error_code})",
                        now=now,
                    )
                    follow["opt_outs_recorded"] += 1
    return dict(follow)


def reconcile(
    engine: Engine,
    cycle_id: int,
    senders: Mapping[str, Sender],
    owner: int,
    now: datetime,
    lease_seconds: float,
    grace_seconds: float,
    email_events: bool,
) -> dict[str, int]:
    """Settle messages whose outcome was lost: a dead dispatcher's `sending` claims and `in_doubt` sends.

    Found at the provider: sent. Provably absent (a lookup found nothing, or no webhook event arrived
    within the grace period): queued again in this cycle. Otherwise it stays in doubt; nothing is
    resent blindly.
    """
    m = s.messages
    with engine.connect() as conn:
        rows = read_frame(
            conn,
            select(m.c.message_key, m.c.channel, m.c.status, m.c.claimed_at, m.c.claimed_by).where(
                m.c.status.in_(["sending", "in_doubt"])
            ),
        )
    if rows.empty:
        return {}
    owners = {int(o) for o in rows["claimed_by"].dropna()}
    dead = dead_owners(engine, owners, owner)
    lease_cut = pd.Timestamp(now - timedelta(seconds=lease_seconds))
    grace_cut = pd.Timestamp(now - timedelta(seconds=grace_seconds))
    claimed = pd.to_datetime(rows["claimed_at"], utc=True)
    orphaned = (rows["status"] == "sending") & (
        rows["claimed_by"].isna()
        | rows["claimed_by"].isin(list(dead))
        & ((engine.dialect.name == "postgresql") | (claimed < lease_cut))
    )
    work = rows.loc[orphaned | (rows["status"] == "in_doubt")]
    if work.empty:
        return {}
    tally: Counter[str] = Counter()
    found: list[SendResult] = []
    resend: list[str] = []
    doubt: list[str] = []
    for channel, group in work.groupby("channel"):
        keys = group["message_key"].astype(str).tolist()
        old = set(group.loc[claimed.loc[group.index] < grace_cut, "message_key"].astype(str))
        crashed = set(group.loc[group["status"] == "sending", "message_key"].astype(str))
        sender = senders[str(channel)]
        if getattr(sender, "reconciles_by_lookup", True):
            answers = sender.reconcile(keys)
            for key in keys:
                result = answers.get(key)
                if result is not None and result.status is SendStatus.SENT:
                    found.append(result)
                elif result is None and (key in crashed or key in old):
                    resend.append(key)
                else:
                    doubt.append(key)
        else:
            with engine.connect() as conn:
                evidence = set(in_doubt_evidence(conn, keys)["message_key"])
            for key in keys:
                if key in evidence:
                    found.append(SendResult(key, SendStatus.SENT, getattr(sender, "provider", str(channel))))
                elif email_events and key in old:
                    resend.append(key)
                else:
                    doubt.append(key)
    with engine.begin() as conn:
        for result in found:
            conn.execute(
                update(m)
                .where(m.c.message_key == result.message_key, m.c.status.in_(["sending", "in_doubt"]))
                .values(
                    status="sent",
                    provider=result.provider,
                    provider_message_id=result.provider_message_id,
                    sent_at=now,
                    updated_at=now,
                )
            )
        if resend:
            conn.execute(
                update(m)
                .where(m.c.message_key.in_(resend), m.c.status.in_(["sending", "in_doubt"]))
                .values(status="rendered", cycle_id=cycle_id, claimed_by=None, updated_at=now)
            )
        if doubt:
            conn.execute(
                update(m)
                .where(m.c.message_key.in_(doubt), m.c.status == "sending")
                .values(status="in_doubt", updated_at=now)
            )
        tally.update(confirmed_sent=len(found), sent_again=len(resend), still_in_doubt=len(doubt))
        audit(conn, "dispatch.reconciled", cycle_id=cycle_id, details=dict(tally))
    return dict(tally)


def _label_failures(batch: pd.DataFrame, markets: Mapping[str, Market]) -> list[str]:
    """Return the message keys whose marketing content lacks the market's advertising label."""
    bad = []
    for row in records(batch):
        marketing = row["purpose"] == "marketing" or (
            bool(row["has_offer"]) and not bool(row["offer_removed"])
        )
        market = markets.get(str(row["market"]))
        label = required_label(market.rules, str(row["channel"]), marketing) if market else None
        if not labelled(row["subject"] if row["channel"] == "email" else row["body"], label):
            bad.append(str(row["message_key"]))
    return bad


def _recheck(
    engine: Engine,
    batch: pd.DataFrame,
    cycle_id: int,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
) -> tuple[set[str], Counter[str]]:
    """Run the gate again right before sending; return the keys that must not go now, and why."""
    tally: Counter[str] = Counter()
    with engine.begin() as conn:
        decisions, _ = decide_for(conn, batch, markets, hash_key, now)
        shown = batch[["message_key", "has_offer", "offer_removed"]].rename(
            columns={"offer_removed": "shown_without"}
        )
        merged = decisions.merge(shown, on="message_key")
        # The gate may now strip an offer the rendered body still shows: render it again first.
        offer_dropped = (
            (merged["outcome"] == Outcome.ALLOWED.value)
            & merged["offer_removed"].astype(bool)
            & merged["has_offer"].astype(bool)
            & ~merged["shown_without"].astype(bool)
        )
        held = merged.loc[(merged["outcome"] != Outcome.ALLOWED.value) | offer_dropped]
        if not held.empty:
            insert_decisions(
                conn,
                decision_rows(
                    batch, decisions.loc[decisions["message_key"].isin(held["message_key"])], cycle_id, "send"
                ),
            )
            status = pd.Series("blocked", index=held.index)
            status[held["outcome"] == Outcome.DEFERRED.value] = "deferred"
            status[offer_dropped.loc[held.index]] = "queued"
            set_status(
                conn,
                pd.DataFrame(
                    {
                        "message_key": held["message_key"],
                        "status": status,
                        "deferred_until": held["deferred_until"].where(status == "deferred"),
                        "offer_removed": offer_dropped.loc[held.index] | False,
                        "claimed_by": None,
                    }
                ),
                now,
            )
            tally.update(
                blocked_at_send=int((status == "blocked").sum()),
                deferred_at_send=int((status == "deferred").sum()),
                rerender_without_offer=int((status == "queued").sum()),
            )
        unlabelled = _label_failures(batch.loc[~batch["message_key"].isin(held["message_key"])], markets)
        if unlabelled:
            labels = decisions.loc[decisions["message_key"].isin(unlabelled)].assign(
                outcome=Outcome.BLOCKED.value, reason=Reason.MISSING_LABEL.value, rule_ids="VN-01,SG-02"
            )
            insert_decisions(conn, decision_rows(batch, labels, cycle_id, "send"))
            set_status(conn, pd.DataFrame({"message_key": unlabelled, "status": "blocked"}), now)
            tally["blocked_at_send"] += len(unlabelled)
    return set(held["message_key"]) | set(unlabelled), tally


def _outbound(row: dict[str, Any]) -> Outbound:
    variables = row.get("template_variables")
    return Outbound(
        message_key=row["message_key"],
        channel=row["channel"],
        to=_address(row),
        body=row["body"],
        purpose=row["purpose"],
        category=f"{row['playbook']}:{row['step']}",
        subject=row["subject"],
        html=row["body_html"],
        template=row["template"],
        locale=row["locale"],
        variables={str(k): str(v) for k, v in variables.items()} if isinstance(variables, dict) else None,
    )


def dispatch_cycle(
    engine: Engine,
    cycle_id: int,
    senders: Mapping[str, Sender],
    markets: Mapping[str, Market],
    hash_key: bytes,
    batch_size: int,
    clock: Callable[[], datetime] = utcnow,
    *,
    lease_seconds: float = 600.0,
    grace_seconds: float = 900.0,
    email_events: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Send every rendered message of the cycle, batch by batch, re-checking consent right before sending.

    `on_progress` is told how many messages have been handled after each batch.
    """
    stats: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    handled = 0
    with dispatcher_lease(engine) as owner:
        reconciled = reconcile(
            engine, cycle_id, senders, owner, clock(), lease_seconds, grace_seconds, email_events
        )
        while True:
            now = clock()
            # The claim commits before any provider call, so a crash leaves `sending`, never a resend.
            with engine.begin() as conn:
                batch = claim_batch(conn, cycle_id, batch_size, now, owner)
            if batch.empty:
                break
            stopped, held = _recheck(engine, batch, cycle_id, markets, hash_key, now)
            stats.update(held)
            sendable = batch.loc[~batch["message_key"].isin(stopped)]
            results: list[SendResult] = []
            for channel, group in sendable.groupby("channel"):
                results.extend(senders[str(channel)].send([_outbound(r) for r in records(group)]))
            stats.update(settle(engine, results, clock()))
            channels = dict(zip(sendable["message_key"], sendable["channel"], strict=True))
            for r in results:
                stats[r.status.value] += 1
                by_channel[f"{channels[r.message_key]}:{r.status.value}"] += 1
            handled += len(batch)
            if on_progress is not None:
                on_progress(handled)
    return {
        "sent": stats["sent"],
        "failed": stats["failed"],
        "in_doubt": stats["in_doubt"],
        "blocked_at_send": stats["blocked_at_send"],
        "deferred_at_send": stats["deferred_at_send"],
        "rerender_without_offer": stats["rerender_without_offer"],
        "fallback_queued": stats["fallback_queued"],
        "opt_outs_recorded": stats["opt_outs_recorded"],
        "by_channel": dict(sorted(by_channel.items())),
        "reconciled": reconciled,
    }


def merge_stats(first: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Add the counts of a follow-up dispatch round to the first round's."""
    out = dict(first)
    for key, value in more.items():
        if isinstance(value, int):
            out[key] = out.get(key, 0) + value
        elif key == "by_channel":
            merged = Counter(out.get(key, {}))
            merged.update(value)
            out[key] = dict(sorted(merged.items()))
    return out


@task(name="dispatch", **STEP, **IO_RETRIES)
def dispatch(cycle_id: int, as_of: Any = None) -> dict[str, Any]:
    """Send the cycle's rendered messages; fallbacks and offer-less re-renders get up to two more rounds."""
    from tasks.render import render_queued

    rt = get_runtime()
    senders = {c: rt.sender(c) for c in ("email", "sms", "whatsapp")}
    settings = rt.settings
    with rt.engine.connect() as conn:
        total = count_status(conn, cycle_id, "rendered")
    progress = create_progress_artifact(
        progress=0.0, key="dispatch-progress", description=f"Cycle {cycle_id}: {total:,} messages to send"
    )
    assert isinstance(progress, UUID)  # the sync call in a sync task returns the id, not a coroutine

    def report(handled: int) -> None:
        update_progress_artifact(progress, min(100.0, 100.0 * handled / max(total, 1)))

    def run() -> dict[str, Any]:
        return dispatch_cycle(
            rt.engine,
            cycle_id,
            senders,
            rt.markets,
            settings.pii_hash_key.get_secret_value().encode(),
            settings.dispatch_batch_size,
            lease_seconds=settings.claim_lease_seconds,
            grace_seconds=settings.in_doubt_grace_seconds,
            email_events=bool(settings.sendgrid_webhook_public_key.get_secret_value()),
            on_progress=report,
        )

    stats = run()
    update_progress_artifact(progress, 100.0)
    for _ in range(2):
        if not (stats.get("fallback_queued") or stats.get("rerender_without_offer")):
            break
        render_queued(cycle_id, as_of)
        stats = merge_stats(stats, run())
    get_run_logger().info(
        "dispatched: %s sent, %s failed, %s in doubt, %s blocked and %s deferred at send, %s fallbacks",
        stats["sent"],
        stats["failed"],
        stats["in_doubt"],
        stats["blocked_at_send"],
        stats["deferred_at_send"],
        stats["fallback_queued"],
    )
    return stats
