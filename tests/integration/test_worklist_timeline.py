"""The specialist's worklist and the customer timeline."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, literal, select

from config.loader import load_playbook, load_worklist
from tasks.store import schema as s
from tasks.timeline import customer_timeline
from tasks.tracking import CONSENT_PURPOSES, record_consent_change
from tasks.worklist import build_worklist, export_csv, filter_worklist
from tests.fakes.senders import FakeSender
from tests.support.factories import ROOT, raw_set
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 24)
NOON = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
FX = {"EUR": 1, "GBP": 1.17}


class Failing(FakeSender):
    """Refuses every message permanently."""

    def send(self, batch):  # type: ignore[no-untyped-def]
        from tasks.channels.base import SendResult, SendStatus

        return [SendResult(m.message_key, SendStatus.FAILED, "fake", error_code="21614") for m in batch]


def _served(engine: Engine) -> Pipeline:
    pipe = Pipeline(engine, playbook_id="all")
    pipe.senders["sms"] = Failing()
    customers = [
        {"customer_key": "LATE", "email": "late@example.com", "phone": ""},
        {
            "customer_key": "RISKY",
            "email": "risky@example.com",
            "phone": "",
            "customer_since": str(AS_OF - timedelta(days=90)),
        },
        {"customer_key": "NOREACH", "email": "", "phone": "0151 23456789"},
    ]
    contracts = [
        {"contract_key": "KLATE", "customer_key": "LATE", "term_end": "2027-06-30"},
        {
            "contract_key": "KRISKY",
            "customer_key": "RISKY",
            "price": "2400.00",
            "term_end": str(AS_OF + timedelta(days=40)),
        },
        {"contract_key": "KNOREACH", "customer_key": "NOREACH", "term_end": str(AS_OF + timedelta(days=14))},
    ]
    instalments = [
        {
            "instalment_key": "I30",
            "contract_key": "KLATE",
            "amount": "310.00",
            "due_date": str(AS_OF - timedelta(days=30)),
            "paid_date": "",
        }
    ]
    activity = [{"customer_key": "RISKY", "transactions": "0"}]
    pipe.load(raw_set(customers=customers, contracts=contracts, instalments=instalments, activity=activity))
    pipe.cycle(AS_OF, now=NOON)
    return pipe


def _worklist(engine: Engine):  # type: ignore[no-untyped-def]
    books = [load_playbook(ROOT / "config", p) for p in ("repayment-ladder", "renewal-standard")]
    with engine.connect() as conn:
        return build_worklist(conn, 1, books, load_worklist(ROOT / "config"), FX, NOON - timedelta(days=7))


def test_worklist_escalates_late_payers_risky_renewals_and_unreachable_customers(engine: Engine) -> None:
    _served(engine)
    rows = _worklist(engine)
    reasons = dict(zip(rows["customer_key"], rows["reason"], strict=False))
    assert reasons == {"RISKY": "renewal at risk", "LATE": "late payment", "NOREACH": "not reached"}
    assert rows["customer_key"].tolist()[0] == "RISKY", "sorted by value at risk (2,400 EUR first)"
    late = rows.set_index("customer_key").loc["LATE"]
    assert late["detail"].endswith("reached step D+30") and late["value_at_risk_eur"] == 310.0
    assert set(rows["owner"]) == {"team-dach"}
    assert "sms failed (21614)" in rows.set_index("customer_key").loc["NOREACH", "detail"]
    assert rows.set_index("customer_key").loc["RISKY", "risk_in_words"].startswith("Renewal risk")
    assert filter_worklist(rows, "FR", None).empty


def test_a_stop_reply_is_escalated_on_the_customers_most_valuable_contract(engine: Engine) -> None:
    _served(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(s.contracts).from_select(
                [c.name for c in s.contracts.c],
                select(
                    *(
                        literal("KLATE-2").label(c.name)
                        if c.name == "contract_key"
                        else literal(100).label(c.name)
                        if c.name == "price"
                        else c
                        for c in s.contracts.c
                    )
                ).where(s.contracts.c.contract_key == "KLATE"),
            )
        )
        conn.execute(
            insert(s.segment_assignments).from_select(
                [c.name for c in s.segment_assignments.c if c.name != "shard_hash"],
                select(
                    *(
                        literal("KLATE-2").label(c.name) if c.name == "contract_key" else c
                        for c in s.segment_assignments.c
                        if c.name != "shard_hash"
                    )
                ).where(s.segment_assignments.c.contract_key == "KLATE"),
            )
        )
        record_consent_change(
            conn,
            "LATE",
            "sms",
            CONSENT_PURPOSES,
            "withdrawn",
            origin="sms_reply",
            method="STOP",
            now=NOON - timedelta(hours=1),
        )
    rows = _worklist(engine)
    stop = rows.loc[rows["reason"] == "replied STOP"].set_index("customer_key").loc["LATE"]
    assert stop["contract_key"] == "KLATE" and stop["detail"] == "opted out of sms"
    late = rows.loc[rows["reason"] == "late payment"].set_index("customer_key").loc["LATE"]
    assert stop["risk_band"] == late["risk_band"] and stop["value_at_risk_eur"] > 100


def test_worklist_of_a_cycle_without_segment_rows_is_empty(engine: Engine) -> None:
    pipe = Pipeline(engine, playbook_id="all")
    pipe.load(raw_set(customers=[], contracts=[], instalments=[], activity=[]))
    pipe.cycle(AS_OF, now=NOON)
    rows = _worklist(engine)
    assert rows.empty
    assert list(rows.columns)[:3] == ["customer_key", "market", "owner"]


def test_worklist_csv_has_contact_details_only_when_asked(engine: Engine, tmp_path: Path) -> None:
    _served(engine)
    rows = _worklist(engine)
    with engine.connect() as conn:
        plain = export_csv(conn, rows, tmp_path / "plain.csv", with_contacts=False).read_text()
        full = export_csv(conn, rows, tmp_path / "full.csv", with_contacts=True).read_text()
    assert "late@example.com" not in plain
    assert "late@example.com" in full


def test_timeline_lists_segments_decisions_messages_and_consents_in_order(engine: Engine) -> None:
    pipe = Pipeline(engine)
    pipe.load(
        raw_set(
            customers=[{"customer_key": "C1", "email": "c1@example.com", "phone": ""}],
            contracts=[
                {"contract_key": "K1", "customer_key": "C1", "term_end": str(AS_OF + timedelta(days=30))}
            ],
            consents=[{"customer_key": "C1"}],
        )
    )
    pipe.cycle(AS_OF, now=NOON)
    with engine.connect() as conn:
        events = customer_timeline(conn, "C1")
    kinds = events["kind"].tolist()
    assert kinds[0] == "consent" and {"segment", "decision", "planned", "sent"} <= set(kinds)
    assert events["at"].is_monotonic_increasing
    text = " ".join(events["what"].astype(str)) + " ".join(events["detail"].astype(str))
    assert "c1@example.com" not in text
