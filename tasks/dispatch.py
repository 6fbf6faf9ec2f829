"""Dispatch: claim, re-check consent, send through the channel, settle; at most once per message."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Engine

from tasks._prefect import IO_RETRIES, STEP
from tasks.channels.base import Outbound, Sender, SendResult, SendStatus
from tasks.domain.consent import Outcome, Reason, labelled, required_label
from tasks.domain.frames import records
from tasks.domain.markets import Market
from tasks.gate import decide_for, decision_rows
from tasks.runtime import get_runtime
from tasks.store.repository import audit, claim_batch, insert_decisions, set_status, stuck_sending, utcnow


def _address(row: dict[str, Any]) -> str:
    return str(row["email"] if row["channel"] == "email" else row["phone_e164"])


def reconcile_stuck(engine: Engine, cycle_id: int, senders: Mapping[str, Sender]) -> dict[str, int]:
    """Settle messages a killed dispatch left in `sending`: sent if the provider has them, else retry."""
    with engine.begin() as conn:
        stuck = stuck_sending(conn, cycle_id)
        if stuck.empty:
            return {}
        now = utcnow()
        updates: list[dict[str, Any]] = []
        for channel, group in stuck.groupby("channel"):
            found = senders[str(channel)].reconcile(group["message_key"].tolist())
            for key in group["message_key"]:
                result = found.get(key)
                updates.append(
                    {"message_key": key, "status": "rendered"} if result is None else _settled(result, now)
                )
        set_status(conn, pd.DataFrame(updates), now)
        tally = Counter("resent_later" if u["status"] == "rendered" else "confirmed_sent" for u in updates)
        audit(conn, "dispatch.reconciled", cycle_id=cycle_id, details=dict(tally))
        return dict(tally)


def _settled(result: SendResult, now: datetime) -> dict[str, Any]:
    return {
        "message_key": result.message_key,
        "status": result.status.value,
        "provider": result.provider,
        "provider_message_id": result.provider_message_id,
        "error_code": result.error_code,
        "error_detail": result.error_detail,
        "sent_at": now if result.status is SendStatus.SENT else None,
    }


def _label_failures(batch: pd.DataFrame, markets: Mapping[str, Market]) -> pd.Series:
    """Return the message keys whose marketing content lacks the market's advertising label."""
    bad = []
    for row in records(batch):
        marketing = row["purpose"] == "marketing" or (
            bool(row["has_offer"]) and not bool(row["offer_removed"])
        )
        market = markets.get(str(row["market"]))
        label = required_label(market.rules, str(row["channel"]), marketing) if market else None
        text = row["subject"] if row["channel"] == "email" else row["body"]
        if not labelled(text, label):
            bad.append(row["message_key"])
    return pd.Series(bad, dtype="object")


def dispatch_cycle(
    engine: Engine,
    cycle_id: int,
    senders: Mapping[str, Sender],
    markets: Mapping[str, Market],
    hash_key: bytes,
    batch_size: int,
    clock: Callable[[], datetime] = utcnow,
) -> dict[str, Any]:
    """Send every rendered message of the cycle, batch by batch, re-checking consent right before sending.

    A message the gate now blocks or defers is not sent; one whose offer block may no longer be
    shown goes back to `queued` to be rendered without it.
    """
    stats: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    reconciled = reconcile_stuck(engine, cycle_id, senders)
    while True:
        now = clock()
        # The claim commits before any provider call, so a crash leaves `sending`, never a resend.
        with engine.begin() as conn:
            batch = claim_batch(conn, cycle_id, batch_size, now)
            if batch.empty:
                break
            decisions, _ = decide_for(conn, batch, markets, hash_key, now)
            rendered_without = batch[["message_key", "has_offer", "offer_removed"]].rename(
                columns={"offer_removed": "rendered_without_offer"}
            )
            merged = decisions.merge(rendered_without, on="message_key")
            # The gate may now strip an offer the rendered body still shows: render it again first.
            offer_dropped = (
                (merged["outcome"] == Outcome.ALLOWED.value)
                & merged["offer_removed"].astype(bool)
                & merged["has_offer"].astype(bool)
                & ~merged["rendered_without_offer"].astype(bool)
            )
            held = merged.loc[(merged["outcome"] != Outcome.ALLOWED.value) | offer_dropped]
            unlabelled = _label_failures(batch.loc[~batch["message_key"].isin(held["message_key"])], markets)
            if not held.empty:
                held_decisions = decisions.loc[decisions["message_key"].isin(held["message_key"])]
                insert_decisions(conn, decision_rows(batch, held_decisions, cycle_id, "send"))
                new_status = pd.Series("blocked", index=held.index)
                new_status[held["outcome"] == Outcome.DEFERRED.value] = "deferred"
                new_status[offer_dropped.loc[held.index]] = "queued"
                set_status(
                    conn,
                    pd.DataFrame(
                        {
                            "message_key": held["message_key"],
                            "status": new_status,
                            "deferred_until": held["deferred_until"].where(new_status == "deferred"),
                            "offer_removed": offer_dropped.loc[held.index] | False,
                        }
                    ),
                    clock(),
                )
                stats["blocked_at_send"] += int((new_status == "blocked").sum())
                stats["deferred_at_send"] += int((new_status == "deferred").sum())
                stats["rerender_without_offer"] += int((new_status == "queued").sum())
            if not unlabelled.empty:
                labels = decisions.loc[decisions["message_key"].isin(unlabelled)].assign(
                    outcome=Outcome.BLOCKED.value, reason=Reason.MISSING_LABEL.value, rule_ids="VN-01,SG-02"
                )
                insert_decisions(conn, decision_rows(batch, labels, cycle_id, "send"))
                set_status(conn, pd.DataFrame({"message_key": unlabelled, "status": "blocked"}), clock())
                stats["blocked_at_send"] += len(unlabelled)
        stopped = set(held["message_key"]) | set(unlabelled)
        sendable = batch.loc[~batch["message_key"].isin(stopped)]
        results: list[SendResult] = []
        for channel, group in sendable.groupby("channel"):
            outbound = [
                Outbound(
                    message_key=r["message_key"],
                    channel=r["channel"],
                    to=_address(r),
                    body=r["body"],
                    purpose=r["purpose"],
                    category=f"{r['playbook']}:{r['step']}",
                    subject=r["subject"],
                    html=r["body_html"],
                )
                for r in records(group)
            ]
            results.extend(senders[str(channel)].send(outbound))
        settled_at = clock()
        with engine.begin() as conn:
            set_status(conn, pd.DataFrame([_settled(r, settled_at) for r in results]), settled_at)
        channels = dict(zip(sendable["message_key"], sendable["channel"], strict=True))
        for r in results:
            stats[r.status.value] += 1
            by_channel[f"{channels[r.message_key]}:{r.status.value}"] += 1
    return {
        "sent": stats["sent"],
        "failed": stats["failed"],
        "in_doubt": stats["in_doubt"],
        "blocked_at_send": stats["blocked_at_send"],
        "deferred_at_send": stats["deferred_at_send"],
        "rerender_without_offer": stats["rerender_without_offer"],
        "by_channel": dict(sorted(by_channel.items())),
        "reconciled": reconciled,
    }


@task(name="dispatch", **STEP, **IO_RETRIES)
def dispatch(cycle_id: int) -> dict[str, Any]:
    """Send the cycle's rendered messages through the configured channels."""
    rt = get_runtime()
    senders = {c: rt.sender(c) for c in ("email", "sms", "whatsapp")}
    stats = dispatch_cycle(
        rt.engine,
        cycle_id,
        senders,
        rt.markets,
        rt.settings.pii_hash_key.get_secret_value().encode(),
        rt.settings.dispatch_batch_size,
    )
    get_run_logger().info(
        "dispatched: %s sent, %s failed, %s in doubt, %s blocked and %s deferred at send",
        stats["sent"],
        stats["failed"],
        stats["in_doubt"],
        stats["blocked_at_send"],
        stats["deferred_at_send"],
    )
    return stats
