"""Planning: steps fall due on their offset, catch up after a missed run, and the holdout is stable."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from config.loader import load_playbook
from tasks.domain.planning import (
    activity_targets,
    candidate_messages,
    coordinate,
    due_steps,
    holdout_bucket,
    in_holdout,
    message_key,
    renewal_targets,
    repayment_targets,
    split_holdout,
)
from tests.support.factories import ROOT

BOOK = load_playbook(ROOT / "config", "renewal-standard")
AS_OF = date(2026, 11, 22)


def _segments(days: list[int], **cols: list[object]) -> pd.DataFrame:
    n = len(days)
    base = {
        "contract_key": [f"K{i}" for i in range(n)],
        "customer_key": [f"C{i}" for i in range(n)],
        "market": ["DE"] * n,
        "product": ["loan"] * n,
        "status": ["active"] * n,
        "segment": ["renewal_due"] * n,
        "risk_band": ["low"] * n,
        "auto_renew": [False] * n,
        "term_end": [pd.Timestamp(AS_OF + timedelta(days=d)) for d in days],
    }
    base.update(cols)
    return renewal_targets(pd.DataFrame(base))


@pytest.mark.parametrize(
    ("days_to_end", "step"),
    [
        (30, "T-30"),
        (28, "T-30"),
        (27, None),
        (14, "T-14"),
        (7, "T-7"),
        (1, "T-1"),
        (-3, "T+3"),
        (-6, None),
        (45, None),
    ],
)
def test_step_due_on_its_offset_and_for_the_catch_up_days(days_to_end: int, step: str | None) -> None:
    due = due_steps(_segments([days_to_end]), BOOK, AS_OF)
    assert (due["step"].iloc[0] if len(due) else None) == step


def test_a_later_step_supersedes_an_earlier_one_still_in_catch_up() -> None:
    book_days = _segments([6], risk_band=["high"])
    assert due_steps(book_days, BOOK, AS_OF)["step"].tolist() == ["T-7-offer"]
    assert due_steps(_segments([6]), BOOK, AS_OF)["step"].tolist() == ["T-7"]


def test_auto_renewing_contracts_get_no_last_call() -> None:
    assert due_steps(_segments([1], auto_renew=[True]), BOOK, AS_OF).empty


@pytest.mark.parametrize("status", ["renewed", "lapsed", "cancelled"])
def test_only_active_contracts_are_reminded(status: str) -> None:
    assert due_steps(_segments([30], status=[status]), BOOK, AS_OF).empty


def test_anchor_and_days_from_anchor_are_recorded() -> None:
    due = due_steps(_segments([30]), BOOK, AS_OF)
    assert due.loc[0, "anchor_date"] == AS_OF + timedelta(days=30)
    assert due.loc[0, "days_from_anchor"] == -30


def test_candidates_keep_channel_order_and_keys() -> None:
    due = due_steps(_segments([7]), BOOK, AS_OF)
    cands = candidate_messages(due, BOOK)
    assert cands["channel"].tolist() == ["email", "sms"]
    assert cands["rank"].tolist() == [0, 1]
    assert set(cands["send_rule"]) == {"all"}
    anchor = AS_OF + timedelta(days=7)
    assert cands["message_key"].tolist() == [
        message_key("renewal-standard", "K0", anchor, "T-7", "email"),
        message_key("renewal-standard", "K0", anchor, "T-7", "sms"),
    ]


def test_same_contract_same_step_gives_the_same_key_on_another_day() -> None:
    first = candidate_messages(due_steps(_segments([30]), BOOK, AS_OF), BOOK)
    next_day = candidate_messages(due_steps(_segments([30]), BOOK, AS_OF + timedelta(days=1)), BOOK)
    assert first["message_key"].tolist() == next_day["message_key"].tolist()


def test_holdout_is_stable_and_close_to_its_share() -> None:
    keys = pd.Series([f"C{i:07d}" for i in range(20000)])
    first = in_holdout(keys, "holdout:renewal-standard", 0.05)
    again = in_holdout(keys, "holdout:renewal-standard", 0.05)
    assert first.equals(again)
    assert 0.04 < first.mean() < 0.06


def test_holdout_differs_per_playbook() -> None:
    keys = pd.Series([f"C{i:07d}" for i in range(2000)])
    assert not in_holdout(keys, "holdout:a", 0.5).equals(in_holdout(keys, "holdout:b", 0.5))


def test_holdout_bucket_is_a_known_constant() -> None:
    # Pinned so that a library or Python upgrade can never silently reshuffle the control group.
    assert holdout_bucket("holdout:renewal-standard", "C0000001") == pytest.approx(0.073312, abs=1e-6)


def test_split_holdout_keeps_every_due_step_on_one_side() -> None:
    due = due_steps(_segments([30] * 400), BOOK, AS_OF)
    treated, control = split_holdout(due, BOOK)
    assert len(treated) + len(control) == 400
    assert set(treated["contract_key"]).isdisjoint(control["contract_key"])
    assert 0 < len(control) < 60


def test_repayment_targets_are_the_unpaid_instalments_anchored_on_their_due_date() -> None:
    segments = _segments([200, 200]).rename(columns={"anchor_date": "term_end"}).drop(columns=["target_key"])
    instalments = pd.DataFrame(
        {
            "instalment_key": ["I1", "I2", "I3"],
            "contract_key": ["K0", "K0", "K1"],
            "due_date": pd.to_datetime(["2026-11-15", "2026-10-15", "2026-11-15"]),
            "paid_date": pd.to_datetime([None, "2026-10-15", None]),
        }
    )
    targets = repayment_targets(instalments, segments)
    assert sorted(targets["target_key"]) == ["I1", "I3"]
    assert set(pd.to_datetime(targets["anchor_date"]).dt.date) == {date(2026, 11, 15)}


def test_same_day_steps_of_a_lower_priority_playbook_are_superseded() -> None:
    due = due_steps(_segments([30, 30]), BOOK, AS_OF)
    kept, superseded = coordinate(due, {"C0"})
    assert (kept["customer_key"].tolist(), superseded["customer_key"].tolist()) == (["C1"], ["C0"])


def test_reactivation_targets_anchor_on_each_inactive_customers_last_activity() -> None:
    segments = pd.DataFrame(
        {
            "contract_key": ["K0", "K1", "K2", "K3"],
            "customer_key": ["C0", "C1", "C2", "C3"],
            "market": "DE",
            "product": "loan",
            "status": "active",
            "inactive": [True, True, False, True],
        }
    )
    last_active = pd.Series(
        pd.to_datetime(["2026-05-01", "2026-06-30", "2026-07-01", "2026-08-15"]),
        index=["C0", "C1", "C2", "C1"],
    )
    targets = activity_targets(segments, last_active)
    # C3 has no activity at all, C2 is active; C1's later row is the one that counts.
    assert targets["customer_key"].tolist() == ["C0", "C1"]
    assert targets["anchor_date"].tolist() == [pd.Timestamp("2026-05-01"), pd.Timestamp("2026-08-15")]


@pytest.mark.parametrize("inactive", [[True, False], [False, False]])
def test_reactivation_targets_are_empty_when_no_customer_has_any_activity(inactive: list[bool]) -> None:
    segments = pd.DataFrame(
        {
            "contract_key": ["K0", "K1"],
            "customer_key": ["C0", "C1"],
            "market": "DE",
            "product": "loan",
            "status": "active",
            "inactive": inactive,
        }
    )
    last_active = pd.Series(pd.to_datetime(pd.Series([], dtype="object")), index=pd.Index([], dtype="object"))
    assert activity_targets(segments, last_active).empty
