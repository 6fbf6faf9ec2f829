"""KPI inputs from store rows: treated vs held-out terms, renewals and payments credited, costs in EUR."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from config.loader import load_playbooks
from tasks.domain import kpis
from tasks.domain.kpi_inputs import (
    MESSAGE_COLUMNS,
    MissingRate,
    StoreRows,
    empty_rows,
    kpi_inputs,
    to_eur,
)
from tests.support.factories import ROOT

PLAYBOOKS = load_playbooks(ROOT / "config")
FX = {"EUR": 1, "USD": "0.92", "GBP": "1.17"}


def _message(
    key: str,
    contract: str,
    step: str,
    anchor: str,
    *,
    playbook: str = "renewal-standard",
    customer: str | None = None,
    channel: str = "email",
    status: str = "sent",
    sent: str | None = "2026-09-01 09:00",
    cost: float | None = None,
    market: str = "DE",
    cycle: int = 1,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "message_key": key,
        "cycle_id": cycle,
        "playbook": playbook,
        "contract_key": contract,
        "customer_key": customer or contract.replace("K", "C"),
        "market": market,
        "step": step,
        "channel": channel,
        "anchor_date": pd.Timestamp(anchor).date(),
        "status": status,
        "error_code": error,
        "cost": cost,
        "cost_currency": "USD" if cost is not None else None,
        "sent_at": datetime.fromisoformat(sent).replace(tzinfo=UTC) if sent else None,
    }


def _rows(**frames: list[dict[str, Any]]) -> StoreRows:
    base = empty_rows()
    parts = {
        name: pd.DataFrame(rows, columns=list(getattr(base, name).columns)) if rows else getattr(base, name)
        for name, rows in frames.items()
    }
    return replace(base, **parts)


def _holdout(contract: str, step: str, anchor: str, playbook: str = "renewal-standard") -> dict[str, Any]:
    return {
        "cycle_id": 1,
        "playbook": playbook,
        "contract_key": contract,
        "customer_key": contract.replace("K", "C"),
        "market": "DE",
        "step": step,
        "anchor_date": pd.Timestamp(anchor).date(),
    }


def _contract(key: str, renewed: str | None, price: float = 120.0, currency: str = "EUR") -> dict[str, Any]:
    return {
        "contract_key": key,
        "customer_key": key.replace("K", "C"),
        "term_end": pd.Timestamp("2026-10-01").date(),
        "renewed_at": pd.Timestamp(renewed).date() if renewed else None,
        "price": price,
        "currency": currency,
    }


RENEWAL = _rows(
    messages=[
        _message("m1", "K1", "T-30", "2026-10-01", sent="2026-09-01 09:00", cost=0.10),
        _message("m2", "K1", "T-14", "2026-10-01", channel="sms", sent="2026-09-17 09:00", cost=0.50),
        _message("m3", "K1", "T-14", "2026-10-01", channel="email", status="blocked", sent=None),
        _message("m4", "K2", "T-7-offer", "2026-10-01", sent="2026-09-25 10:00"),
        _message("m5", "K2", "T-7-offer", "2026-10-01", channel="sms", sent="2026-09-25 10:05"),
    ],
    holdouts=[_holdout("K3", "T-30", "2026-10-01")],
    contracts=[
        _contract("K1", "2026-09-20", price=100.0, currency="GBP"),
        _contract("K2", "2025-09-30"),
        _contract("K3", "2026-10-05"),
    ],
    segments=[
        {"cycle_id": 1, "contract_key": "K1", "segment": "high-risk"},
        {"cycle_id": 1, "contract_key": "K3", "segment": "standard"},
        {"cycle_id": 2, "contract_key": "K1", "segment": "standard"},
    ],
)


def _by(frame: pd.DataFrame, column: str) -> dict[Any, dict[str, Any]]:
    return {row[column]: row for row in frame.to_dict("records")}


def test_a_term_both_reminded_and_held_out_is_in_neither_group() -> None:
    rows = replace(
        RENEWAL, holdouts=pd.concat([RENEWAL.holdouts, pd.DataFrame([_holdout("K2", "T-1", "2026-10-01")])])
    )
    out = _by(kpi_inputs(rows, PLAYBOOKS, FX)["exposures"], "contract_key")
    assert {k: r["group"] for k, r in out.items()} == {"K1": "treated", "K3": "control"}


def test_reminded_terms_are_treated_and_held_out_terms_control() -> None:
    out = _by(kpi_inputs(RENEWAL, PLAYBOOKS, FX)["exposures"], "contract_key")
    assert {k: r["group"] for k, r in out.items()} == {"K1": "treated", "K2": "treated", "K3": "control"}


def test_treated_term_counts_sent_messages_their_cost_in_eur_and_first_contact() -> None:
    k1 = _by(kpi_inputs(RENEWAL, PLAYBOOKS, FX)["exposures"], "contract_key")["K1"]
    assert k1["messages_sent"] == 2
    assert k1["messaging_cost_eur"] == pytest.approx((0.10 + 0.50) * 0.92)
    assert k1["first_contact_at"] == pd.Timestamp("2026-09-01")
    assert k1["price_eur"] == pytest.approx(117.0)
    assert k1["segment"] == "high-risk"


def test_control_term_has_no_contact_and_its_segment_from_the_cycle_that_held_it_out() -> None:
    k3 = _by(kpi_inputs(RENEWAL, PLAYBOOKS, FX)["exposures"], "contract_key")["K3"]
    assert k3["messages_sent"] == 0 and k3["messaging_cost_eur"] == 0.0
    assert pd.isna(k3["first_contact_at"])
    assert k3["segment"] == "standard"
    assert k3["renewed_at"] == pd.Timestamp("2026-10-05")


def test_a_renewal_a_year_away_from_the_term_end_is_not_credited_to_it() -> None:
    k2 = _by(kpi_inputs(RENEWAL, PLAYBOOKS, FX)["exposures"], "contract_key")["K2"]
    assert pd.isna(k2["renewed_at"])


def test_exposures_feed_the_uplift_function() -> None:
    exposures = kpi_inputs(RENEWAL, PLAYBOOKS, FX)["exposures"]
    out = kpis.renewal_uplift(exposures, "2026-11-22", by=())
    row = out.iloc[0]
    # K1 renewed before its term end (treated success), K2 not credited, K3 renewed late (control miss).
    assert (row["treated_n"], row["treated_successes"], row["control_n"], row["control_successes"]) == (
        2,
        1,
        1,
        0,
    )


def test_funnel_has_one_row_per_term_and_step_with_the_configured_offset() -> None:
    funnel = kpi_inputs(RENEWAL, PLAYBOOKS, FX)["funnel"]
    steps = sorted(zip(funnel["contract_key"], funnel["step"], funnel["offset_days"], strict=True))
    # T-7-offer is configured at -6 days, which its name alone would not tell.
    assert steps == [("K1", "T-14", -14), ("K1", "T-30", -30), ("K2", "T-7-offer", -6)]
    first = funnel[(funnel["contract_key"] == "K2")].iloc[0]
    assert first["sent_at"] == pd.Timestamp("2026-09-25")


def test_deliveries_keep_every_message_with_status_error_and_cost() -> None:
    d = _by(kpi_inputs(RENEWAL, PLAYBOOKS, FX)["deliveries"], "message_key")
    assert d["m3"]["status"] == "blocked" and d["m3"]["cost_eur"] == 0.0
    assert d["m2"]["cost_eur"] == pytest.approx(0.46)
    assert d["m1"]["error_code"] == ""


LADDER = _rows(
    messages=[
        _message("r1", "K7", "D0", "2026-09-01", playbook="repayment-ladder", sent="2026-09-01 08:00"),
        _message("r2", "K7", "D+7", "2026-09-01", playbook="repayment-ladder", sent="2026-09-08 08:00"),
        _message("r3", "K7", "D+15", "2026-09-01", playbook="repayment-ladder", status="planned", sent=None),
    ],
    holdouts=[_holdout("K8", "D0", "2026-09-01", playbook="repayment-ladder")],
    instalments=[
        {
            "instalment_key": "I7",
            "contract_key": "K7",
            "due_date": pd.Timestamp("2026-09-01").date(),
            "amount": 50.0,
            "currency": "GBP",
            "paid_date": pd.Timestamp("2026-09-10").date(),
        },
        {
            "instalment_key": "I7-next",
            "contract_key": "K7",
            "due_date": pd.Timestamp("2026-10-01").date(),
            "amount": 50.0,
            "currency": "GBP",
            "paid_date": None,
        },
        {
            "instalment_key": "I8",
            "contract_key": "K8",
            "due_date": pd.Timestamp("2026-09-01").date(),
            "amount": 80.0,
            "currency": "EUR",
            "paid_date": None,
        },
    ],
)


def test_instalment_exposure_joins_by_contract_and_due_date_and_keeps_the_latest_step_sent() -> None:
    out = _by(kpi_inputs(LADDER, PLAYBOOKS, FX)["instalment_exposures"], "instalment_key")
    assert sorted(out) == ["I7", "I8"]
    assert out["I7"]["max_step"] == "D+7"
    assert out["I7"]["amount_eur"] == pytest.approx(58.5)
    assert out["I7"]["paid_date"] == pd.Timestamp("2026-09-10")
    assert (out["I8"]["group"], out["I8"]["max_step"]) == ("control", "")


def test_ladder_exposures_feed_the_cure_rates() -> None:
    exposures = kpi_inputs(LADDER, PLAYBOOKS, FX)["instalment_exposures"]
    out = _by(kpis.ladder_cure_rates(exposures, "2026-11-22", steps=["D0", "D+7"]), "step")
    assert (out["D0"]["treated_reached"], out["D0"]["treated_cured"]) == (1, 1)
    assert (out["D+7"]["treated_reached"], out["D+7"]["stopped_here"]) == (1, 1)
    assert (out["D0"]["control_unpaid"], out["D0"]["control_cured"]) == (1, 0)


RETENTION = _rows(
    messages=[
        _message("a1", "K4", "R+45", "2026-07-10", playbook="reactivation", sent="2026-08-24 09:00"),
        _message("a2", "K5", "R+45", "2026-07-10", playbook="reactivation", customer="C4", sent=None),
        _message("w1", "K6", "W+7", "2026-08-01", playbook="winback", sent="2026-08-08 09:00"),
    ],
    holdouts=[_holdout("K9", "R+45", "2026-07-10", playbook="reactivation")],
    contracts=[_contract("K6", "2026-08-20")],
    activity=[
        {
            "customer_key": "C4",
            "month": pd.Timestamp("2026-07-01").date(),
            "transactions": 3,
            "last_active": pd.Timestamp("2026-07-10").date(),
        },
        {
            "customer_key": "C4",
            "month": pd.Timestamp("2026-09-01").date(),
            "transactions": 1,
            "last_active": pd.Timestamp("2026-09-14").date(),
        },
        {
            "customer_key": "C9",
            "month": pd.Timestamp("2026-07-01").date(),
            "transactions": 2,
            "last_active": pd.Timestamp("2026-07-30").date(),
        },
    ],
)


def test_a_customer_with_two_inactive_contracts_counts_once() -> None:
    out = kpi_inputs(RETENTION, PLAYBOOKS, FX)["reactivation"]
    assert sorted(out.loc[out["playbook"] == "reactivation", "customer_key"]) == ["C4", "C9"]


def test_reactivation_is_the_first_active_month_after_the_anchor() -> None:
    out = _by(kpi_inputs(RETENTION, PLAYBOOKS, FX)["reactivation"], "customer_key")
    assert out["C4"]["reactivated_at"] == pd.Timestamp("2026-09-01")
    # Activity later in the anchor's own month counts from the day after the anchor.
    assert out["C9"]["reactivated_at"] == pd.Timestamp("2026-07-11")


def test_win_back_is_a_renewal_after_the_lapse() -> None:
    out = _by(kpi_inputs(RETENTION, PLAYBOOKS, FX)["reactivation"], "customer_key")
    assert out["C6"]["became_inactive"] == pd.Timestamp("2026-08-01")
    assert out["C6"]["reactivated_at"] == pd.Timestamp("2026-08-20")


def _reward(
    key: str, customer: str, contract: str | None, status: str, cost: float, granted: str
) -> dict[str, Any]:
    return {
        "reward_key": key,
        "customer_key": customer,
        "market": "DE",
        "contract_key": contract,
        "rule": "early-renewal",
        "status": status,
        "cost_eur": cost,
        "granted_at": datetime.fromisoformat(granted).replace(tzinfo=UTC),
    }


def test_reward_cost_goes_to_its_contract_or_else_the_customers_nearest_term() -> None:
    rows = replace(
        RENEWAL,
        rewards=pd.DataFrame(
            [
                _reward("g1", "C1", "K1", "granted", 10.0, "2026-09-21 00:00"),
                _reward("g2", "C2", None, "redeemed", 5.0, "2026-09-30 00:00"),
                _reward("g3", "C1", "K1", "clawed_back", 7.0, "2026-09-22 00:00"),
                _reward("g4", "C3", "K3", "granted", 9.0, "2026-10-06 00:00"),
            ]
        ),
    )
    out = _by(kpi_inputs(rows, PLAYBOOKS, FX)["exposures"], "contract_key")
    # Clawed-back rewards cost nothing; a control term never carries reward cost.
    assert {k: r["reward_cost_eur"] for k, r in out.items()} == {"K1": 10.0, "K2": 5.0, "K3": 0.0}
    rewards = kpi_inputs(rows, PLAYBOOKS, FX)["rewards"]
    assert len(rewards) == 4 and rewards["granted_at"].iloc[0] == pd.Timestamp("2026-09-21")


def test_an_amount_in_a_currency_without_a_rate_names_the_currency_and_the_file() -> None:
    with pytest.raises(MissingRate, match=r"JPY.*config/rewards/_fx.yaml"):
        to_eur(pd.Series([1.0]), pd.Series(["JPY"]), FX)


def test_a_missing_amount_needs_no_rate() -> None:
    out = to_eur(pd.Series([None, 2.0]), pd.Series(["JPY", "EUR"]), FX)
    assert pd.isna(out.iloc[0]) and out.iloc[1] == 2.0


def test_an_empty_period_gives_every_schema_with_no_rows() -> None:
    out = kpi_inputs(empty_rows(), PLAYBOOKS, FX)
    assert set(out) == set(kpis.SCHEMAS)
    for name, frame in out.items():
        assert frame.empty
        assert list(frame.columns) == [c.name for c in kpis.SCHEMAS[name]]


def test_messages_of_an_unknown_playbook_still_count_for_channel_health() -> None:
    rows = _rows(messages=[_message("x1", "K1", "S1", "2026-10-01", playbook="retired-playbook")])
    out = kpi_inputs(rows, PLAYBOOKS, FX)
    assert len(out["deliveries"]) == 1 and out["exposures"].empty
    assert list(MESSAGE_COLUMNS) == list(rows.messages.columns)
