"""Consent gate: one decision per planned message, recorded with its rule ids and consent record."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import STEP
from tasks.domain.consent import choose_channels, decide, latest_consents
from tasks.domain.summary import counts
from tasks.runtime import get_runtime
from tasks.store.repository import (
    insert_decisions,
    read_consents,
    read_contacts,
    read_messages,
    set_status,
    utcnow,
)


def decide_for(conn: Connection, messages: pd.DataFrame, hash_key: bytes) -> pd.DataFrame:
    """Return the gate's decisions for `messages` from the store's current contacts and consents."""
    customers = messages["customer_key"].unique().tolist()
    contacts = read_contacts(conn, customers, hash_key)
    consents = latest_consents(read_consents(conn, customers))
    return decide(messages, contacts, consents)


def decision_rows(messages: pd.DataFrame, decisions: pd.DataFrame, cycle_id: int, stage: str) -> pd.DataFrame:
    """Return decision rows ready to store."""
    df = decisions.merge(messages[["message_key", "customer_key", "channel", "purpose"]], on="message_key")
    return df.assign(cycle_id=cycle_id, stage=stage, decided_at=utcnow())


def gate_cycle(conn: Connection, cycle_id: int, hash_key: bytes) -> dict[str, Any]:
    """Decide every planned message of the cycle and move it to queued, standby or blocked."""
    planned = read_messages(conn, cycle_id, ["planned"])
    if planned.empty:
        return {"decided": 0, "by_outcome": {}, "by_reason": {}, "by_status": {}}
    decisions = decide_for(conn, planned, hash_key)
    insert_decisions(conn, decision_rows(planned, decisions, cycle_id, "plan"))
    status = choose_channels(planned, decisions)
    set_status(conn, pd.DataFrame({"message_key": planned["message_key"], "status": status}), utcnow())
    return {
        "decided": len(decisions),
        "by_outcome": counts(decisions["outcome"]),
        "by_reason": counts(decisions["reason"]),
        "by_status": counts(status),
    }


@task(name="consent-gate", **STEP)
def gate(cycle_id: int) -> dict[str, Any]:
    """Run the consent gate over the cycle's planned messages."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        stats = gate_cycle(conn, cycle_id, rt.settings.pii_hash_key.get_secret_value().encode())
    get_run_logger().info("gate: %s", stats["by_reason"])
    return stats
