"""Explanations in plain words for compliance officers and data subjects: decisions, consents, scores."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, select

from tasks.domain.consent import EXPLANATIONS, Reason
from tasks.domain.frames import records
from tasks.domain.rules import RULE_TITLES
from tasks.store import schema as s
from tasks.store.bulk import read_frame

_FACTOR_WORDS = {
    "tenure": "a short customer relationship",
    "late_payments": "late payments in the last 12 months",
    "low_activity": "little account activity",
    "no_auto_renew": "no automatic renewal",
}


def _when(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M UTC")


def consent_in_words(record: dict[str, Any]) -> str:
    """Return one consent record as a sentence with its evidence (GDPR Art. 7(1))."""
    scope = "every channel" if record["channel"] == "all" else record["channel"]
    if record["status"] == "withdrawn":
        text = f"Objection / withdrawal for {record['purpose']} on {scope}"
        text += f", on {_when(record.get('withdrawn_at'))}" if record.get("withdrawn_at") is not None else ""
        if record.get("withdrawal_method"):
            text += f" by {record['withdrawal_method']}"
    else:
        basis = {
            "consent": "consent",
            "soft_opt_in": "soft opt-in",
            "implied": "implied consent",
            "contract": "the contract",
        }.get(str(record.get("lawful_basis")), str(record.get("lawful_basis")))
        captured = _when(record.get("captured_at"))
        text = f"{record['purpose'].capitalize()} on {scope} granted by {basis} on {captured}"
    details = []
    if record.get("source"):
        details.append(f"captured via {record['source']}")
    if record.get("text_version"):
        details.append(f"text shown: {record['text_version']}")
    if record.get("doi_confirmed_at") is not None and _when(record.get("doi_confirmed_at")):
        details.append(f"double opt-in confirmed {_when(record['doi_confirmed_at'])}")
    if record.get("sale_reference"):
        details.append(f"sale {record['sale_reference']}")
    if record.get("notice_version"):
        details.append(f"opt-out notice {record['notice_version']}")
    if record.get("expires_at") is not None and _when(record.get("expires_at")):
        details.append(f"expires {_when(record['expires_at'])}")
    if record.get("bundled"):
        details.append("captured only by accepting the terms")
    if record.get("written"):
        details.append("written consent")
    details.append(f"record #{record['consent_id']}, origin {record.get('origin', 'crm')}")
    return text + " (" + "; ".join(details) + ")."


def scorecard_in_words(row: dict[str, Any]) -> str:
    """Return a segment row's renewal-risk score and what drove it, in plain words (its reasons if stored)."""
    reasons = row.get("risk_reasons")
    # Rows segmented before reasons were stored have none (NULL); an empty text means nothing stood out.
    if reasons is None or (not isinstance(reasons, str) and pd.isna(reasons)):
        factors = [f.split("+")[0] for f in str(row.get("risk_factors") or "").split(",") if f]
        reasons = ", ".join(_FACTOR_WORDS.get(f, f) for f in factors)
    score, band = row.get("risk_score"), row.get("risk_band")
    if str(row.get("model_version") or "scorecard").startswith("scorecard"):
        text = f"Renewal risk {score} of 100 ({band}), driven by {reasons or 'nothing in particular'}."
    else:
        why = f"mostly because of: {reasons}." if reasons else "with nothing standing out."
        text = (
            f"Renewal risk {score} of 100 ({band}): the learned model puts the chance of not renewing at "
            f"about {score}%, {why}"
        )
    if row.get("profiling_objection"):
        text += " You objected to marketing, so this score is never used to select you for offers."
    return text


def rules_in_words(rule_ids: str) -> list[str]:
    """Return each rule id with its title."""
    return [f"{r}: {RULE_TITLES.get(r, 'see compliance rules')}" for r in rule_ids.split(",") if r]


def latest_cycle_for(conn: Connection, customer_key: str) -> int | None:
    """Return the latest cycle that planned a message for the customer."""
    m = s.messages
    value = conn.execute(select(func.max(m.c.cycle_id)).where(m.c.customer_key == customer_key)).scalar()
    return int(value) if value is not None else None


def explain_customer(
    conn: Connection, customer_key: str, cycle_id: int | None = None
) -> list[dict[str, Any]]:
    """Return, per message of a customer in a cycle: decisions, rules, policy, consent record, opt-out."""
    cycle = cycle_id if cycle_id is not None else latest_cycle_for(conn, customer_key)
    if cycle is None:
        return []
    m, d, c = s.messages, s.decisions, s.consents
    messages = read_frame(
        conn,
        select(
            m.c.message_key,
            m.c.playbook,
            m.c.step,
            m.c.channel,
            m.c.purpose,
            m.c.has_offer,
            m.c.offer_removed,
            m.c.status,
            m.c.deferred_until,
            m.c.sent_at,
            m.c.subject,
            m.c.body,
        )
        .where(m.c.customer_key == customer_key)
        .where(m.c.message_key.in_(select(d.c.message_key).where(d.c.cycle_id == cycle)))
        .order_by(m.c.step, m.c.rank),
    )
    decisions = read_frame(
        conn,
        select(d).where(d.c.customer_key == customer_key, d.c.cycle_id == cycle).order_by(d.c.decision_id),
    )
    consents = read_frame(conn, select(c).where(c.c.customer_key == customer_key))
    by_id = {int(r["consent_id"]): r for r in records(consents)}
    out = []
    for msg in records(messages):
        chain = []
        for dec in records(decisions.loc[decisions["message_key"] == msg["message_key"]]):
            consent_id = dec["consent_id"]
            record = by_id.get(int(consent_id)) if consent_id is not None else None
            chain.append(
                {
                    "stage": dec["stage"],
                    "decided_at": _when(dec["decided_at"]),
                    "outcome": dec["outcome"],
                    "reason": dec["reason"],
                    "why": EXPLANATIONS.get(Reason(dec["reason"]), dec["reason"]),
                    "rules": rules_in_words(str(dec["rule_ids"])),
                    "policy_version": dec["policy_version"],
                    "deferred_until": _when(dec["deferred_until"]),
                    "notes": dec["notes"],
                    "consent": consent_in_words(record) if record is not None else None,
                }
            )
        marketing = msg["purpose"] == "marketing" or (msg["has_offer"] and not msg["offer_removed"])
        out.append(
            {
                "message_key": msg["message_key"],
                "what": f"{msg['playbook']} {msg['step']} by {msg['channel']} ({msg['purpose']})",
                "status": msg["status"],
                "sent_at": _when(msg["sent_at"]),
                "marketing_content": bool(marketing),
                "opt_out": _opt_out(msg) if marketing else "not needed (no marketing content)",
                "decisions": chain,
            }
        )
    return out


def _opt_out(msg: dict[str, Any]) -> str:
    text = f"{msg.get('subject') or ''}\n{msg.get('body') or ''}"
    if msg.get("body") is None:
        return "content not rendered or no longer retained"
    if "/unsubscribe" in text:
        return "unsubscribe link included"
    if "STOP" in text:
        return "STOP keyword included"
    return "NO opt-out found in the content"
