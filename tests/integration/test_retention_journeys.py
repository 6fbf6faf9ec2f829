"""Win-back of lapsed contracts and reactivation of inactive customers: marketing, consent-gated."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, select

from tasks.store import schema as s
from tests.support.factories import raw_set
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 24)
NOON = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)


def _decisions(engine: Engine) -> dict[str, str]:
    d = s.decisions
    with engine.connect() as conn:
        return {k: f"{o}:{r}" for k, o, r in conn.execute(select(d.c.message_key, d.c.outcome, d.c.reason))}


def test_a_lapsed_contract_gets_the_winback_offer_only_with_marketing_consent(engine: Engine) -> None:
    pipe = Pipeline(engine, playbook_id="winback")
    lapsed = str(AS_OF - timedelta(days=7))
    customers = [{"customer_key": c, "email": f"{c.lower()}@example.com", "phone": ""} for c in ("C1", "C2")]
    contracts = [
        {"contract_key": f"K{c}", "customer_key": c, "status": "lapsed", "term_end": lapsed}
        for c in ("C1", "C2")
    ]
    pipe.load(raw_set(customers=customers, contracts=contracts, consents=[{"customer_key": "C1"}]))
    stats = pipe.cycle(AS_OF, now=NOON)
    decisions = _decisions(engine)
    assert decisions == {
        f"winback:KC1:{lapsed.replace('-', '')}:W+7:email": "allowed:CONSENT",
        f"winback:KC2:{lapsed.replace('-', '')}:W+7:email": "blocked:NO_CHANNEL_CONSENT",
    }
    assert stats["dispatch"]["sent"] == 1
    (mail,) = pipe.senders["email"].sent  # type: ignore[attr-defined]
    assert "/unsubscribe/" in mail.body


def test_an_inactive_customer_enters_the_reactivation_journey(engine: Engine) -> None:
    pipe = Pipeline(engine, playbook_id="reactivation")
    last = AS_OF - timedelta(days=45)
    months = [
        {"customer_key": "C1", "month": m, "transactions": t, "last_active": la}
        for m, t, la in (("2026-08", "0", ""), ("2026-09", "1", str(last)), ("2026-10", "0", ""))
    ]
    pipe.load(
        raw_set(
            customers=[{"customer_key": "C1", "email": "c1@example.com", "phone": ""}],
            contracts=[
                {
                    "contract_key": "K1",
                    "customer_key": "C1",
                    "product": "savings_plan",
                    "term_end": "2027-09-30",
                }
            ],
            activity=months,
            consents=[{"customer_key": "C1"}],
        )
    )
    stats = pipe.cycle(AS_OF, now=NOON)
    assert stats["plan"]["by_step"] == {"reactivation:R+45": 1}
    assert stats["dispatch"]["sent"] == 1
