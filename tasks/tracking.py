"""Tracking: apply provider delivery events and opt-outs to the ledger and the consent history."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, insert, select, update

from tasks.channels.errors import classify_twilio_code
from tasks.domain.delivery import SENDGRID_STATUS, TWILIO_STATUS, advances, is_failure
from tasks.domain.keywords import Keyword, classify_keyword
from tasks.store import schema as s
from tasks.store.repository import audit, pii_hash, utcnow

CONSENT_PURPOSES = ("service", "dunning", "marketing")


def _consent_row(
    customer_key: str,
    channel: str,
    purpose: str,
    status: str,
    origin: str,
    method: str,
    now: datetime,
    controller: str,
) -> dict[str, Any]:
    withdrawn = status == "withdrawn"
    return {
        "customer_key": customer_key,
        "channel": channel,
        "purpose": purpose,
        "controller": controller,
        "status": status,
        "lawful_basis": "consent",
        "captured_at": now,
        "source": origin,
        "withdrawn_at": now if withdrawn else None,
        "withdrawal_method": method if withdrawn else None,
        "bundled": False,
        "written": False,
        "origin": origin,
        "row_hash": hashlib.blake2b(
            f"{origin}:{purpose}:{now.isoformat()}".encode(), digest_size=8
        ).hexdigest(),
        "recorded_at": now,
    }


def record_consent_change(
    conn: Connection,
    customer_key: str,
    channel: str,
    purposes: Iterable[str],
    status: str,
    *,
    origin: str,
    method: str,
    controller: str = "",
    now: datetime | None = None,
) -> int:
    """Append consent records (never overwrite): a withdrawal or grant for each purpose on `channel`."""
    moment = now or utcnow()
    rows = [
        _consent_row(customer_key, channel, p, status, origin, method, moment, controller) for p in purposes
    ]
    for row in rows:
        conn.execute(insert(s.consents).values(**row))
    audit(
        conn,
        f"consent.{'withdrawn' if status == 'withdrawn' else 'granted'}",
        subject_type="customer",
        subject_key=customer_key,
        details={"channel": channel, "purposes": list(purposes), "origin": origin, "method": method},
    )
    return len(rows)


def activate_fallback(conn: Connection, message_key: str, now: datetime) -> str | None:
    """Queue the next standby channel of the same step after a failure that allows falling back."""
    m = s.messages
    row = conn.execute(
        select(m.c.playbook, m.c.contract_key, m.c.step, m.c.anchor_date, m.c.rank).where(
            m.c.message_key == message_key
        )
    ).first()
    if row is None:
        return None
    nxt = conn.execute(
        select(m.c.message_key)
        .where(
            m.c.playbook == row.playbook,
            m.c.contract_key == row.contract_key,
            m.c.step == row.step,
            m.c.anchor_date == row.anchor_date,
            m.c.rank > row.rank,
            m.c.status == "standby",
        )
        .order_by(m.c.rank)
        .limit(1)
    ).first()
    if nxt is None:
        return None
    conn.execute(update(m).where(m.c.message_key == nxt.message_key).values(status="queued", updated_at=now))
    audit(
        conn,
        "message.fallback",
        subject_type="message",
        subject_key=nxt.message_key,
        details={"after": message_key},
    )
    return str(nxt.message_key)


def apply_event(
    conn: Connection,
    *,
    event_id: str,
    provider: str,
    message_key: str | None,
    provider_message_id: str | None,
    event: str,
    new_status: str | None,
    error_code: str | None,
    occurred_at: datetime | None,
    now: datetime,
) -> bool:
    """Record one provider event (once, by its id) and move the message's status forward if it advances."""
    seen = conn.execute(
        select(s.delivery_events.c.event_id).where(s.delivery_events.c.event_id == event_id)
    ).first()
    if seen is not None:
        return False
    m = s.messages
    applied = False
    if message_key and new_status:
        current = conn.execute(select(m.c.status).where(m.c.message_key == message_key)).scalar()
        if current is not None and advances(current, new_status):
            values: dict[str, Any] = {"status": new_status, "updated_at": now}
            if new_status in ("delivered", "read"):
                values["delivered_at"] = occurred_at or now
            if error_code and is_failure(new_status):
                values["error_code"] = error_code
            if provider_message_id:
                values["provider_message_id"] = provider_message_id
            conn.execute(update(m).where(m.c.message_key == message_key).values(**values))
            applied = True
    conn.execute(
        insert(s.delivery_events).values(
            event_id=event_id[:120],
            provider=provider,
            message_key=message_key,
            provider_message_id=provider_message_id,
            event=event[:32],
            error_code=error_code,
            applied=applied,
            occurred_at=occurred_at,
            received_at=now,
        )
    )
    return applied


def handle_twilio_status(
    conn: Connection, params: Mapping[str, str], message_key: str | None, now: datetime
) -> dict[str, Any]:
    """Apply one Twilio status callback; a failure that allows it falls back to the step's next channel."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    raw_status = params.get("MessageStatus", "")
    status = TWILIO_STATUS.get(raw_status)
    code = params.get("ErrorCode") or None
    applied = apply_event(
        conn,
        event_id=f"twilio:{sid}:{raw_status}",
        provider="twilio",
        message_key=message_key,
        provider_message_id=sid or None,
        event=raw_status or "unknown",
        new_status=status,
        error_code=code,
        occurred_at=None,
        now=now,
    )
    fallback = None
    if applied and message_key and status and is_failure(status) and code:
        outcome = classify_twilio_code(int(code)) if code.isdigit() else None
        if outcome is not None and outcome.fallback:
            fallback = activate_fallback(conn, message_key, now)
        if outcome is not None and outcome.opt_out:
            _opt_out_by_message(conn, message_key, "STOP (Twilio error 21610)", now)
    return {"applied": applied, "status": status, "fallback": fallback}


def _opt_out_by_message(conn: Connection, message_key: str, method: str, now: datetime) -> None:
    m = s.messages
    row = conn.execute(select(m.c.customer_key, m.c.channel).where(m.c.message_key == message_key)).first()
    if row is not None:
        record_consent_change(
            conn,
            row.customer_key,
            row.channel,
            CONSENT_PURPOSES,
            "withdrawn",
            origin="provider_optout",
            method=method,
            now=now,
        )


def customer_by_phone(conn: Connection, phone: str) -> str | None:
    """Return the customer whose mobile number is `phone` (E.164), if any."""
    c = s.customers
    row = conn.execute(
        select(c.c.customer_key).where(c.c.phone_e164 == phone, c.c.erased_at.is_(None))
    ).first()
    return str(row.customer_key) if row is not None else None


def handle_twilio_inbound(
    conn: Connection, params: Mapping[str, str], hash_key: bytes, now: datetime
) -> dict[str, Any]:
    """Apply an inbound SMS or WhatsApp: STOP withdraws consent on its channel, START restores service."""
    sender = params.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    phone = sender.removeprefix("whatsapp:")
    kind = classify_keyword(params.get("Body", ""))
    if params.get("OptOutType", "").upper() == "STOP":
        kind = Keyword.OPT_OUT
    elif params.get("OptOutType", "").upper() == "START":
        kind = Keyword.OPT_IN
    customer = customer_by_phone(conn, phone)
    result: dict[str, Any] = {
        "keyword": kind.value,
        "channel": channel,
        "customer_key": customer,
        "changed": 0,
    }
    if customer is None:
        audit(
            conn,
            "inbound.unmatched",
            details={
                "keyword": kind.value,
                "channel": channel,
                "phone_hash": pii_hash(hash_key, "phone", phone),
            },
        )
        return result
    if kind is Keyword.OPT_OUT:
        result["changed"] = record_consent_change(
            conn,
            customer,
            channel,
            CONSENT_PURPOSES,
            "withdrawn",
            origin=f"{channel}_reply",
            method="reply STOP",
            now=now,
        )
    elif kind is Keyword.OPT_IN:
        # START re-opens the channel for contract messages only; marketing needs its own explicit consent.
        result["changed"] = record_consent_change(
            conn,
            customer,
            channel,
            ("service", "dunning"),
            "granted",
            origin=f"{channel}_reply",
            method="reply START",
            now=now,
        )
    else:
        audit(
            conn,
            f"inbound.{kind.value}",
            subject_type="customer",
            subject_key=customer,
            details={"channel": channel},
        )
    return result


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def handle_sendgrid_events(
    conn: Connection, events: Iterable[Mapping[str, Any]], now: datetime
) -> dict[str, int]:
    """Apply a batch of SendGrid events: delivery status, bounces, unsubscribes and spam reports."""
    tally = {"events": 0, "applied": 0, "duplicates": 0, "consent_changes": 0, "unmatched": 0}
    m = s.messages
    for event in events:
        tally["events"] += 1
        name = str(event.get("event", ""))
        key = event.get("message_key")
        message_key = str(key) if key else None
        event_id = str(
            event.get("sg_event_id") or f"{event.get('sg_message_id')}:{name}:{event.get('timestamp')}"
        )
        before = conn.execute(
            select(s.delivery_events.c.event_id).where(s.delivery_events.c.event_id == f"sendgrid:{event_id}")
        ).first()
        if before is not None:
            tally["duplicates"] += 1
            continue
        if message_key is None:
            tally["unmatched"] += 1
        status = SENDGRID_STATUS.get(name)
        if name == "bounce" and event.get("type") == "blocked":
            status = "bounced"
        applied = apply_event(
            conn,
            event_id=f"sendgrid:{event_id}",
            provider="sendgrid",
            message_key=message_key,
            provider_message_id=str(event.get("sg_message_id") or "") or None,
            event=name,
            new_status=status,
            error_code=str(event.get("status") or "")[:32] or None,
            occurred_at=_epoch(event.get("timestamp")),
            now=now,
        )
        tally["applied"] += int(applied)
        if message_key and name in ("unsubscribe", "group_unsubscribe", "spamreport", "group_resubscribe"):
            owner = conn.execute(select(m.c.customer_key).where(m.c.message_key == message_key)).scalar()
            if owner is not None:
                granted = name == "group_resubscribe"
                tally["consent_changes"] += record_consent_change(
                    conn,
                    str(owner),
                    "email",
                    ("marketing",),
                    "granted" if granted else "withdrawn",
                    origin=f"sendgrid_{name}",
                    method="unsubscribe link" if "unsubscribe" in name else name,
                    now=now,
                )
    return tally


def in_doubt_evidence(conn: Connection, keys: Iterable[str]) -> pd.DataFrame:
    """Return the delivery events known for these messages (SendGrid in-doubt reconciliation)."""
    e = s.delivery_events
    rows = conn.execute(select(e.c.message_key, e.c.event).where(e.c.message_key.in_(list(keys)))).all()
    return pd.DataFrame(rows, columns=["message_key", "event"])
