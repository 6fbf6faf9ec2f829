"""Data-subject requests and retention on a real store (compliance cases 10, 11, 24, 25)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, func, select, text

from config.loader import load_retention
from tasks.dsr import erase_customer, export_customer, open_request
from tasks.explain import explain_customer
from tasks.retention import purge
from tasks.store import schema as s
from tests.support.factories import ROOT, markets, raw_set
from tests.support.pipeline import HASH_KEY, Pipeline

AS_OF = date(2026, 11, 22)
EMAIL, PHONE_RAW, PHONE = "anna.schmidt@example.com", "0151 23456789", "+4915123456789"


def _portfolio(**extra: list[dict[str, Any]]) -> Any:
    rows: dict[str, list[dict[str, Any]]] = {
        "customers": [{"customer_key": "C1", "email": EMAIL, "phone": PHONE_RAW, "first_name": "Anna"}],
        "contracts": [
            {"contract_key": "K1", "customer_key": "C1", "term_end": str(AS_OF + timedelta(days=30))}
        ],
        "instalments": [{"instalment_key": "I1", "contract_key": "K1"}],
        "activity": [{"customer_key": "C1"}],
        "consents": [{"customer_key": "C1", "text_version": "mkt-email-v3"}],
    }
    for name, more in extra.items():
        rows[name] = rows.get(name, []) + more
    return raw_set(**rows)


@pytest.fixture
def served(engine: Engine) -> Pipeline:
    pipe = Pipeline(engine)
    pipe.load(_portfolio())
    stats = pipe.cycle(AS_OF)
    assert stats["dispatch"]["sent"] == 1
    return pipe


def _every_text_value(engine: Engine) -> str:
    meta = MetaData()
    meta.reflect(engine)
    chunks = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                chunks.append(json.dumps([str(v) for v in row]))
    return "\n".join(chunks)


def _ledger(engine: Engine) -> tuple[int, int, int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(s.messages)).scalar_one(),
            conn.execute(select(func.count()).where(s.messages.c.status == "sent")).scalar_one(),
            conn.execute(select(func.count()).select_from(s.contracts)).scalar_one(),
            conn.execute(select(func.count()).select_from(s.decisions)).scalar_one(),
        )


def test_case10_erasure_leaves_no_contact_data_and_keeps_the_ledger(served: Pipeline) -> None:
    engine = served.engine
    assert EMAIL in _every_text_value(engine)
    before = _ledger(engine)
    with engine.begin() as conn:
        result = erase_customer(conn, "C1", HASH_KEY)
    everything = _every_text_value(engine)
    for value in (EMAIL, PHONE, "Anna", "Schmidt"):
        assert value not in everything, value
    assert _ledger(engine) == before
    assert result["kept"]["contracts"] == 1 and result["removed"]["segment_assignments"] >= 1
    with engine.connect() as conn:
        basis = conn.execute(select(s.contracts.c.retention_basis)).scalar_one()
        suppressed = conn.execute(select(func.count()).select_from(s.suppressions)).scalar_one()
    assert basis.startswith("Art. 17(3)(b)")
    assert suppressed == 2


def test_case10_reimport_after_erasure_does_not_restore_contact(served: Pipeline) -> None:
    engine = served.engine
    with engine.begin() as conn:
        erase_customer(conn, "C1", HASH_KEY)
    twin = {"customer_key": "C2", "email": EMAIL, "phone": PHONE_RAW, "first_name": "Anna"}
    stats = served.load(_portfolio(customers=[twin], consents=[{"customer_key": "C2"}]))
    assert stats["suppressed_addresses_dropped"] == 4  # C1 re-imported and its twin C2, email + phone each
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.customers.c.customer_key, s.customers.c.email, s.customers.c.erased_at)
        ).all()
    assert {r.customer_key: (r.email, r.erased_at is not None) for r in rows} == {
        "C1": (None, True),
        "C2": (None, False),
    }
    later = served.cycle(AS_OF + timedelta(days=16))
    assert later["dispatch"]["sent"] == 0


def _days_after(before: datetime, days: int) -> set[date]:
    """Return the due dates a request opened between `before` and now can have (a run may cross midnight)."""
    return {(moment + timedelta(days=days)).date() for moment in (before, datetime.now(UTC))}


def test_case11_access_export_holds_consent_evidence_messages_scores_and_explanations(
    served: Pipeline,
) -> None:
    engine = served.engine
    before = datetime.now(UTC)
    with engine.begin() as conn:
        request_id, deadline = open_request(conn, "C1", "access", markets())
        export = export_customer(conn, "C1", HASH_KEY, {"request_id": request_id})
    assert deadline in _days_after(before, 30)
    (record,) = export["consents"]
    assert record["text_version"] == "mkt-email-v3" and "text shown: mkt-email-v3" in record["in_plain_words"]
    assert "double opt-in confirmed" in record["in_plain_words"]
    assert next(m for m in export["messages"] if m["status"] == "sent")["body"]
    assert export["decisions"] and export["decisions"][0]["in_plain_words"]
    assert export["segments_and_scores"][0]["in_plain_words"].startswith("Renewal risk")
    assert "scorecard" in export["scoring_logic"]
    # The shard hash is the store's own bookkeeping, not data about the person.
    assert "shard_hash" not in export["customer"] and "shard_hash" not in export["segments_and_scores"][0]
    json.dumps(export, default=str)


def test_case11_kenyan_access_request_is_due_in_seven_days(engine: Engine) -> None:
    pipe = Pipeline(engine)
    pipe.load(
        raw_set(
            customers=[{"customer_key": "KE1", "market": "KE", "locale": "en-KE", "phone": "0712 345678"}]
        )
    )
    before = datetime.now(UTC)
    with engine.begin() as conn:
        _, deadline = open_request(conn, "KE1", "access", markets())
    assert deadline in _days_after(before, 7)


def test_case24_the_officer_can_trace_a_sent_reward_message_to_its_consent_and_opt_out(
    engine: Engine,
) -> None:
    pipe = Pipeline(engine)
    high_risk = {"customer_key": "C1", "customer_since": str(AS_OF - timedelta(days=100)), "email": EMAIL}
    pipe.load(
        raw_set(
            customers=[high_risk],
            contracts=[
                {"contract_key": "K1", "customer_key": "C1", "term_end": str(AS_OF + timedelta(days=6))}
            ],
            activity=[{"customer_key": "C1", "transactions": "0"}],
            consents=[{"customer_key": "C1", "text_version": "mkt-email-v3"}],
        )
    )
    stats = pipe.cycle(AS_OF)
    assert stats["dispatch"]["sent"] >= 1
    with engine.connect() as conn:
        chain = explain_customer(conn, "C1")
    offer = next(m for m in chain if "T-7-offer" in m["what"])
    assert offer["status"] == "sent" and offer["marketing_content"]
    (decision,) = offer["decisions"]
    assert decision["outcome"] == "allowed" and decision["reason"] == "CONSENT"
    assert any(r.startswith("EU-02") for r in decision["rules"])
    assert decision["policy_version"].startswith("gate-v2.0+")
    assert (
        "text shown: mkt-email-v3" in decision["consent"] and "double opt-in confirmed" in decision["consent"]
    )
    assert offer["opt_out"] == "unsubscribe link included"


def test_case25_retention_purge_removes_old_content_and_keeps_tagged_proof(
    served: Pipeline, tmp_path: Any
) -> None:
    engine = served.engine
    old_customer = {"customer_key": "C3", "email": "old.customer@example.com", "phone": ""}
    old_contract = {"contract_key": "K3", "customer_key": "C3", "status": "lapsed", "term_end": "2021-01-31"}
    served.load(
        _portfolio(
            customers=[old_customer, {"customer_key": "C4", "phone": "12345"}], contracts=[old_contract]
        )
    )
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE messages SET sent_at = :t WHERE status = 'sent'"), {"t": now - timedelta(days=200)}
        )
        conn.execute(text("UPDATE quarantine SET created_at = :t"), {"t": now - timedelta(days=40)})
    before = _ledger(engine)
    policy = load_retention(ROOT / "config")
    with engine.begin() as conn:
        result = purge(conn, policy, HASH_KEY, now, tmp_path / "dsr")
    assert result["message_contents_purged"] == 1
    assert result["inactive_customers_erased"] == 1
    assert result["quarantine_rows_purged"] >= 1
    assert _ledger(engine) == before
    with engine.connect() as conn:
        message = conn.execute(
            select(s.messages.c.body, s.messages.c.retention_basis).where(s.messages.c.status == "sent")
        ).one()
        c3 = conn.execute(
            select(s.customers.c.email, s.customers.c.erased_at).where(s.customers.c.customer_key == "C3")
        ).one()
        raws = conn.execute(select(func.count()).where(s.quarantine.c.raw.is_not(None))).scalar_one()
        untagged = conn.execute(
            select(func.count()).where(s.consents.c.retention_basis.is_(None))
        ).scalar_one()
        suppressions = conn.execute(select(s.suppressions.c.retention_basis)).scalars().all()
    assert message.body is None and "ledger kept: Art. 17(3)(e)" in message.retention_basis
    assert c3.email is None and c3.erased_at is not None
    assert raws == 0 and untagged == 0
    assert suppressions and all(basis.startswith("EU-07") for basis in suppressions)
    assert "old.customer@example.com" not in _every_text_value(engine)
