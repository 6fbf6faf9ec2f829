"""What segment reads of the history: only the rows segmenting (and scoring) look at."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import Engine, insert

from tasks.domain.contract import Entity
from tasks.store import schema as s
from tasks.store.repository import read_segment_history

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
STAMP = {"row_hash": "h", "loaded_at": NOW}


def _store(engine: Engine) -> None:
    contracts = [("K1", "active"), ("K2", "renewed")]
    with engine.begin() as conn:
        conn.execute(
            insert(s.customers),
            [{"customer_key": "C1", "market": "DE", "locale": "de-DE", "timezone": "Europe/Berlin", **STAMP}],
        )
        conn.execute(
            insert(s.contracts),
            [
                {
                    "contract_key": key,
                    "customer_key": "C1",
                    "product": "loan",
                    "status": status,
                    "term_end": date(2026, 12, 1),
                    "auto_renew": True,
                    "price": 10,
                    "currency": "EUR",
                    **STAMP,
                }
                for key, status in contracts
            ],
        )
        conn.execute(
            insert(s.instalments),
            [
                {
                    "instalment_key": f"I{key}",
                    "contract_key": key,
                    "due_date": date(2026, 10, 1),
                    "amount": 10,
                    "currency": "EUR",
                    **STAMP,
                }
                for key, _ in contracts
            ],
        )
        conn.execute(
            insert(s.activity),
            [
                {"customer_key": "C1", "month": date(2026, month, 1), "transactions": month, **STAMP}
                for month in (4, 5, 10, 11)
            ],
        )


def test_scorecard_reads_open_contracts_and_activity_months_only(engine: Engine) -> None:
    _store(engine)
    with engine.connect() as conn:
        got = read_segment_history(conn, ["DE"], (date(2026, 5, 1), date(2026, 11, 1)), open_only=True)
    assert got[Entity.CONTRACTS]["contract_key"].tolist() == ["K1"]
    assert got[Entity.INSTALMENTS]["contract_key"].tolist() == ["K1"]
    assert sorted(got[Entity.ACTIVITY]["transactions"].tolist()) == [5, 10]
    assert "amount" not in got[Entity.INSTALMENTS]


def test_scoring_reads_every_contract_and_its_instalments(engine: Engine) -> None:
    _store(engine)
    with engine.connect() as conn:
        got = read_segment_history(conn, ["DE"], (date(2026, 5, 1), date(2026, 11, 1)))
    assert sorted(got[Entity.CONTRACTS]["contract_key"].tolist()) == ["K1", "K2"]
    assert sorted(got[Entity.INSTALMENTS]["contract_key"].tolist()) == ["K1", "K2"]


def test_scorecard_reads_instalments_due_in_its_year_or_still_unpaid(engine: Engine) -> None:
    _store(engine)
    due = {
        "old-paid": (date(2025, 11, 21), date(2025, 11, 21)),
        "old-unpaid": (date(2025, 11, 21), None),
        "in-year": (date(2025, 11, 23), date(2025, 12, 1)),
        "due-today": (date(2026, 11, 22), None),
    }
    with engine.begin() as conn:
        conn.execute(
            insert(s.instalments),
            [
                {
                    "instalment_key": key,
                    "contract_key": "K1",
                    "due_date": due_date,
                    "paid_date": paid,
                    "amount": 10,
                    "currency": "EUR",
                    **STAMP,
                }
                for key, (due_date, paid) in due.items()
            ],
        )
        got = read_segment_history(
            conn,
            ["DE"],
            (date(2026, 8, 1), date(2026, 11, 1)),
            open_only=True,
            due_between=(date(2025, 11, 22), date(2026, 11, 22)),
        )
    assert sorted(got[Entity.INSTALMENTS]["due_date"].dt.date.tolist()) == [
        date(2025, 11, 21),
        date(2025, 11, 23),
        date(2026, 10, 1),
    ]
