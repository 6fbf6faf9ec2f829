"""Small builders of raw and canonical rows for tests."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.loader import load_markets
from tasks.domain.contract import CONTRACT, ENTITY_ORDER, Entity
from tasks.domain.markets import Market
from tasks.sources.raw import RawFrame

ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count(1)


def markets() -> dict[str, Market]:
    """Return the configured markets."""
    return load_markets(ROOT / "config")


def message_row(i: int, customer_key: str, now: datetime, **fields: Any) -> dict[str, Any]:
    """Return message `i` of playbook "pb" as stored: a rendered T-30 SMS in cycle 1 unless `fields` say."""
    return {
        "message_key": f"pb:K{i:06d}:20261222:T-30:sms",
        "cycle_id": 1,
        "playbook": "pb",
        "contract_key": f"K{i:06d}",
        "customer_key": customer_key,
        "market": "GB",
        "step": "T-30",
        "channel": "sms",
        "rank": 0,
        "send_rule": "first",
        "template": "renewal_notice",
        "purpose": "service",
        "anchor_date": date(2026, 12, 22),
        "status": "rendered",
        "attempts": 0,
        "planned_at": now,
        "updated_at": now,
        **fields,
    }


def random_ref(prefix: str) -> str:
    """Return a unique key with a readable prefix."""
    return f"{prefix}{next(_counter):07d}"


CUSTOMER = {
    "customer_key": "C0000001",
    "market": "DE",
    "locale": "de-DE",
    "timezone": "",
    "first_name": "Anna",
    "last_name": "Schmidt",
    "email": "anna.schmidt@example.com",
    "phone": "0151 23456789",
    "customer_since": "2019-04-01",
    "region": "",
}
CONTRACT_ROW = {
    "contract_key": "K0000001",
    "customer_key": "C0000001",
    "product": "loan",
    "status": "active",
    "start_date": "2025-12-22",
    "term_end": "2026-12-22",
    "auto_renew": "false",
    "price": "119.90",
    "currency": "EUR",
    "renewed_at": "",
}
INSTALMENT = {
    "instalment_key": "I0000001",
    "contract_key": "K0000001",
    "due_date": "2026-10-01",
    "amount": "250.00",
    "currency": "EUR",
    "paid_date": "2026-10-01",
}
ACTIVITY = {"customer_key": "C0000001", "month": "2026-10", "transactions": "7", "last_active": "2026-10-28"}
CONSENT = {
    "customer_key": "C0000001",
    "channel": "email",
    "purpose": "marketing",
    "status": "granted",
    "captured_at": "2024-03-05T10:12:00Z",
    "lawful_basis": "consent",
    "source": "web:signup",
    "text_version": "mkt-email-v3",
    "doi_confirmed_at": "2024-03-05T10:20:00Z",
    "withdrawn_at": "",
    "withdrawal_method": "",
    "sale_reference": "",
    "notice_version": "",
    "expires_at": "",
    "controller": "",
    "bundled": "false",
    "written": "false",
}
DEFAULTS: dict[Entity, dict[str, str]] = {
    Entity.CUSTOMERS: CUSTOMER,
    Entity.CONTRACTS: CONTRACT_ROW,
    Entity.INSTALMENTS: INSTALMENT,
    Entity.ACTIVITY: ACTIVITY,
    Entity.CONSENTS: CONSENT,
}


def raw(entity: Entity, rows: list[Mapping[str, Any]], source: str | None = None) -> RawFrame:
    """Return a RawFrame of `rows` (each overriding the entity's default row), lines starting at 2."""
    full = [{**DEFAULTS[entity], **{k: str(v) for k, v in r.items()}} for r in rows]
    frame = pd.DataFrame(full, columns=list(CONTRACT[entity].column_names), dtype=str)
    return RawFrame(entity, source or f"{entity.value}.csv", frame, pd.Series(range(2, len(rows) + 2)))


def raw_set(**rows: list[Mapping[str, Any]]) -> dict[Entity, RawFrame]:
    """Return raw frames for every entity, empty unless rows are given by entity name."""
    return {e: raw(e, rows.get(e.value, [])) for e in ENTITY_ORDER}


def write_csvs(directory: Path, frames: Mapping[Entity, RawFrame]) -> None:
    """Write each raw frame as <entity>.csv into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for entity, frame in frames.items():
        frame.frame.to_csv(directory / f"{entity.value}.csv", index=False)
