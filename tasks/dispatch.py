"""Dispatch: claim, re-check consent, send through the channel, settle; at most once per message."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Engine

from tasks._prefect import IO_RETRIES, STEP
from tasks.channels.base import Outbound, Sender, SendResult, SendStatus
from tasks.domain.consent import Outcome
from tasks.gate import decide_for, decision_rows
from tasks.runtime import get_runtime
from tasks.store.repository import audit, claim_batch, insert_decisions, set_status, stuck_sending, utcnow


def _address(row: dict[str, Any]) -> str:
    return str(row["email"] if row["channel"] == "email" else row["phone_e164"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict("records")  # type: ignore[return-value]


def reconcile_stuck(engine: Engine, cycle_id: int, senders: dict[str, Sender]) -> dict[str, int]:
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
                if result is None:
                    updates.append({"message_key": key, "status": "rendered"})
                else:
                    updates.append(_settled(result, now))
        frame = pd.DataFrame(updates)
        set_status(conn, frame, now)
        counts = Counter("resent_later" if u["status"] == "rendered" else "confirmed_sent" for u in updates)
        audit(conn, "dispatch.reconciled", cycle_id=cycle_id, details=dict(counts))
        return dict(counts)


def _settled(result: SendResult, now: Any) -> dict[str, Any]:
    return {
        "message_key": result.message_key,
        "status": result.status.value,
        "provider": result.provider,
        "provider_message_id": result.provider_message_id,
        "error_code": result.error_code,
        "error_detail": result.error_detail,
        "sent_at": now if result.status is SendStatus.SENT else None,
    }


def dispatch_cycle(
    engine: Engine, cycle_id: int, senders: dict[str, Sender], hash_key: bytes, batch_size: int
) -> dict[str, Any]:
    """Send every rendered message of the cycle, batch by batch, re-checking consent right before sending."""
    stats: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    reconciled = reconcile_stuck(engine, cycle_id, senders)
    while True:
        # The claim commits before any provider call, so a crash leaves `sending`, never a resend.
        with engine.begin() as conn:
            batch = claim_batch(conn, cycle_id, batch_size, utcnow())
            if batch.empty:
                break
            decisions = decide_for(conn, batch, hash_key)
            blocked = decisions.loc[decisions["outcome"] == Outcome.BLOCKED.value]
            if not blocked.empty:
                insert_decisions(conn, decision_rows(batch, blocked, cycle_id, "send"))
                set_status(conn, blocked[["message_key"]].assign(status="blocked"), utcnow())
                stats["blocked_at_send"] += len(blocked)
        sendable = batch.loc[~batch["message_key"].isin(blocked["message_key"])]
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
                for r in _records(group)
            ]
            results.extend(senders[str(channel)].send(outbound))
        now = utcnow()
        with engine.begin() as conn:
            set_status(conn, pd.DataFrame([_settled(r, now) for r in results]), now)
        channels = dict(zip(sendable["message_key"], sendable["channel"], strict=True))
        for r in results:
            stats[r.status.value] += 1
            by_channel[f"{channels[r.message_key]}:{r.status.value}"] += 1
    return {
        "sent": stats["sent"],
        "failed": stats["failed"],
        "in_doubt": stats["in_doubt"],
        "blocked_at_send": stats["blocked_at_send"],
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
        rt.settings.pii_hash_key.get_secret_value().encode(),
        rt.settings.dispatch_batch_size,
    )
    get_run_logger().info(
        "dispatched: %s sent, %s failed, %s in doubt, %s blocked at send",
        stats["sent"],
        stats["failed"],
        stats["in_doubt"],
        stats["blocked_at_send"],
    )
    return stats
