"""Data-subject requests: export everything held about one customer (Art. 15), or erase it (Art. 17)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection, Select, Table, delete, insert, select, update

from tasks._prefect import STEP
from tasks.domain.consent import EXPLANATIONS, Reason
from tasks.domain.frames import records
from tasks.domain.markets import Market
from tasks.domain.rules import RULE_TITLES
from tasks.explain import consent_in_words, scorecard_in_words
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.repository import audit, pii_hash, utcnow

# Why each kept record survives an erasure (GDPR Art. 17(3)); shown in the export and on the rows.
KEPT_FOR = {
    "contracts": "Art. 17(3)(b): accounting and contract records kept under a legal obligation",
    "instalments": "Art. 17(3)(b): booking records kept under a legal obligation",
    "messages": "Art. 17(3)(e): proof of lawful contact (content removed)",
    "consents": "Art. 17(3)(e): proof of consent for messages already sent",
    "suppressions": "EU-07: keyed hash kept so the person is never contacted again",
}


class UnknownCustomer(LookupError):
    """No customer with this key is in the store."""


def _rows(conn: Connection, stmt: Any) -> list[dict[str, Any]]:
    return records(read_frame(conn, stmt))


def _held(table: Table) -> Select[Any]:
    """Select what the store holds about a person, less columns it computes for itself (the shard hash)."""
    return select(*(column for column in table.columns if column.computed is None))


def _deadline(market: Market | None, received: datetime) -> date:
    days = market.rules.consent.dsr_deadline_days if market is not None else 30
    return (received + timedelta(days=days)).date()


def open_request(
    conn: Connection, customer_key: str, kind: str, markets: Mapping[str, Market]
) -> tuple[int, date]:
    """Record a data-subject request with its legal deadline; return (request id, deadline)."""
    row = conn.execute(select(s.customers.c.market).where(s.customers.c.customer_key == customer_key)).first()
    if row is None:
        raise UnknownCustomer(customer_key)
    received = utcnow()
    deadline = _deadline(markets.get(row.market), received)
    request_id = conn.execute(
        insert(s.dsr_requests)
        .values(customer_key=customer_key, kind=kind, received_at=received, deadline=deadline, status="open")
        .returning(s.dsr_requests.c.request_id)
    ).scalar_one()
    audit(
        conn,
        f"dsr.{kind}.received",
        subject_type="customer",
        subject_key=customer_key,
        details={"request_id": request_id, "deadline": deadline.isoformat()},
    )
    return int(request_id), deadline


def close_request(
    conn: Connection, request_id: int, customer_key: str, kind: str, result: dict[str, Any]
) -> None:
    """Mark a request completed with what was done."""
    conn.execute(
        update(s.dsr_requests)
        .where(s.dsr_requests.c.request_id == request_id)
        .values(status="completed", completed_at=utcnow(), result=result)
    )
    audit(
        conn,
        f"dsr.{kind}.completed",
        subject_type="customer",
        subject_key=customer_key,
        details={"request_id": request_id, **{k: v for k, v in result.items() if k != "file"}},
    )


def export_customer(
    conn: Connection, customer_key: str, hash_key: bytes, request: dict[str, Any]
) -> dict[str, Any]:
    """Return everything held about one customer, with plain-language explanations."""
    cust = _rows(conn, _held(s.customers).where(s.customers.c.customer_key == customer_key))
    if not cust:
        raise UnknownCustomer(customer_key)
    person = cust[0]
    contract_rows = _rows(conn, select(s.contracts).where(s.contracts.c.customer_key == customer_key))
    contract_keys = [c["contract_key"] for c in contract_rows]
    instalments = _rows(conn, select(s.instalments).where(s.instalments.c.contract_key.in_(contract_keys)))
    consents = _rows(
        conn,
        select(s.consents).where(s.consents.c.customer_key == customer_key).order_by(s.consents.c.consent_id),
    )
    for record in consents:
        record["in_plain_words"] = consent_in_words(record)
    hashes = {
        kind: pii_hash(hash_key, kind, str(value))
        for kind, value in (("email", person.get("email")), ("phone", person.get("phone_e164")))
        if value
    }
    suppressions = _rows(
        conn, select(s.suppressions).where(s.suppressions.c.identifier_hash.in_(list(hashes.values())))
    )
    decisions = _rows(
        conn,
        select(s.decisions)
        .where(s.decisions.c.customer_key == customer_key)
        .order_by(s.decisions.c.decision_id),
    )
    for decision in decisions:
        decision["in_plain_words"] = EXPLANATIONS.get(Reason(decision["reason"]), decision["reason"])
        decision["rules"] = {r: RULE_TITLES.get(r, "") for r in str(decision["rule_ids"]).split(",") if r}
    messages = _rows(
        conn,
        select(
            s.messages.c.message_key,
            s.messages.c.playbook,
            s.messages.c.step,
            s.messages.c.channel,
            s.messages.c.purpose,
            s.messages.c.status,
            s.messages.c.planned_at,
            s.messages.c.sent_at,
            s.messages.c.locale,
            s.messages.c.subject,
            s.messages.c.body,
            s.messages.c.retention_basis,
        )
        .where(s.messages.c.customer_key == customer_key)
        .order_by(s.messages.c.planned_at),
    )
    segments = _rows(
        conn,
        _held(s.segment_assignments)
        .where(s.segment_assignments.c.customer_key == customer_key)
        .order_by(s.segment_assignments.c.cycle_id),
    )
    for row in segments:
        row["in_plain_words"] = scorecard_in_words(row)
    return {
        "request": request,
        "customer": person,
        "contracts": contract_rows,
        "instalments": instalments,
        "consents": consents,
        "suppression_entries": suppressions,
        "decisions": decisions,
        "messages": messages,
        "segments_and_scores": segments,
        "scoring_logic": (
            "Renewal risk is a transparent scorecard (config/segments.yaml): points for a short customer "
            "relationship, late payments in the last 12 months, low account activity and no automatic "
            "renewal add up to a score from 0 to 100 (low below 30, high from 60). When a learned model "
            "is active (model_version names it; docs/models.md), the score is instead its estimated chance "
            "of not renewing, in percent, and risk_reasons says what raised it. It decides which "
            "reminders and offers are sent, never credit or contract terms."
        ),
        "rewards": _rewards(conn, customer_key),
    }


def _rewards(conn: Connection, customer_key: str) -> list[dict[str, Any]]:
    table = s.metadata.tables.get("rewards")
    if table is None:
        return []
    return _rows(conn, select(table).where(table.c.customer_key == customer_key))


def erase_customer(conn: Connection, customer_key: str, hash_key: bytes) -> dict[str, Any]:
    """Remove a customer's personal data, keep (tagged) what the law needs, suppress the addresses."""
    row = conn.execute(
        select(s.customers.c.email, s.customers.c.phone_e164, s.customers.c.erased_at).where(
            s.customers.c.customer_key == customer_key
        )
    ).first()
    if row is None:
        raise UnknownCustomer(customer_key)
    now = utcnow()
    suppressed = 0
    for kind, value in (("email", row.email), ("phone", row.phone_e164)):
        if not value:
            continue
        digest = pii_hash(hash_key, kind, value)
        exists = conn.execute(
            select(s.suppressions.c.identifier_hash).where(s.suppressions.c.identifier_hash == digest)
        ).first()
        if exists is None:
            conn.execute(
                insert(s.suppressions).values(
                    identifier_hash=digest,
                    kind=kind,
                    scope="all",
                    reason="erasure",
                    retention_basis=KEPT_FOR["suppressions"],
                    created_at=now,
                )
            )
        else:
            conn.execute(
                update(s.suppressions).where(s.suppressions.c.identifier_hash == digest).values(scope="all")
            )
        suppressed += 1
    conn.execute(
        update(s.customers)
        .where(s.customers.c.customer_key == customer_key)
        .values(
            first_name=None, last_name=None, email=None, phone_e164=None, erased_at=now, row_hash="erased"
        )
    )
    contract_keys = select(s.contracts.c.contract_key).where(s.contracts.c.customer_key == customer_key)
    kept = {
        "contracts": conn.execute(
            update(s.contracts)
            .where(s.contracts.c.customer_key == customer_key)
            .values(retention_basis=KEPT_FOR["contracts"])
        ).rowcount,
        "instalments": conn.execute(
            update(s.instalments)
            .where(s.instalments.c.contract_key.in_(contract_keys))
            .values(retention_basis=KEPT_FOR["instalments"])
        ).rowcount,
        "messages": conn.execute(
            update(s.messages)
            .where(s.messages.c.customer_key == customer_key)
            .values(
                subject=None, body=None, body_html=None, retention_basis=KEPT_FOR["messages"], updated_at=now
            )
        ).rowcount,
        "consents": conn.execute(
            update(s.consents)
            .where(s.consents.c.customer_key == customer_key)
            .values(retention_basis=KEPT_FOR["consents"])
        ).rowcount,
    }
    removed = {
        "segment_assignments": conn.execute(
            delete(s.segment_assignments).where(s.segment_assignments.c.customer_key == customer_key)
        ).rowcount,
        "activity": conn.execute(
            delete(s.activity).where(s.activity.c.customer_key == customer_key)
        ).rowcount,
        "quarantine_rows": _drop_quarantined(conn, customer_key),
    }
    return {"suppressed_identifiers": suppressed, "kept": kept, "kept_for": KEPT_FOR, "removed": removed}


def _drop_quarantined(conn: Connection, customer_key: str) -> int:
    """Delete quarantined raw rows that carry this customer (they hold contact data)."""
    q = s.quarantine
    rows = read_frame(conn, select(q.c.quarantine_id, q.c.record_key, q.c.raw))
    if rows.empty:
        return 0
    hit = rows["record_key"].astype(str).str.split("|").map(lambda parts: customer_key in parts) | rows[
        "raw"
    ].map(lambda raw: isinstance(raw, dict) and raw.get("customer_key") == customer_key)
    ids = [int(v) for v in rows.loc[hit, "quarantine_id"]]
    if ids:
        conn.execute(delete(q).where(q.c.quarantine_id.in_(ids)))
    return len(ids)


def suppressed_addresses(conn: Connection, frame: pd.DataFrame, hash_key: bytes) -> pd.DataFrame:
    """Return customers with suppressed emails and phones removed, so a re-import never restores contact."""
    digests = set(
        read_frame(conn, select(s.suppressions.c.identifier_hash).where(s.suppressions.c.scope == "all"))[
            "identifier_hash"
        ]
    )
    if not digests or frame.empty:
        return frame
    out = frame.copy()
    for column, kind in (("email", "email"), ("phone", "phone")):
        hit = out[column].map(lambda v, k=kind: bool(v) and pii_hash(hash_key, k, str(v)) in digests)
        out.loc[hit, column] = None
    return out


def write_export(directory: Path, request_id: int, customer_key: str, payload: dict[str, Any]) -> Path:
    """Write the export as JSON next to the store (never into Prefect) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dsr-{request_id}-{customer_key}.json"
    path.write_text(json.dumps(payload, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    path.chmod(0o600)
    return path


@task(name="dsr-export", **STEP)
def export_task(customer_key: str) -> dict[str, Any]:
    """Export one customer's data to a file and record the request; return counts and the file path."""
    rt = get_runtime()
    key = rt.settings.pii_hash_key.get_secret_value().encode()
    with rt.engine.begin() as conn:
        request_id, deadline = open_request(conn, customer_key, "access", rt.markets)
        request = {
            "request_id": request_id,
            "kind": "access (GDPR Art. 15)",
            "deadline": deadline.isoformat(),
        }
        payload = export_customer(conn, customer_key, key, request)
        path = write_export(rt.settings.home / "dsr", request_id, customer_key, payload)
        result = {
            "file": str(path),
            "deadline": deadline.isoformat(),
            **{k: len(v) for k, v in payload.items() if isinstance(v, list)},
        }
        close_request(conn, request_id, customer_key, "access", result)
    get_run_logger().info(
        "access request %s for %s answered (deadline %s)", request_id, customer_key, deadline
    )
    return result


@task(name="dsr-erase", **STEP)
def erase_task(customer_key: str) -> dict[str, Any]:
    """Erase one customer's personal data and record the request; return what was kept and removed."""
    rt = get_runtime()
    key = rt.settings.pii_hash_key.get_secret_value().encode()
    with rt.engine.begin() as conn:
        request_id, deadline = open_request(conn, customer_key, "erasure", rt.markets)
        result = {**erase_customer(conn, customer_key, key), "deadline": deadline.isoformat()}
        close_request(conn, request_id, customer_key, "erasure", result)
    get_run_logger().info("erasure request %s for %s done (deadline %s)", request_id, customer_key, deadline)
    return result
