"""The store on SQLite and PostgreSQL: migrations match the schema, bulk sync and idempotent inserts."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from tasks.domain.contract import Entity
from tasks.sources.validation import validate_all
from tasks.store import schema as s
from tasks.store.bulk import insert_new, read_frame
from tasks.store.repository import append_consents, audit, sync_customers, sync_entity
from tests.support.factories import markets, raw_set

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
MARKETS = markets()


def _clean(**rows: list[dict[str, str]]) -> dict[Entity, pd.DataFrame]:
    return validate_all(raw_set(**rows), MARKETS).clean


def test_migrations_produce_exactly_the_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), s.metadata)
    assert diff == []


@pytest.mark.postgres
def test_every_key_column_compares_byte_by_byte_on_postgres(pg_engine: Engine) -> None:
    keys = {(t.name, c.name) for t in s.metadata.sorted_tables for c in t.columns if c.name.endswith("_key")}
    with pg_engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT table_name, column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND column_name LIKE '%\\_key'"
            )
        ).all()
    assert {(r.table_name, r.column_name) for r in found} == keys
    assert {r.collation_name for r in found} == {"C"}


def test_sync_inserts_then_updates_only_changed_rows(engine: Engine) -> None:
    first = _clean(customers=[{}, {"customer_key": "C0000002", "phone": ""}])[Entity.CUSTOMERS]
    with engine.begin() as conn:
        stats = sync_customers(conn, first, NOW)
    assert (stats.inserted, stats.updated, stats.unchanged) == (2, 0, 0)

    second = _clean(customers=[{"first_name": "Annette"}, {"customer_key": "C0000002", "phone": ""}])[
        Entity.CUSTOMERS
    ]
    with engine.begin() as conn:
        stats = sync_customers(conn, second, NOW)
        names = read_frame(
            conn, select(s.customers.c.customer_key, s.customers.c.first_name, s.customers.c.phone_e164)
        )
    assert (stats.inserted, stats.updated, stats.unchanged) == (0, 1, 1)
    assert names.set_index("customer_key")["first_name"].to_dict() == {
        "C0000001": "Annette",
        "C0000002": "Anna",
    }
    assert names.set_index("customer_key").loc["C0000001", "phone_e164"] == "+4915123456789"


def test_erased_customer_is_not_restored_by_a_reimport(engine: Engine) -> None:
    frame = _clean(customers=[{}])[Entity.CUSTOMERS]
    with engine.begin() as conn:
        sync_customers(conn, frame, NOW)
        conn.execute(
            s.customers.update().values(
                first_name=None, email=None, phone_e164=None, erased_at=NOW, row_hash="erased"
            )
        )
    with engine.begin() as conn:
        stats = sync_customers(conn, frame, NOW)
        row = conn.execute(select(s.customers.c.email, s.customers.c.erased_at)).one()
    assert stats.updated == 0
    assert row.email is None and row.erased_at is not None


def test_typed_round_trip_of_dates_numbers_and_booleans(engine: Engine) -> None:
    clean = _clean(customers=[{}], contracts=[{"auto_renew": "true", "price": "1234.50"}])
    with engine.begin() as conn:
        sync_customers(conn, clean[Entity.CUSTOMERS], NOW)
        sync_entity(conn, Entity.CONTRACTS, clean[Entity.CONTRACTS], NOW)
        back = read_frame(conn, select(s.contracts.c.term_end, s.contracts.c.auto_renew, s.contracts.c.price))
    assert back.loc[0, "term_end"] == pd.Timestamp("2026-12-22")
    assert bool(back.loc[0, "auto_renew"]) is True
    assert back.loc[0, "price"] == pytest.approx(1234.5)


def test_insert_new_skips_existing_keys(engine: Engine) -> None:
    row = {
        "message_key": "pb:K1:20261222:T-30:email",
        "cycle_id": 1,
        "playbook": "pb",
        "contract_key": "K1",
        "customer_key": "C1",
        "market": "DE",
        "step": "T-30",
        "channel": "email",
        "rank": 0,
        "send_rule": "first",
        "template": "renewal_notice",
        "purpose": "service",
        "anchor_date": "2026-12-22",
        "status": "planned",
        "attempts": 0,
        "planned_at": NOW,
        "updated_at": NOW,
    }
    frame = pd.DataFrame([row])
    with engine.begin() as conn:
        assert insert_new(conn, s.messages, frame, ["message_key"]) == 1
    with engine.begin() as conn:
        assert insert_new(conn, s.messages, frame, ["message_key"]) == 0
        assert conn.execute(text("select count(*) from messages")).scalar_one() == 1


def test_consent_history_is_appended_never_overwritten(engine: Engine) -> None:
    granted = _clean(customers=[{}], consents=[{}])
    with engine.begin() as conn:
        sync_customers(conn, granted[Entity.CUSTOMERS], NOW)
        assert append_consents(conn, granted[Entity.CONSENTS], "bank", NOW).inserted == 1
        assert append_consents(conn, granted[Entity.CONSENTS], "bank", NOW).unchanged == 1
    withdrawn = _clean(
        customers=[{}], consents=[{"status": "withdrawn", "withdrawn_at": "2026-01-02T09:00:00Z"}]
    )
    with engine.begin() as conn:
        assert append_consents(conn, withdrawn[Entity.CONSENTS], "bank", NOW).updated == 1
        rows = read_frame(
            conn, select(s.consents.c.status, s.consents.c.controller).order_by(s.consents.c.consent_id)
        )
    assert rows["status"].tolist() == ["granted", "withdrawn"]
    assert set(rows["controller"]) == {"bank"}


def test_audit_log_refuses_updates_and_deletes(engine: Engine) -> None:
    with engine.begin() as conn:
        audit(conn, "test.event", details={"n": 1})
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("select action from audit_log")).scalar_one() == "test.event"
