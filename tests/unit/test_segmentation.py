"""Segment v1: window and past-due boundaries, inactivity, the scorecard and segment precedence."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pandas as pd
import pytest

from config.loader import load_segmentation
from tasks.domain.segmentation import activity_months, label_bands, segment_contracts
from tests.support.factories import ROOT

CONFIG = load_segmentation(ROOT / "config")
AS_OF = date(2026, 11, 22)


def _frames(
    days_to_end: int = 200,
    dpd: int | None = None,
    tx_per_month: int = 10,
    since_years: float = 6,
    late_paid: int = 0,
    auto_renew: bool = True,
    status: str = "active",
) -> dict[str, pd.DataFrame]:
    contracts = pd.DataFrame(
        {
            "contract_key": ["K1"],
            "customer_key": ["C1"],
            "product": ["loan"],
            "status": [status],
            "term_end": [pd.Timestamp(AS_OF + timedelta(days=days_to_end))],
            "auto_renew": [auto_renew],
            "price": [100.0],
            "currency": ["EUR"],
        }
    )
    customers = pd.DataFrame(
        {
            "customer_key": ["C1"],
            "market": ["DE"],
            "customer_since": [pd.Timestamp(AS_OF) - pd.Timedelta(days=round(since_years * 365.25))],
        }
    )
    rows = []
    for i in range(late_paid):
        due = pd.Timestamp(AS_OF) - pd.Timedelta(days=30 * (i + 1))
        rows.append(
            {
                "instalment_key": f"L{i}",
                "contract_key": "K1",
                "due_date": due,
                "paid_date": due + pd.Timedelta(days=5),
            }
        )
    if dpd is not None:
        rows.append(
            {
                "instalment_key": "U",
                "contract_key": "K1",
                "due_date": pd.Timestamp(AS_OF) - pd.Timedelta(days=dpd),
                "paid_date": pd.NaT,
            }
        )
    instalments = pd.DataFrame(rows, columns=["instalment_key", "contract_key", "due_date", "paid_date"])
    months = [(pd.Timestamp(AS_OF).to_period("M") - k).to_timestamp() for k in (1, 2, 3)]
    activity = pd.DataFrame({"customer_key": ["C1"] * 3, "month": months, "transactions": [tx_per_month] * 3})
    return {"contracts": contracts, "customers": customers, "instalments": instalments, "activity": activity}


def _segment(**kwargs: object) -> pd.Series:
    f = _frames(**kwargs)  # type: ignore[arg-type]
    return segment_contracts(
        f["contracts"], f["customers"], f["instalments"], f["activity"], AS_OF, CONFIG
    ).iloc[0]


@pytest.mark.parametrize(
    ("days", "window"),
    [
        (-1, "lapsed"),
        (0, "0-7"),
        (7, "0-7"),
        (8, "8-14"),
        (14, "8-14"),
        (15, "15-30"),
        (30, "15-30"),
        (31, "31-60"),
        (60, "31-60"),
        (61, "61-90"),
        (90, "61-90"),
        (91, ">90"),
    ],
)
def test_renewal_window_boundaries(days: int, window: str) -> None:
    assert _segment(days_to_end=days)["renewal_window"] == window


@pytest.mark.parametrize(
    ("dpd", "bucket"),
    [
        (None, "current"),
        (1, "1-29"),
        (29, "1-29"),
        (30, "30-59"),
        (59, "30-59"),
        (60, "60-89"),
        (89, "60-89"),
        (90, "90+"),
    ],
)
def test_days_past_due_bucket_boundaries(dpd: int | None, bucket: str) -> None:
    row = _segment(dpd=dpd)
    assert row["dpd_bucket"] == bucket
    assert row["dpd"] == (dpd or 0)


def test_instalment_due_today_is_not_past_due() -> None:
    assert _segment(dpd=0)["dpd"] == 0


@pytest.mark.parametrize(("tx", "inactive"), [(0, True), (1, True), (2, False), (3, False)])
def test_inactive_below_two_transactions_a_month(tx: int, inactive: bool) -> None:
    assert bool(_segment(tx_per_month=tx)["inactive"]) is inactive


def test_loyal_active_auto_renewing_customer_scores_zero() -> None:
    row = _segment(since_years=6, tx_per_month=10, auto_renew=True)
    assert (row["risk_score"], row["risk_band"], row["risk_factors"]) == (0, "low", "")


def test_scorecard_points_add_up_and_name_their_factors() -> None:
    row = _segment(since_years=0.5, late_paid=2, tx_per_month=1, auto_renew=False)
    assert row["risk_score"] == 25 + 20 + 25 + 20
    assert row["risk_band"] == "high"
    assert row["risk_factors"] == "tenure+25,low_activity+25,late_payments+20"


@pytest.mark.parametrize(("late", "points"), [(0, 0), (1, 10), (2, 20), (3, 20), (4, 30)])
def test_late_payment_points(late: int, points: int) -> None:
    assert _segment(late_paid=late)["risk_score"] == points


def test_band_thresholds() -> None:
    assert _segment(auto_renew=False, tx_per_month=3)["risk_band"] == "medium"  # 20 + 10 = 30


@pytest.mark.parametrize(
    ("kwargs", "segment"),
    [
        ({"dpd": 60, "days_to_end": 5}, "arrears_severe"),
        ({"dpd": 1, "days_to_end": 5}, "arrears"),
        (
            {"days_to_end": 5, "since_years": 0.2, "tx_per_month": 0, "auto_renew": False},
            "renewal_due_high_risk",
        ),
        ({"days_to_end": 90}, "renewal_due"),
        ({"days_to_end": -3}, "lapsed"),
        ({"days_to_end": 200, "tx_per_month": 1}, "inactive"),
        ({"days_to_end": 200}, "active"),
    ],
)
def test_segment_precedence(kwargs: dict[str, object], segment: str) -> None:
    assert _segment(**kwargs)["segment"] == segment


def test_label_bands_leaves_nothing_unlabelled() -> None:
    values = pd.Series(range(-400, 400))
    assert (label_bands(values, CONFIG.renewal_windows) != "").all()


@pytest.mark.parametrize(
    ("as_of", "months", "window"),
    [
        (date(2026, 11, 22), 3, (date(2026, 5, 1), date(2026, 11, 1))),
        (date(2026, 2, 1), 3, (date(2025, 8, 1), date(2026, 2, 1))),
        (date(2026, 11, 22), 12, (date(2025, 11, 1), date(2026, 11, 1))),
    ],
)
def test_activity_read_covers_the_scorecards_and_the_models_look_back(
    as_of: date, months: int, window: tuple[date, date]
) -> None:
    config = dataclasses.replace(CONFIG, activity_months=months)
    assert activity_months(as_of, config) == window


def test_scorecard_alone_reads_only_its_own_activity_months() -> None:
    config = dataclasses.replace(CONFIG, activity_months=3)
    assert activity_months(date(2026, 11, 22), config, scoring=False) == (date(2026, 8, 1), date(2026, 11, 1))
