"""The consent audit groups decisions and finds the anomalies that must be zero."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text

from tasks.consent_audit import audit_period, write_csv
from tests.support.factories import raw_set
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 22)


def _served(engine: Engine) -> Pipeline:
    pipe = Pipeline(engine)
    customers = [{"customer_key": f"C{i}", "email": f"c{i}@example.com"} for i in range(4)]
    contracts = [
        {"contract_key": f"K{i}", "customer_key": f"C{i}", "term_end": str(AS_OF + timedelta(days=d))}
        for i, d in enumerate((30, 14, 7, 1))
    ]
    pipe.load(raw_set(customers=customers, contracts=contracts, consents=[{"customer_key": "C0"}]))
    pipe.cycle(AS_OF)
    return pipe


WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_a_clean_cycle_has_no_anomalies(engine: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _served(engine)
    with engine.connect() as conn:
        grouped, anomalies = audit_period(conn, *WINDOW)
    assert grouped["decisions"].sum() > 0
    assert set(grouped.columns) >= {"market", "purpose", "channel", "stage", "outcome", "reason"}
    assert anomalies["count"].tolist() == [0, 0, 0, 0]
    path = write_csv(tmp_path / "audit.csv", grouped, anomalies)
    assert "marketing content sent without a marketing basis" in path.read_text()


def test_marketing_sent_without_a_marketing_basis_is_counted(engine: Engine) -> None:
    _served(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE messages SET purpose = 'marketing' WHERE status = 'sent' AND message_key LIKE '%K1%'"
            )
        )
    with engine.connect() as conn:
        _, anomalies = audit_period(conn, *WINDOW)
    assert anomalies.set_index("check")["count"]["marketing content sent without a marketing basis"] >= 1


def test_a_send_after_erasure_is_counted(engine: Engine) -> None:
    _served(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE customers SET erased_at = :t WHERE customer_key = 'C0'"),
            {"t": datetime(2026, 1, 2, tzinfo=UTC)},
        )
    with engine.connect() as conn:
        _, anomalies = audit_period(conn, *WINDOW)
    assert anomalies.set_index("check")["count"]["sent to a customer after their erasure"] >= 1


def test_decisions_carry_the_time_the_gate_judged_them_at_so_the_audit_period_finds_them(
    engine: Engine,
) -> None:
    pipe = Pipeline(engine)
    pipe.load(
        raw_set(
            customers=[{"customer_key": "C0", "email": "c0@example.com"}],
            contracts=[
                {"contract_key": "K0", "customer_key": "C0", "term_end": str(AS_OF + timedelta(days=30))}
            ],
        )
    )
    judged = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)
    pipe.cycle(AS_OF, now=judged)
    with engine.connect() as conn:
        stamps = [row[0] for row in conn.execute(text("SELECT decided_at FROM decisions"))]
        grouped, _ = audit_period(conn, judged, judged + timedelta(seconds=1))
    assert stamps and {str(s)[:19] for s in stamps} == {"2031-03-04 10:00:00"}
    assert grouped["decisions"].sum() == len(stamps)
