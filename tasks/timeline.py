"""A customer's timeline: segments, decisions, messages and deliveries, rewards and consents, in order."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Connection, select

from tasks.domain.consent import EXPLANATIONS, Reason
from tasks.domain.frames import records
from tasks.explain import consent_in_words, scorecard_in_words
from tasks.store import schema as s
from tasks.store.bulk import read_frame


def _when(value: Any) -> pd.Timestamp:
    return pd.Timestamp(value, tz="UTC") if pd.Timestamp(value).tzinfo is None else pd.Timestamp(value)


def customer_timeline(conn: Connection, customer_key: str) -> pd.DataFrame:
    """Return the customer's events as (at, kind, what, detail), oldest first; no contact data."""
    events: list[dict[str, Any]] = []
    sa_, cy = s.segment_assignments, s.cycles
    for row in records(
        read_frame(
            conn,
            select(sa_, cy.c.started_at)
            .join(cy, cy.c.cycle_id == sa_.c.cycle_id)
            .where(sa_.c.customer_key == customer_key),
        )
    ):
        events.append(
            {
                "at": row["started_at"],
                "kind": "segment",
                "what": f"{row['contract_key']}: {row['segment']} "
                f"({row['renewal_window']} days to term end, DPD {row['dpd_bucket']})",
                "detail": scorecard_in_words(row) + f" Model {row['model_version']}.",
            }
        )
    d = s.decisions
    for row in records(read_frame(conn, select(d).where(d.c.customer_key == customer_key))):
        extra = f"; deferred until {row['deferred_until']}" if row["deferred_until"] is not None else ""
        events.append(
            {
                "at": row["decided_at"],
                "kind": "decision",
                "what": f"{row['message_key']}: {row['stage']} {row['outcome']} ({row['reason']})",
                "detail": EXPLANATIONS.get(Reason(row["reason"]), row["reason"])
                + f"; rules {row['rule_ids']}{extra}",
            }
        )
    m = s.messages
    for row in records(
        read_frame(
            conn,
            select(
                m.c.message_key,
                m.c.channel,
                m.c.purpose,
                m.c.status,
                m.c.planned_at,
                m.c.sent_at,
                m.c.delivered_at,
                m.c.error_code,
            ).where(m.c.customer_key == customer_key),
        )
    ):
        events.append(
            {
                "at": row["planned_at"],
                "kind": "planned",
                "what": row["message_key"],
                "detail": f"{row['channel']} {row['purpose']}",
            }
        )
        if row["sent_at"] is not None:
            final = row["status"] + (f" ({row['error_code']})" if row["error_code"] else "")
            events.append(
                {"at": row["sent_at"], "kind": "sent", "what": row["message_key"], "detail": f"now {final}"}
            )
        if row["delivered_at"] is not None:
            events.append(
                {
                    "at": row["delivered_at"],
                    "kind": "delivered",
                    "what": row["message_key"],
                    "detail": row["status"],
                }
            )
    c = s.consents
    for row in records(read_frame(conn, select(c).where(c.c.customer_key == customer_key))):
        events.append(
            {
                "at": row["withdrawn_at"] or row["captured_at"],
                "kind": "consent",
                "what": f"{row['channel']} {row['purpose']} {row['status']}",
                "detail": consent_in_words(row),
            }
        )
    rewards = s.metadata.tables.get("rewards")
    if rewards is not None:
        for row in records(read_frame(conn, select(rewards).where(rewards.c.customer_key == customer_key))):
            events.append(
                {
                    "at": row.get("granted_at") or row.get("created_at"),
                    "kind": "reward",
                    "what": f"{row.get('rule')}: {row.get('status')}",
                    "detail": f"{row.get('value')} {row.get('currency', '')}".strip(),
                }
            )
    if not events:
        return pd.DataFrame(columns=["at", "kind", "what", "detail"])
    frame = pd.DataFrame(events).dropna(subset=["at"])
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="mixed")
    return frame.sort_values(["at", "kind"], kind="stable").reset_index(drop=True)
