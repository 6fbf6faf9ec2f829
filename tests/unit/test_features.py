"""Risk features are point-in-time: each row sees only what was on record before its decision date."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.domain.contract import Entity
from tasks.domain.features import (
    FEATURES,
    ModelKind,
    history_start,
    renewal_scoring_frame,
    renewal_training_frame,
    repayment_scoring_frame,
    repayment_training_frame,
)
from tasks.sources.demo_data import generate_portfolio
from tasks.sources.raw import RawFrame
from tasks.sources.validation import validate_all
from tests.support.factories import markets, raw_set

AS_OF = date(2026, 11, 22)
LONG_AGO = date(2000, 1, 1)
Frames = dict[Entity, pd.DataFrame]


def _canonical(**rows: list[dict[str, str]]) -> Frames:
    result = validate_all(raw_set(**rows), markets())
    assert result.quarantine.empty, result.quarantine
    return result.clean


def _book() -> Frames:
    """One customer with a lapsed, an on-time renewed, a late-renewed and an open term, and their history."""
    contract = {
        "customer_key": "C1",
        "product": "loan",
        "price": "1000.00",
        "currency": "EUR",
        "start_date": "",
    }
    return _canonical(
        customers=[{"customer_key": "C1", "customer_since": "2020-01-01"}],
        contracts=[
            {**contract, "contract_key": "K1", "status": "lapsed", "term_end": "2026-06-30"},
            {
                **contract,
                "contract_key": "K2",
                "status": "renewed",
                "term_end": "2025-10-31",
                "renewed_at": "2025-10-01",
            },
            {
                **contract,
                "contract_key": "K3",
                "status": "renewed",
                "term_end": "2026-03-31",
                "renewed_at": "2026-04-10",
                "auto_renew": "true",
            },
            {**contract, "contract_key": "K4", "status": "active", "term_end": "2027-01-31"},
        ],
        instalments=[
            # Late by 10 days, well before K1's decision date (2026-05-31).
            {
                "instalment_key": "I1",
                "contract_key": "K4",
                "due_date": "2026-01-10",
                "paid_date": "2026-01-20",
            },
            {
                "instalment_key": "I4",
                "contract_key": "K4",
                "due_date": "2026-02-10",
                "paid_date": "2026-02-05",
            },
            # 41 days late, settled before the decision date.
            {
                "instalment_key": "I5",
                "contract_key": "K4",
                "due_date": "2026-03-10",
                "paid_date": "2026-04-20",
            },
            # Due before the decision date, paid after it: 11 days overdue on the day.
            {
                "instalment_key": "I2",
                "contract_key": "K4",
                "due_date": "2026-05-20",
                "paid_date": "2026-06-25",
            },
            # Due after the decision date: invisible to it, however late.
            {"instalment_key": "I3", "contract_key": "K4", "due_date": "2026-06-10", "paid_date": ""},
        ],
        activity=[
            {"customer_key": "C1", "month": month, "transactions": str(count), "last_active": ""}
            for month, count in [
                ("2025-11", 5),
                ("2025-12", 5),
                ("2026-01", 5),
                ("2026-02", 10),
                ("2026-03", 20),
                ("2026-04", 30),
                # The month of the decision date is not complete on that day.
                ("2026-05", 1000),
            ]
        ],
    )


def _training(frames: Frames, as_of: date = AS_OF, history_from: date | None = LONG_AGO) -> pd.DataFrame:
    return renewal_training_frame(
        frames[Entity.CONTRACTS],
        frames[Entity.CUSTOMERS],
        frames[Entity.INSTALMENTS],
        frames[Entity.ACTIVITY],
        as_of,
        history_from=history_from,
    )


class TestRenewalLabels:
    def test_one_row_per_ended_renewed_or_lapsed_term(self) -> None:
        frame = _training(_book())
        assert sorted(frame["contract_key"]) == ["K1", "K2", "K3"]

    def test_lapsed_and_late_renewals_count_as_not_renewed(self) -> None:
        labels = _training(_book()).set_index("contract_key")["not_renewed"].to_dict()
        assert labels == {"K1": 1, "K2": 0, "K3": 1}

    def test_terms_ending_on_or_after_as_of_are_left_out(self) -> None:
        frame = _training(_book(), as_of=date(2026, 6, 30))
        assert sorted(frame["contract_key"]) == ["K2", "K3"]

    def test_decision_date_is_thirty_days_before_term_end(self) -> None:
        row = _training(_book()).set_index("contract_key").loc["K1"]
        assert row["decision_date"] == pd.Timestamp("2026-05-31")


class TestRenewalFeatures:
    @pytest.fixture
    def k1(self) -> pd.Series:
        return _training(_book()).set_index("contract_key").loc["K1"]

    def test_payments_count_only_what_was_due_before_the_decision(self, k1: pd.Series) -> None:
        assert k1["late_payments_12m"] == 3
        assert k1["instalments_12m"] == 4
        assert k1["severe_late_12m"] == 1

    def test_an_instalment_paid_after_the_decision_was_overdue_on_the_day(self, k1: pd.Series) -> None:
        assert k1["days_past_due"] == 11
        assert k1["overdue_instalments"] == 1
        assert k1["worst_days_late"] == 41

    def test_activity_uses_the_three_full_months_before(self, k1: pd.Series) -> None:
        assert k1["transactions_per_month"] == 20
        assert k1["no_activity_history"] == 0
        assert k1["activity_change"] == pytest.approx(math.log2(21 / 6))

    def test_earlier_outcomes_count_only_those_known_before(self, k1: pd.Series) -> None:
        assert k1["earlier_renewals"] == 2
        assert k1["earlier_lapses"] == 0

    def test_a_term_renewed_before_its_decision_date_was_not_open_then(self) -> None:
        frames = _book()
        contracts = frames[Entity.CONTRACTS]
        contracts.loc[contracts["contract_key"] == "K2", "renewed_at"] = pd.Timestamp("2025-09-30")
        assert "K2" not in set(_training(frames)["contract_key"])

    def test_contract_attributes(self, k1: pd.Series) -> None:
        assert k1["tenure_years"] == pytest.approx(
            (pd.Timestamp("2026-05-31") - pd.Timestamp("2020-01-01")).days / 365.25
        )
        assert k1["log_price_eur"] == pytest.approx(math.log1p(1000))
        assert (k1["product"], k1["market"], k1["auto_renew"]) == ("loan", "DE", 0)

    def test_no_activity_on_record_is_empty_with_a_flag(self) -> None:
        k2 = _training(_book()).set_index("contract_key").loc["K2"]
        assert np.isnan(k2["transactions_per_month"]) and k2["no_activity_history"] == 1

    def test_terms_decided_before_the_recorded_history_are_left_out_by_default(self) -> None:
        frames = _book()
        assert history_start(frames[Entity.INSTALMENTS], frames[Entity.ACTIVITY]) == date(2026, 1, 10)
        assert list(_training(frames, history_from=None)["contract_key"]) == ["K1"]


class TestRepayment:
    def test_one_row_per_instalment_due_over_thirty_days_ago_labelled_dpd30(self) -> None:
        frames = _book()
        frame = repayment_training_frame(
            frames[Entity.CONTRACTS],
            frames[Entity.CUSTOMERS],
            frames[Entity.INSTALMENTS],
            frames[Entity.ACTIVITY],
            date(2026, 7, 10),
            history_from=LONG_AGO,
        )
        labels = frame.set_index("instalment_key")["dpd30"].to_dict()
        # I3 is due 2026-06-10: only 30 days before as_of, so its outcome is not known yet.
        assert labels == {"I1": 0, "I4": 0, "I5": 1, "I2": 1}

    def test_features_are_known_three_days_before_the_due_date(self) -> None:
        frames = _book()
        frame = repayment_training_frame(
            frames[Entity.CONTRACTS],
            frames[Entity.CUSTOMERS],
            frames[Entity.INSTALMENTS],
            frames[Entity.ACTIVITY],
            AS_OF,
            history_from=LONG_AGO,
        ).set_index("instalment_key")
        i3 = frame.loc["I3"]
        assert i3["decision_date"] == pd.Timestamp("2026-06-07")
        assert (i3["late_payments_12m"], i3["days_past_due"], i3["overdue_instalments"]) == (3, 18, 1)
        assert i3["severe_late_12m"] == 1
        assert frame.loc["I1", "instalments_12m"] == 0 and frame.loc["I1", "amount_ratio"] == 1


# Point-in-time checks on a small demo portfolio: rebuild what was on record on a decision date and
# score the row as if it were open that day; the features must be exactly the training features.


@pytest.fixture(scope="module")
def demo() -> Frames:
    portfolio = generate_portfolio(400, 21, AS_OF, markets())
    raws = {e: RawFrame(e, e.value, f, pd.Series(range(2, len(f) + 2))) for e, f in portfolio.items()}
    return validate_all(raws, markets()).clean


def _known_on(frames: Frames, day: pd.Timestamp) -> Frames:
    """Return the frames as they stood on the morning of `day`: nothing dated on or after it."""
    inst = frames[Entity.INSTALMENTS]
    inst = inst[inst["due_date"] < day].copy()
    inst["paid_date"] = inst["paid_date"].where(inst["paid_date"] < day)
    activity = frames[Entity.ACTIVITY]
    activity = activity[activity["month"] < day.to_period("M").to_timestamp()]
    contracts = frames[Entity.CONTRACTS].copy()
    decided = ((contracts["status"] == "lapsed") & (contracts["term_end"] < day)) | (
        (contracts["status"] == "renewed") & (contracts["renewed_at"].fillna(contracts["term_end"]) < day)
    )
    contracts.loc[~decided & contracts["status"].isin(["lapsed", "renewed"]), "status"] = "active"
    contracts["renewed_at"] = contracts["renewed_at"].where(decided)
    return {**frames, Entity.INSTALMENTS: inst, Entity.ACTIVITY: activity, Entity.CONTRACTS: contracts}


def _assert_same_features(kind: ModelKind, trained: pd.Series, scored: pd.Series) -> None:
    for feature in FEATURES[kind]:
        a, b = trained[feature.name], scored[feature.name]
        if feature.kind == "category":
            assert a == b, feature.name
        else:
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b), (feature.name, a, b)


def _args(frames: Frames) -> tuple[pd.DataFrame, ...]:
    return (
        frames[Entity.CONTRACTS],
        frames[Entity.CUSTOMERS],
        frames[Entity.INSTALMENTS],
        frames[Entity.ACTIVITY],
    )


def test_renewal_training_features_equal_scoring_features_on_the_decision_date(demo: Frames) -> None:
    training = renewal_training_frame(*_args(demo), AS_OF)
    assert len(training) > 50 and training["not_renewed"].nunique() == 2
    for _, row in training.sample(40, random_state=1).iterrows():
        day = row["decision_date"]
        known = _known_on(demo, day)
        term = demo[Entity.CONTRACTS].set_index("contract_key").loc[[row["contract_key"]]].reset_index()
        term = term.assign(status="active", renewed_at=pd.NaT)
        scored = renewal_scoring_frame(term, *_args(known), day.date()).iloc[0]
        _assert_same_features("renewal", row, scored)


def test_repayment_training_features_equal_scoring_features_on_the_decision_date(demo: Frames) -> None:
    training = repayment_training_frame(*_args(demo), AS_OF)
    assert len(training) > 500 and training["dpd30"].sum() > 0
    late = training[training["late_payments_12m"] > 0].sample(20, random_state=2)
    for _, row in pd.concat([late, training.sample(20, random_state=3)]).iterrows():
        day = row["decision_date"]
        known = _known_on(demo, day)
        inst = demo[Entity.INSTALMENTS].set_index("instalment_key").loc[[row["instalment_key"]]].reset_index()
        scored = repayment_scoring_frame(inst.assign(paid_date=pd.NaT), *_args(known), day.date()).iloc[0]
        _assert_same_features("repayment", row, scored)


def _with_future_rows(frames: Frames) -> Frames:
    """Return the frames plus rows dated after AS_OF: new instalments, activity and contracts."""
    later = pd.Timestamp(AS_OF) + timedelta(days=1)
    inst = frames[Entity.INSTALMENTS]
    contracts = frames[Entity.CONTRACTS]
    open_keys = contracts.loc[contracts["status"] == "active", "contract_key"].head(50)
    future_inst = pd.DataFrame(
        {
            "instalment_key": [f"F{i:07d}" for i in range(len(open_keys))],
            "contract_key": open_keys.to_numpy(),
            "due_date": later + pd.Timedelta(days=20),
            "amount": 99.0,
            "currency": "EUR",
            "paid_date": pd.NaT,
        }
    )
    customers = frames[Entity.CUSTOMERS]["customer_key"].head(50)
    future_activity = pd.DataFrame(
        {"customer_key": customers.to_numpy(), "month": pd.Timestamp("2027-01-01"), "transactions": 500}
    )
    future_contracts = contracts.head(30).assign(
        contract_key=[f"KF{i:06d}" for i in range(30)],
        status="lapsed",
        start_date=later,
        term_end=later + pd.Timedelta(days=5),
        renewed_at=pd.NaT,
    )
    return {
        **frames,
        Entity.INSTALMENTS: pd.concat([inst, future_inst], ignore_index=True),
        Entity.ACTIVITY: pd.concat([frames[Entity.ACTIVITY], future_activity], ignore_index=True),
        Entity.CONTRACTS: pd.concat([contracts, future_contracts], ignore_index=True),
    }


def test_rows_dated_after_as_of_change_no_training_row(demo: Frames) -> None:
    future = _with_future_rows(demo)
    pd.testing.assert_frame_equal(
        renewal_training_frame(*_args(demo), AS_OF), renewal_training_frame(*_args(future), AS_OF)
    )
    pd.testing.assert_frame_equal(
        repayment_training_frame(*_args(demo), AS_OF), repayment_training_frame(*_args(future), AS_OF)
    )


def test_every_feature_is_documented_in_one_line() -> None:
    for features in FEATURES.values():
        for feature in features:
            assert feature.meaning and "\n" not in feature.meaning, feature.name
            assert feature.title and "_" not in feature.title, feature.name
