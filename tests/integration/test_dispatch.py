"""Dispatch sends each message at most once, also when the process dies part way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, select, update

from tasks.channels.base import Outbound, SendResult
from tasks.dispatch import dispatch_cycle, throttled
from tasks.domain.contract import Entity
from tasks.gate import policy_version
from tasks.sources.validation import validate_all
from tasks.store import schema as s
from tasks.store.bulk import insert_frame, read_frame
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tasks.store.repository import append_consents, sync_customers, sync_entity
from tests.fakes.senders import FakeSender, ProcessKilled
from tests.support.factories import markets, message_row, raw_set

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
KEY = b"k"
MARKETS = markets()


def _seed(engine: Engine, n: int, steps: Sequence[str] = ("T-30",)) -> None:
    customers = [{"customer_key": f"C{i:07d}", "email": f"c{i}@example.com", "phone": ""} for i in range(n)]
    contracts = [{"contract_key": f"K{i:07d}", "customer_key": f"C{i:07d}"} for i in range(n)]
    clean = validate_all(raw_set(customers=customers, contracts=contracts), markets()).clean
    rows: list[dict[str, Any]] = [
        message_row(
            i,
            f"C{i:07d}",
            NOW,
            message_key=f"pb:K{i:07d}:20261222:{step}:email",
            contract_key=f"K{i:07d}",
            market="DE",
            step=step,
            channel="email",
            subject="Subject",
            body="Body",
        )
        for step in steps
        for i in range(n)
    ]
    with engine.begin() as conn:
        sync_customers(conn, clean[Entity.CUSTOMERS], NOW)
        sync_entity(conn, Entity.CONTRACTS, clean[Entity.CONTRACTS], NOW)
        insert_frame(conn, s.messages, pd.DataFrame(rows))


class BatchRecorder(FakeSender):
    """A fake sender that also keeps which messages came in which call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Record the batch's customers, then accept it."""
        self.batches.append([m.message_key for m in batch])
        return super().send(batch)


def _statuses(engine: Engine) -> pd.Series:
    with engine.connect() as conn:
        frame = read_frame(conn, select(s.messages.c.status))
    return frame["status"].value_counts()


def test_every_rendered_message_is_sent_once(engine: Engine) -> None:
    _seed(engine, 25)
    sender = FakeSender()
    stats = dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10)
    assert stats["sent"] == 25
    assert len({m.message_key for m in sender.sent}) == len(sender.sent) == 25
    assert _statuses(engine).to_dict() == {"sent": 25}
    assert dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10)["sent"] == 0


def test_a_customers_messages_are_claimed_in_one_batch_even_where_the_batch_size_would_split_them(
    engine: Engine,
) -> None:
    # Planned step by step, so in the order they were stored every batch of four would mix customers.
    _seed(engine, 7, steps=("T-30", "T-14", "T-7"))
    sender = BatchRecorder()
    stats = dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=4)
    assert stats["sent"] == 21
    # One contract per customer here, and the message key names the contract.
    customer_of = {m.message_key: m.message_key.split(":")[1] for m in sender.sent}
    seen: list[set[str]] = [{customer_of[k] for k in batch} for batch in sender.batches]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :]), seen
    # Two customers' six messages, then the next two's: about the batch size, never a customer cut in two.
    assert [len(b) for b in sender.batches] == [6, 6, 6, 3]


def test_send_times_are_stored_on_sqlite_as_text_of_the_same_form_as_every_other_timestamp(
    sqlite_engine: Engine,
) -> None:
    _seed(sqlite_engine, 3)
    assert dispatch_cycle(sqlite_engine, 1, {"email": FakeSender()}, MARKETS, KEY, 10)["sent"] == 3
    with sqlite_engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT sent_at, updated_at FROM messages").all()
    # The send is settled at one moment; SQLite compares timestamps as text, so the forms must agree.
    assert [sent for sent, _ in stored] == [updated for _, updated in stored]


def test_send_times_stored_with_an_offset_by_earlier_versions_are_rewritten_in_the_same_form(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0006")
    _seed(engine, 3)
    with engine.begin() as conn:
        for key, stored in zip(
            sorted(conn.execute(select(s.messages.c.message_key)).scalars()),
            ["2026-11-24 00:05:39.745956+00:00", "2026-11-24 00:05:39+00:00", "2026-11-24 00:05:40.000001"],
            strict=True,
        ):
            conn.exec_driver_sql("UPDATE messages SET sent_at = ? WHERE message_key = ?", (stored, key))
    upgrade(engine)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT sent_at FROM messages ORDER BY message_key").scalars().all()
    engine.dispose()
    assert stored == [
        "2026-11-24 00:05:39.745956",
        "2026-11-24 00:05:39.000000",
        "2026-11-24 00:05:40.000001",
    ]


def test_a_run_killed_mid_batch_is_finished_by_the_rerun_without_resending(engine: Engine) -> None:
    _seed(engine, 30)
    sender = FakeSender(die_after=14)
    with pytest.raises(ProcessKilled):
        dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10)
    assert _statuses(engine).to_dict() == {"sent": 10, "sending": 10, "rendered": 10}
    sender.die_after = None
    # The dead dispatcher's claims are reconciled at once: on PostgreSQL its advisory lock is gone,
    # on SQLite a zero lease says so.
    stats = dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10, lease_seconds=0)
    keys = [m.message_key for m in sender.sent]
    assert len(keys) == len(set(keys)) == 30
    assert stats["reconciled"] == {"confirmed_sent": 4, "sent_again": 6, "still_in_doubt": 0}
    assert _statuses(engine).to_dict() == {"sent": 30}


def test_consent_withdrawn_after_planning_stops_the_send(engine: Engine) -> None:
    _seed(engine, 3)
    with engine.begin() as conn:
        conn.execute(update(s.messages).values(purpose="marketing"))
        granted = validate_all(
            raw_set(
                customers=[{"customer_key": f"C{i:07d}", "phone": ""} for i in range(3)],
                consents=[{"customer_key": f"C{i:07d}"} for i in range(3)],
            ),
            markets(),
        ).clean[Entity.CONSENTS]
        append_consents(conn, granted, "bank", NOW)
        withdrawn = granted.iloc[[1]].assign(status="withdrawn", withdrawn_at=pd.Timestamp(NOW), row_hash="x")
        append_consents(conn, withdrawn, "bank", NOW)
    sender = FakeSender()
    stats = dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10)
    assert (stats["sent"], stats["blocked_at_send"]) == (2, 1)
    assert "C0000001" not in {m.to for m in sender.sent} and len(sender.sent) == 2
    with engine.connect() as conn:
        blocked = read_frame(
            conn, select(s.decisions.c.stage, s.decisions.c.reason, s.decisions.c.customer_key)
        )
    assert blocked.to_dict("records") == [
        {"stage": "send", "reason": "CONSENT_WITHDRAWN", "customer_key": "C0000001"}
    ]


def test_a_decision_taken_at_send_time_names_the_stored_policy_version_whose_rules_it_applied(
    engine: Engine,
) -> None:
    _seed(engine, 2)
    with engine.begin() as conn:
        conn.execute(
            update(s.customers).where(s.customers.c.customer_key == "C0000000").values(erased_at=NOW)
        )
    dispatch_cycle(engine, 1, {"email": FakeSender()}, MARKETS, KEY, batch_size=10)
    with engine.connect() as conn:
        decided = conn.execute(select(s.decisions.c.stage, s.decisions.c.policy_version)).all()
        stored = conn.execute(select(s.policy_versions.c.policy_version, s.policy_versions.c.rules)).all()
    version, rules = policy_version(MARKETS)
    assert [tuple(d) for d in decided] == [("send", version)]
    assert [tuple(p) for p in stored] == [(version, rules)]


def test_erased_customer_is_not_contacted_at_send_time(engine: Engine) -> None:
    _seed(engine, 2)
    with engine.begin() as conn:
        conn.execute(
            update(s.customers).where(s.customers.c.customer_key == "C0000000").values(erased_at=NOW)
        )
    sender = FakeSender()
    stats = dispatch_cycle(engine, 1, {"email": sender}, MARKETS, KEY, batch_size=10)
    assert (stats["sent"], stats["blocked_at_send"]) == (1, 1)


def test_progress_reports_go_out_at_most_once_a_second_and_the_first_at_once() -> None:
    clock = iter([10.0, 10.4, 10.99, 11.0, 11.5, 13.2])
    seen: list[int] = []
    report = throttled(every=1.0, clock=lambda: next(clock))(seen.append)

    for handled in (1000, 2000, 3000, 4000, 5000, 6000):
        report(handled)

    assert seen == [1000, 4000, 6000]
