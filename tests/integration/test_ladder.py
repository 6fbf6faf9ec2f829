"""The repayment ladder: steps by days past due, cancellation on payment, one message a day per customer."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from config.loader import load_playbook
from tasks.domain.planning import due_steps, repayment_targets
from tasks.store import schema as s
from tests.support.factories import ROOT, raw_set
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 24)  # a Tuesday: inside every market's collection window
NOON = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
LADDER = load_playbook(ROOT / "config", "repayment-ladder")


@pytest.mark.parametrize(
    ("days_past_due", "step"),
    [
        (-4, None),
        (-3, "D-3"),
        (-2, "D-3"),
        (-1, None),
        (0, "D0"),
        (1, "D+1"),
        (2, "D+1"),
        (6, None),
        (7, "D+7"),
        (15, "D+15"),
        (30, "D+30"),
        (31, "D+30"),
        (60, "D+60"),
        (61, "D+60"),
        (62, None),
    ],
)
def test_ladder_step_at_each_boundary_day(days_past_due: int, step: str | None) -> None:
    segments = pd.DataFrame(
        {
            "contract_key": ["K1"],
            "customer_key": ["C1"],
            "market": ["DE"],
            "product": ["loan"],
            "status": ["active"],
            "segment": ["arrears"],
            "risk_band": ["low"],
            "term_end": [pd.Timestamp("2027-06-30")],
            "auto_renew": [False],
        }
    )
    instalments = pd.DataFrame(
        {
            "instalment_key": ["I1"],
            "contract_key": ["K1"],
            "due_date": [pd.Timestamp(AS_OF - timedelta(days=days_past_due))],
            "paid_date": [pd.NaT],
        }
    )
    due = due_steps(repayment_targets(instalments, segments), LADDER, AS_OF)
    assert (due["step"].iloc[0] if len(due) else None) == step


def test_escalation_starts_at_d_plus_30() -> None:
    assert [s.id for s in LADDER.ordered_steps if s.escalate] == ["D+30", "D+60"]


def _customer(key: str, **kw: str) -> dict[str, str]:
    return {"customer_key": key, "email": f"{key.lower()}@example.com", "phone": "", **kw}


def _statuses(engine: Engine, playbook: str) -> dict[str, str]:
    m = s.messages
    with engine.connect() as conn:
        rows = conn.execute(select(m.c.message_key, m.c.status).where(m.c.playbook == playbook)).all()
    return {str(k): str(v) for k, v in rows}


def test_a_payment_cancels_every_unsent_ladder_step(engine: Engine) -> None:
    pipe = Pipeline(engine, playbook_id="repayment-ladder")
    due = str(AS_OF - timedelta(days=7))
    contract = {"contract_key": "K1", "customer_key": "C1", "term_end": "2027-06-30"}
    pipe.load(
        raw_set(
            customers=[_customer("C1")],
            contracts=[contract],
            instalments=[{"instalment_key": "I1", "contract_key": "K1", "due_date": due, "paid_date": ""}],
        )
    )
    first = pipe.cycle(AS_OF, now=NOON, send=False)
    assert first["plan"]["new"] == 2, "D+7 goes by SMS and email (send: all); the customer has email only"
    assert "rendered" in _statuses(engine, "repayment-ladder").values()
    pipe.load(
        raw_set(
            customers=[_customer("C1")],
            contracts=[contract],
            instalments=[
                {"instalment_key": "I1", "contract_key": "K1", "due_date": due, "paid_date": str(AS_OF)}
            ],
        )
    )
    second = pipe.cycle(AS_OF, now=NOON)
    assert second["plan"]["cancelled_paid"] >= 1
    assert "cancelled" in _statuses(engine, "repayment-ladder").values()
    assert second["dispatch"]["sent"] == 0


def test_dunning_renders_the_amount_due_and_a_pay_link(engine: Engine) -> None:
    pipe = Pipeline(engine, playbook_id="repayment-ladder")
    pipe.load(
        raw_set(
            customers=[_customer("C1")],
            contracts=[{"contract_key": "K1", "customer_key": "C1", "term_end": "2027-06-30"}],
            instalments=[
                {
                    "instalment_key": "I1",
                    "contract_key": "K1",
                    "amount": "250.00",
                    "due_date": str(AS_OF - timedelta(days=1)),
                    "paid_date": "",
                }
            ],
        )
    )
    stats = pipe.cycle(AS_OF, now=NOON)
    assert stats["dispatch"]["sent"] == 1
    (sent,) = pipe.senders["email"].sent  # type: ignore[attr-defined]
    assert "250,00" in sent.body and "/pay/" in sent.body


def _renewal_due_with_an_overdue_instalment(engine: Engine) -> Pipeline:
    """One customer whose renewal step and first dunning step fall on AS_OF, loaded into the store."""
    pipe = Pipeline(engine, playbook_id="all")
    contract = {"contract_key": "K1", "customer_key": "C1", "term_end": str(AS_OF + timedelta(days=14))}
    overdue = {
        "instalment_key": "I1",
        "contract_key": "K1",
        "due_date": str(AS_OF - timedelta(days=1)),
        "paid_date": "",
    }
    pipe.load(raw_set(customers=[_customer("C1")], contracts=[contract], instalments=[overdue]))
    return pipe


def test_renewal_and_dunning_due_the_same_day_send_one_message(engine: Engine) -> None:
    pipe = _renewal_due_with_an_overdue_instalment(engine)
    stats = pipe.cycle(AS_OF, now=NOON)
    by_playbook = stats["plan"]["by_playbook"]
    assert by_playbook["repayment-ladder"]["new"] >= 1
    assert by_playbook["renewal-standard"]["superseded_same_day"] == 1
    assert by_playbook["renewal-standard"]["new"] == 0
    sent = pipe.senders["email"].sent + pipe.senders["sms"].sent  # type: ignore[attr-defined]
    assert len(sent) == 1 and ":I1:" in sent[0].message_key


def test_a_rerun_of_the_day_on_a_later_clock_day_still_sends_one_message(engine: Engine) -> None:
    pipe = _renewal_due_with_an_overdue_instalment(engine)
    pipe.cycle(AS_OF, now=NOON)
    # Messages are planned at the wall clock's time, which is not AS_OF's day: the rerun must still
    # see the customer as contacted by the higher-priority ladder on AS_OF.
    rerun = pipe.cycle(AS_OF, now=NOON + timedelta(days=1))
    assert rerun["plan"]["new"] == 0
    assert rerun["plan"]["by_playbook"]["renewal-standard"]["superseded_same_day"] == 1
    sent = pipe.senders["email"].sent + pipe.senders["sms"].sent  # type: ignore[attr-defined]
    assert len(sent) == 1
