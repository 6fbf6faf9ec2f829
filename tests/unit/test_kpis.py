"""KPI definitions: intervals against published values, hand-computed rates, maturity, empty inputs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from tasks.domain import kpis
from tests.support.factories import ROOT

AS_OF = "2026-11-22"
NaT = pd.NaT


def _ts(value: str | None) -> Any:
    return pd.NaT if value is None else pd.Timestamp(value)


def _exposure(
    term_end: str,
    renewed_at: str | None,
    group: str = "treated",
    *,
    market: str = "DE",
    segment: str = "standard",
    customer: str = "C1",
    price: float = 100.0,
    first_contact: str | None = None,
    messaging: float = 0.0,
    reward: float = 0.0,
) -> dict[str, Any]:
    return {
        "contract_key": f"K-{customer}",
        "customer_key": customer,
        "market": market,
        "playbook": "renewal-standard",
        "segment": segment,
        "group": group,
        "term_end": _ts(term_end),
        "renewed_at": _ts(renewed_at),
        "price_eur": price,
        "first_contact_at": _ts(first_contact),
        "messages_sent": 1 if group == "treated" else 0,
        "messaging_cost_eur": messaging,
        "reward_cost_eur": reward,
    }


def _frame(rows: list[dict[str, Any]], schema: tuple[kpis.Column, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[c.name for c in schema]) if rows else kpis.empty_frame(schema)


def _row(frame: pd.DataFrame, **keys: str) -> pd.Series:
    match = frame
    for key, value in keys.items():
        match = match[match[key] == value]
    assert len(match) == 1, match
    return match.iloc[0]


class TestProportionCi:
    def test_wilson_interval_by_hand(self) -> None:
        # 8/10: z^2 = 3.841459; centre = (0.8 + 3.841459/20) / (1 + 3.841459/10) = 0.992073 / 1.384146
        # = 0.716740; half = 1.959964 * sqrt(0.8*0.2/10 + 3.841459/400) / 1.384146 = 0.226578
        # -> 0.716740 -/+ 0.226578 = (0.490162, 0.943318)
        p = kpis.proportion_ci(8, 10)
        assert p.rate == 0.8
        assert p.low == pytest.approx(0.490162, abs=1e-6)
        assert p.high == pytest.approx(0.943318, abs=1e-6)

    @pytest.mark.parametrize(
        ("successes", "n", "low", "high"),
        [
            # Newcombe (1998) "Two-sided confidence intervals for the single proportion", Table I, method 3.
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ],
    )
    def test_wilson_interval_matches_published_values(
        self, successes: int, n: int, low: float, high: float
    ) -> None:
        p = kpis.proportion_ci(successes, n)
        assert (round(p.low, 4), round(p.high, 4)) == (low, high)

    def test_empty_sample_has_nan_rate_and_na_interval(self) -> None:
        p = kpis.proportion_ci(0, 0)
        assert math.isnan(p.rate) and math.isnan(p.low) and math.isnan(p.high)
        assert kpis.interval_text(p.low, p.high) == "n/a"

    def test_other_confidence_levels_use_the_normal_quantile(self) -> None:
        # z(0.90) = 1.644854, narrower than the 95% interval (0.490162, 0.943318).
        assert kpis.z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
        p = kpis.proportion_ci(8, 10, confidence=0.90)
        assert 0.490162 < p.low < p.high < 0.943318

    @pytest.mark.parametrize(("successes", "n"), [(3, 2), (-1, 4)])
    def test_rejects_impossible_counts(self, successes: int, n: int) -> None:
        with pytest.raises(ValueError, match="successes"):
            kpis.proportion_ci(successes, n)

    @pytest.mark.parametrize("confidence", [0, 1, 1.5])
    def test_rejects_a_confidence_outside_zero_and_one(self, confidence: float) -> None:
        with pytest.raises(ValueError, match="confidence"):
            kpis.proportion_ci(1, 2, confidence)


class TestUpliftCi:
    @pytest.mark.parametrize(
        ("s_t", "n_t", "s_c", "n_c", "difference", "low", "high"),
        [
            # Newcombe (1998) "Interval estimation for the difference between independent proportions",
            # Table II, method 10 (hybrid score). Example (a): 56/70 - 48/80 = 0.8 - 0.6 = 0.2000.
            (56, 70, 48, 80, 0.2000, 0.0524, 0.3339),
            (9, 10, 3, 10, 0.6000, 0.1705, 0.8090),
            (6, 7, 2, 7, 0.5714, 0.0582, 0.8062),
            (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
            (0, 10, 0, 20, 0.0000, -0.1611, 0.2775),
            (0, 10, 0, 10, 0.0000, -0.2775, 0.2775),
            (10, 10, 0, 20, 1.0000, 0.6791, 1.0000),
            (10, 10, 0, 10, 1.0000, 0.6075, 1.0000),
        ],
    )
    def test_newcombe_method_10_matches_the_published_table(
        self, s_t: int, n_t: int, s_c: int, n_c: int, difference: float, low: float, high: float
    ) -> None:
        u = kpis.uplift_ci(s_t, n_t, s_c, n_c)
        assert (round(u.difference, 4), round(u.low, 4), round(u.high, 4)) == (difference, low, high)

    def test_returns_both_rates_with_their_wilson_intervals(self) -> None:
        u = kpis.uplift_ci(56, 70, 48, 80)
        # Wilson 56/70 = (0.6918, 0.8770) and 48/80 = (0.4905, 0.7004); the difference interval is
        # low  = 0.2 - sqrt((0.8 - 0.6918)^2 + (0.7004 - 0.6)^2) = 0.0524
        # high = 0.2 + sqrt((0.8770 - 0.8)^2 + (0.6 - 0.4905)^2) = 0.3339
        assert (u.treated.rate, u.control.rate) == (0.8, 0.6)
        assert (round(u.treated.low, 4), round(u.treated.high, 4)) == (0.6918, 0.8770)
        assert (round(u.control.low, 4), round(u.control.high, 4)) == (0.4905, 0.7004)
        assert u.conclusive

    def test_empty_control_gives_nan_uplift(self) -> None:
        u = kpis.uplift_ci(5, 10, 0, 0)
        assert u.treated.rate == 0.5
        assert math.isnan(u.difference) and math.isnan(u.low) and math.isnan(u.high)
        assert not u.conclusive


RENEWALS = [
    # Mature means term_end + 14 days <= 2026-11-22, i.e. term_end <= 2026-11-08.
    _exposure("2026-10-01", "2026-09-25", customer="T1"),  # on time
    _exposure("2026-10-01", "2026-10-01", customer="T2"),  # on the term end: on time
    _exposure("2026-10-01", "2026-10-02", customer="T3"),  # a day late, within grace
    _exposure("2026-11-08", None, customer="T4"),  # just mature, not renewed
    _exposure("2026-11-09", "2026-11-01", customer="T5"),  # one day short of mature: left out
    _exposure("2026-10-01", "2026-09-30", "control", customer="K1"),  # on time
    _exposure("2026-10-15", None, "control", customer="K2"),
    _exposure("2026-10-15", "2026-11-20", "control", customer="K3"),  # 36 days late: churned
    _exposure("2026-10-01", "2026-10-01", segment="high-risk", customer="T6"),  # a segment without control
]


class TestRenewalUplift:
    def test_rates_and_uplift_by_hand(self) -> None:
        out = kpis.renewal_uplift(_frame(RENEWALS, kpis.EXPOSURES), AS_OF)
        row = _row(out, segment="standard")
        # treated: T1, T2 on time of T1..T4 = 2/4; control: K1 of K1..K3 = 1/3; uplift 0.5 - 1/3 = 0.1667.
        assert (row.treated_n, row.treated_successes, row.control_n, row.control_successes) == (4, 2, 3, 1)
        assert row.treated_rate == 0.5
        assert row.control_rate == pytest.approx(1 / 3)
        expected = kpis.uplift_ci(2, 4, 1, 3)
        assert (row.uplift, row.uplift_low, row.uplift_high) == pytest.approx(
            (expected.difference, expected.low, expected.high)
        )

    def test_a_segment_without_control_has_nan_uplift(self) -> None:
        row = _row(kpis.renewal_uplift(_frame(RENEWALS, kpis.EXPOSURES), AS_OF), segment="high-risk")
        assert (row.treated_n, row.treated_successes, row.control_n) == (1, 1, 0)
        assert math.isnan(row.control_rate) and math.isnan(row.uplift) and math.isnan(row.uplift_low)

    def test_maturity_cut_off_is_term_end_plus_grace(self) -> None:
        frame = _frame(RENEWALS, kpis.EXPOSURES)
        # One day later T5 (term end 2026-11-09) matures too: treated standard becomes 3/5.
        later = _row(kpis.renewal_uplift(frame, "2026-11-23"), segment="standard")
        assert (later.treated_n, later.treated_successes) == (5, 3)
        # With no grace every term ending by the report day counts.
        no_grace = _row(kpis.renewal_uplift(frame, "2026-11-09", grace_days=0), segment="standard")
        assert no_grace.treated_n == 5

    def test_overall_figures_without_grouping_keys(self) -> None:
        out = kpis.renewal_uplift(_frame(RENEWALS, kpis.EXPOSURES), AS_OF, by=())
        assert list(out.columns) == list(kpis.UPLIFT_COLUMNS)
        # T1..T4 and T6: 3/5 treated on time; K1..K3: 1/3.
        assert (out.treated_n[0], out.treated_successes[0], out.control_n[0], out.control_successes[0]) == (
            5,
            3,
            3,
            1,
        )

    def test_empty_input_gives_no_rows_per_key_and_one_nan_row_overall(self) -> None:
        empty = kpis.empty_frame(kpis.EXPOSURES)
        assert kpis.renewal_uplift(empty, AS_OF).empty
        overall = kpis.renewal_uplift(empty, AS_OF, by=())
        assert len(overall) == 1 and overall.treated_n[0] == 0 and math.isnan(overall.uplift[0])

    def test_nothing_mature_yet_gives_an_empty_result(self) -> None:
        assert kpis.renewal_uplift(_frame(RENEWALS, kpis.EXPOSURES), "2026-10-01").empty

    def test_timezone_aware_timestamps_count_by_utc_day(self) -> None:
        frame = _frame(
            [_exposure("2026-10-01", None), _exposure("2026-10-01", None, "control")], kpis.EXPOSURES
        )
        # 2026-10-01 23:30 at UTC-02:00 is 2026-10-02 01:30 UTC: a day late, so not on time.
        frame["renewed_at"] = pd.Series([pd.Timestamp("2026-10-01T23:30:00-02:00"), pd.NaT], dtype=object)
        assert kpis.renewal_uplift(frame, AS_OF, by=()).treated_successes[0] == 0

    def test_missing_columns_are_named(self) -> None:
        frame = _frame(RENEWALS, kpis.EXPOSURES).drop(columns=["renewed_at", "segment"])
        with pytest.raises(
            kpis.MissingColumns, match="exposures is missing column\\(s\\) segment, renewed_at"
        ):
            kpis.renewal_uplift(frame, AS_OF)

    def test_unknown_grouping_key_is_named(self) -> None:
        with pytest.raises(kpis.MissingColumns, match="grouping key\\(s\\) product"):
            kpis.renewal_uplift(_frame(RENEWALS, kpis.EXPOSURES), AS_OF, by=["product"])

    def test_unknown_group_is_refused(self) -> None:
        frame = _frame([_exposure("2026-10-01", None, "holdout")], kpis.EXPOSURES)
        with pytest.raises(ValueError, match="holdout"):
            kpis.renewal_uplift(frame, AS_OF)


class TestChurnRate:
    def test_not_renewed_within_grace_is_churn(self) -> None:
        row = _row(kpis.churn_rate(_frame(RENEWALS, kpis.EXPOSURES), AS_OF), segment="standard")
        # treated: only T4 (never renewed) of 4 -> 1/4; T3 renewed a day late is not churn.
        # control: K2 (never) and K3 (36 days late > 14) of 3 -> 2/3; difference 0.25 - 0.6667 = -0.4167.
        assert (row.treated_successes, row.treated_n, row.control_successes, row.control_n) == (1, 4, 2, 3)
        assert row.uplift == pytest.approx(0.25 - 2 / 3)


INSTALMENTS_REPAY = [
    ("I1", "treated", "2026-11-01", "2026-11-01"),  # on the due date
    ("I2", "treated", "2026-11-01", "2026-11-03"),  # two days late
    ("I3", "treated", "2026-11-22", None),  # due on the report day, unpaid
    ("I4", "treated", "2026-11-23", None),  # not due yet: left out
    ("I5", "control", "2026-11-01", "2026-10-30"),
    ("I6", "control", "2026-11-01", None),
]


def _instalments(
    rows: list[tuple[str, str, str, str | None]], max_steps: dict[str, str] | None = None
) -> pd.DataFrame:
    steps = max_steps or {}
    return _frame(
        [
            {
                "instalment_key": key,
                "contract_key": f"K-{key}",
                "customer_key": f"C-{key}",
                "market": "DE",
                "playbook": "repayment-ladder",
                "group": group,
                "due_date": _ts(due),
                "paid_date": _ts(paid),
                "amount_eur": 250.0,
                "max_step": steps.get(key, ""),
            }
            for key, group, due, paid in rows
        ],
        kpis.INSTALMENT_EXPOSURES,
    )


class TestRepaymentUplift:
    def test_paid_by_the_due_date(self) -> None:
        out = kpis.repayment_uplift(_instalments(INSTALMENTS_REPAY), AS_OF, by=())
        # treated: I1 of I1..I3 -> 1/3; control: I5 of I5, I6 -> 1/2.
        assert (out.treated_successes[0], out.treated_n[0], out.control_successes[0], out.control_n[0]) == (
            1,
            3,
            1,
            2,
        )
        assert out.uplift[0] == pytest.approx(1 / 3 - 1 / 2)

    def test_within_days_extends_the_deadline_and_the_maturity(self) -> None:
        out = kpis.repayment_uplift(_instalments(INSTALMENTS_REPAY), AS_OF, by=(), within_days=3)
        # Mature when due + 3 <= 2026-11-22: I3 drops out; I2 paid 2 days late now counts -> 2/2.
        assert (out.treated_successes[0], out.treated_n[0]) == (2, 2)

    def test_empty_input_per_market(self) -> None:
        out = kpis.repayment_uplift(kpis.empty_frame(kpis.INSTALMENT_EXPOSURES), AS_OF)
        assert out.empty and list(out.columns) == ["market", "playbook", *kpis.UPLIFT_COLUMNS]


LADDER_ROWS = [
    # Due 2026-09-01; steps fall on 09-02 (D+1), 09-08 (D+7), 09-16 (D+15); cured = paid within 30 days
    # after the step: by 10-02, 10-08 and 10-16.
    ("A", "treated", "2026-09-01", "2026-09-05"),
    ("B", "treated", "2026-09-01", "2026-09-20"),
    ("C", "treated", "2026-09-01", None),
    ("D", "treated", "2026-09-01", "2026-10-10"),
    ("E", "treated", "2026-09-01", "2026-09-01"),  # paid on time, no step sent
    ("F", "treated", "2026-11-01", None),  # D+1 on 11-02 + 30 days is after the report day: immature
    ("G", "control", "2026-09-01", "2026-09-01"),  # paid before any step day
    ("H", "control", "2026-09-01", "2026-09-10"),  # unpaid on 09-02 and 09-08, cured for both
    ("I", "control", "2026-09-01", None),
]
LADDER_STEPS = {"A": "D+1", "B": "D+7", "C": "D+15", "D": "D+15", "F": "D+1"}


class TestLadderCureRates:
    def test_reached_stopped_and_cured_per_step_by_hand(self) -> None:
        out = kpis.ladder_cure_rates(_instalments(LADDER_ROWS, LADDER_STEPS), AS_OF)
        assert list(out.step) == ["D+1", "D+7", "D+15"]
        # D+1: reached A, B, C, D; stopped A; cured A (09-05), B (09-20) -> 2/4.
        # D+7: reached B, C, D; stopped B; cured B -> 1/3.
        # D+15: reached C, D; stopped C, D; cured D (10-10 <= 10-16) -> 1/2.
        got = out[["treated_reached", "stopped_here", "treated_cured"]].to_numpy().tolist()
        assert got == [[4, 1, 2], [3, 1, 1], [2, 2, 1]]
        assert list(out.treated_rate) == pytest.approx([0.5, 1 / 3, 0.5])

    def test_control_is_compared_on_instalments_unpaid_at_the_step_day(self) -> None:
        out = kpis.ladder_cure_rates(_instalments(LADDER_ROWS, LADDER_STEPS), AS_OF)
        # D+1 and D+7: H and I unpaid, H cured -> 1/2.
        # D+15 (09-16): H already paid; I unpaid and never cured -> 0/1.
        assert out[["control_unpaid", "control_cured"]].to_numpy().tolist() == [[2, 1], [2, 1], [1, 0]]

    def test_explicit_steps_include_rungs_nobody_stopped_at(self) -> None:
        out = kpis.ladder_cure_rates(
            _instalments(LADDER_ROWS, LADDER_STEPS), AS_OF, steps=["D+1", "D+3", "D+7", "D+15"]
        )
        row = _row(out, step="D+3")
        # Reaching D+3 means a max step of D+7 or later: B, C, D.
        assert (row.offset_days, row.treated_reached, row.stopped_here) == (3, 3, 0)

    @pytest.mark.parametrize(
        ("step", "offset"), [("D+7", 7), ("D-3", -3), ("D0", 0), ("DPD30", 30), ("T+3", 3)]
    )
    def test_step_offsets_are_read_from_the_name(self, step: str, offset: int) -> None:
        assert kpis.step_offset(step) == offset

    def test_a_step_without_an_offset_is_refused(self) -> None:
        with pytest.raises(ValueError, match="final-notice"):
            kpis.step_offset("final-notice")

    def test_empty_input_gives_no_steps(self) -> None:
        out = kpis.ladder_cure_rates(kpis.empty_frame(kpis.INSTALMENT_EXPOSURES), AS_OF)
        assert out.empty and list(out.columns) == list(kpis.LADDER_COLUMNS)


class TestReactivationRate:
    def test_active_again_within_the_window(self) -> None:
        rows = [
            # Mature when became_inactive + 30 <= 2026-11-22, i.e. on or before 2026-10-23.
            ("R1", "treated", "2026-10-01", "2026-10-20"),  # back after 19 days
            ("R2", "treated", "2026-10-01", "2026-11-05"),  # back after 35 days: too late
            ("R3", "treated", "2026-10-23", None),  # just mature
            ("R4", "treated", "2026-10-24", "2026-10-25"),  # immature: left out
            ("R5", "control", "2026-10-01", "2026-10-31"),  # back on day 30: counts
            ("R6", "control", "2026-10-01", None),
        ]
        frame = _frame(
            [
                {
                    "customer_key": key,
                    "market": "DE",
                    "playbook": "winback",
                    "group": group,
                    "became_inactive": _ts(inactive),
                    "reactivated_at": _ts(back),
                }
                for key, group, inactive, back in rows
            ],
            kpis.REACTIVATION,
        )
        out = kpis.reactivation_rate(frame, AS_OF, 30, by=())
        # treated R1 of R1..R3 -> 1/3; control R5 of R5, R6 -> 1/2.
        assert (out.treated_successes[0], out.treated_n[0], out.control_successes[0], out.control_n[0]) == (
            1,
            3,
            1,
            2,
        )


def _deliveries(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return _frame(
        [
            {
                "message_key": f"M{i}",
                "market": "DE",
                "channel": ch,
                "status": st,
                "error_code": code,
                "cost_eur": 0.5,
            }
            for i, (ch, st, code) in enumerate(rows)
        ],
        kpis.DELIVERIES,
    )


class TestChannelHealth:
    def test_rates_divide_by_attempted_messages(self) -> None:
        rows = [("email", "delivered", "")] * 3 + [
            ("email", "read", ""),
            ("email", "sent", ""),
            ("email", "sent", ""),
            ("email", "failed", "550"),
            ("email", "bounced", "550"),
            ("email", "bounced", "551"),
            ("email", "in_doubt", ""),
            ("email", "blocked", ""),
            ("email", "queued", ""),
            ("sms", "blocked", ""),
        ]
        out = kpis.channel_health(_deliveries(rows))
        email = _row(out, channel="email")
        # attempted = delivered 3 + read 1 + failed/bounced 3 + sent 2 = 9; in_doubt, blocked, queued apart.
        assert (email.messages, email.attempted, email.delivered, email.failed, email.pending) == (
            12,
            9,
            4,
            3,
            2,
        )
        assert (email.in_doubt, email.blocked, email.other) == (1, 1, 1)
        assert (email.delivery_rate, email.failure_rate, email.pending_rate) == pytest.approx(
            (4 / 9, 3 / 9, 2 / 9)
        )
        # 12 messages at EUR 0.50 = EUR 6.00 over 4 delivered = EUR 1.50.
        assert (email.cost_eur, email.cost_per_delivered_eur) == pytest.approx((6.0, 1.5))
        assert email.top_errors == "550 (2), 551 (1)"

    def test_a_channel_with_nothing_attempted_has_nan_rates(self) -> None:
        sms = _row(kpis.channel_health(_deliveries([("sms", "blocked", "")])), channel="sms")
        assert sms.attempted == 0 and math.isnan(sms.delivery_rate) and math.isnan(sms.cost_per_delivered_eur)

    def test_empty_input(self) -> None:
        assert kpis.channel_health(kpis.empty_frame(kpis.DELIVERIES)).empty
        overall = kpis.channel_health(kpis.empty_frame(kpis.DELIVERIES), by=())
        assert (
            overall.messages[0] == 0 and math.isnan(overall.failure_rate[0]) and overall.top_errors[0] == ""
        )


ECONOMICS = [
    # DE: treated 4 mature terms, 3 on time; mean price (100 + 200 + 100 + 100) / 4 = 125.
    _exposure("2026-10-01", "2026-09-28", customer="C1", price=100, messaging=1.0, reward=10.0),
    _exposure("2026-10-01", "2026-09-28", customer="C2", price=200, messaging=1.0),
    _exposure("2026-10-01", None, customer="C3", price=100, messaging=1.0),
    _exposure("2026-10-01", "2026-10-01", customer="C4", price=100, messaging=1.0),
    _exposure("2026-10-01", "2026-10-01", "control", customer="C5"),
    _exposure("2026-10-01", None, "control", customer="C6"),
    # FR: nobody renews; 2 treated with EUR 0.50 messaging each, 1 control.
    _exposure("2026-10-01", None, market="FR", customer="F1", messaging=0.5),
    _exposure("2026-10-01", None, market="FR", customer="F2", messaging=0.5),
    _exposure("2026-10-01", None, "control", market="FR", customer="F3"),
]
REWARD_ROWS = [
    ("W1", "C1", "DE", "redeemed", "2026-09-28"),
    ("W2", "C2", "DE", "expired", "2026-09-28"),
    ("W3", "C4", "DE", "clawed_back", "2026-09-30"),
    ("W4", "C1", "DE", "granted", "2026-11-30"),  # granted after the report day: left out
    ("W5", "C9", "DE", "granted", "2026-10-01"),  # customer without a mature term
]


def _rewards(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    return _frame(
        [
            {
                "reward_key": key,
                "customer_key": customer,
                "market": market,
                "rule": "early-renewal",
                "status": status,
                "cost_eur": 10.0,
                "granted_at": _ts(granted),
            }
            for key, customer, market, status, granted in rows
        ],
        kpis.REWARDS,
    )


class TestRewardEconomics:
    @pytest.fixture
    def out(self) -> pd.DataFrame:
        return kpis.reward_economics(_frame(ECONOMICS, kpis.EXPOSURES), _rewards(REWARD_ROWS), AS_OF)

    def test_incentive_roi_by_hand(self, out: pd.DataFrame) -> None:
        de = _row(out, market="DE", playbook="renewal-standard")
        # uplift = 3/4 - 1/2 = 0.25; incremental renewals = 0.25 * 4 treated = 1.0;
        # incremental revenue = 1.0 * EUR 125 = EUR 125; cost = reward 10 + messaging 4 * 1.0 = EUR 14;
        # ROI = (125 - 14) / 14 = 7.9286; cost per retained = 14 / 3 = 4.6667; per incremental = 14 / 1 = 14.
        assert de.uplift == pytest.approx(0.25)
        assert de.mean_price_eur == pytest.approx(125.0)
        assert de.incremental_renewals == pytest.approx(1.0)
        assert de.incremental_revenue_eur == pytest.approx(125.0)
        assert (de.reward_cost_eur, de.messaging_cost_eur, de.total_cost_eur) == pytest.approx(
            (10.0, 4.0, 14.0)
        )
        assert de.roi == pytest.approx(111 / 14)
        assert de.cost_per_retained_eur == pytest.approx(14 / 3)
        assert de.cost_per_incremental_renewal_eur == pytest.approx(14.0)
        # The ROI interval follows the uplift interval: revenue at the bounds, same cost.
        assert de.roi_low == pytest.approx((de.uplift_low * 4 * 125 - 14) / 14)
        assert de.roi_high == pytest.approx((de.uplift_high * 4 * 125 - 14) / 14)

    def test_redemption_rate_excludes_clawed_back_and_later_rewards(self, out: pd.DataFrame) -> None:
        de = _row(out, market="DE", playbook="renewal-standard")
        # W1 redeemed, W2 expired count; W3 clawed back and W4 (after the report day) do not -> 1/2.
        assert (de.rewards, de.redeemed, de.clawed_back) == (2, 1, 1)
        assert de.redemption_rate == 0.5

    def test_rewards_of_customers_without_a_mature_term_are_shown_unattributed(
        self, out: pd.DataFrame
    ) -> None:
        extra = _row(out, market="DE", playbook=kpis.UNATTRIBUTED)
        assert (extra.rewards, extra.treated_n, extra.total_cost_eur) == (1, 0, 0.0)
        assert math.isnan(extra.roi)

    def test_zero_renewals_give_nan_cost_per_retained_customer(self, out: pd.DataFrame) -> None:
        fr = _row(out, market="FR", playbook="renewal-standard")
        # uplift 0/2 - 0/1 = 0, so no incremental renewal; cost EUR 1.00; ROI = (0 - 1) / 1 = -1.
        assert fr.treated_successes == 0 and fr.total_cost_eur == pytest.approx(1.0)
        assert math.isnan(fr.cost_per_retained_eur) and math.isnan(fr.cost_per_incremental_renewal_eur)
        assert fr.roi == pytest.approx(-1.0)
        assert math.isnan(fr.redemption_rate)

    def test_rewards_take_playbook_and_segment_from_the_nearest_term(self) -> None:
        rows = [
            _exposure("2026-06-01", "2026-05-30", customer="C1", segment="standard"),
            _exposure("2026-10-01", "2026-09-28", customer="C1", segment="high-risk"),
        ]
        out = kpis.reward_economics(
            _frame(rows, kpis.EXPOSURES),
            _rewards([("W1", "C1", "DE", "redeemed", "2026-09-25")]),
            AS_OF,
            by=["segment"],
        )
        assert _row(out, segment="high-risk").rewards == 1
        assert _row(out, segment="standard").rewards == 0

    def test_empty_inputs(self) -> None:
        empty = kpis.reward_economics(kpis.empty_frame(kpis.EXPOSURES), kpis.empty_frame(kpis.REWARDS), AS_OF)
        assert empty.empty and list(empty.columns) == ["market", "playbook", *kpis.REWARD_COLUMNS]
        overall = kpis.reward_economics(
            kpis.empty_frame(kpis.EXPOSURES), kpis.empty_frame(kpis.REWARDS), AS_OF, by=()
        )
        assert (
            overall.total_cost_eur[0] == 0
            and math.isnan(overall.roi[0])
            and math.isnan(overall.cost_per_retained_eur[0])
        )

    def test_totals_pool_the_rows(self, out: pd.DataFrame) -> None:
        totals = kpis.total_economics(out)
        # Revenue 125 (DE) + 0 (FR); cost 14 + 1 = 15; ROI (125 - 15) / 15; 3 treated renewals in all.
        assert totals.incremental_revenue_eur == pytest.approx(125.0)
        assert totals.total_cost_eur == pytest.approx(15.0)
        assert totals.roi == pytest.approx(110 / 15)
        assert totals.cost_per_retained_eur == pytest.approx(5.0)
        # Rewards 2 (DE) + 1 (unattributed), redeemed 1.
        assert totals.redemption_rate == pytest.approx(1 / 3)
        assert math.isnan(kpis.total_economics(out.iloc[0:0]).roi)


class TestReminderToRenewalDays:
    def test_median_and_90th_percentile_by_hand(self) -> None:
        rows = [
            _exposure("2026-10-01", f"2026-09-{1 + d:02d}", customer=f"T{d}", first_contact="2026-09-01")
            for d in (2, 4, 6, 8, 10)
        ]
        rows += [
            # Renewed before the first contact.
            _exposure("2026-10-01", "2026-08-29", customer="B1", first_contact="2026-09-01"),
            _exposure("2026-10-01", "2026-09-05", "control", customer="K1"),
            _exposure("2026-10-01", None, customer="N1", first_contact="2026-09-01"),
        ]
        out = kpis.reminder_to_renewal_days(_frame(rows, kpis.EXPOSURES), by=())
        # Days 2, 4, 6, 8, 10: median 6; p90 at position 0.9 * 4 = 3.6 -> 8 + 0.6 * (10 - 8) = 9.2.
        assert (out.renewals[0], out.median_days[0], out.renewed_before_contact[0]) == (5, 6.0, 1)
        assert out.p90_days[0] == pytest.approx(9.2)

    def test_days_count_between_utc_days(self) -> None:
        frame = _frame([_exposure("2026-10-01", "2026-09-04", first_contact="2026-09-01")], kpis.EXPOSURES)
        # 23:30 at UTC-02:00 on 09-01 is 09-02 in UTC: two days before the renewal on 09-04.
        frame["first_contact_at"] = pd.Series([pd.Timestamp("2026-09-01T23:30:00-02:00")], dtype=object)
        assert kpis.reminder_to_renewal_days(frame, by=()).median_days[0] == 2.0

    def test_empty_input(self) -> None:
        out = kpis.reminder_to_renewal_days(kpis.empty_frame(kpis.EXPOSURES), by=())
        assert out.renewals[0] == 0 and math.isnan(out.median_days[0]) and math.isnan(out.p90_days[0])


FUNNEL_ROWS = [
    # Term end 2026-10-31: T-30 on 10-01, T-14 on 10-17, T-1 on 10-30; after T-1 renewals count until
    # the end of the 14-day grace period, 11-14.
    ("A", "T-30", -30, "2026-10-01", "2026-10-05"),  # renewed before T-14
    ("B", "T-30", -30, "2026-10-01", "2026-10-20"),
    ("B", "T-14", -14, "2026-10-17", "2026-10-20"),  # renewed before T-1
    ("B", "T-14", -14, "2026-10-17", "2026-10-20"),  # same step on a second channel
    ("C", "T-30", -30, "2026-10-01", "2026-11-10"),
    ("C", "T-14", -14, "2026-10-17", "2026-11-10"),
    ("C", "T-1", -1, "2026-10-30", "2026-11-10"),  # renewed after the last step, within grace
    ("D", "T-30", -30, "2026-10-01", None),
    ("D", "T-14", -14, "2026-10-17", None),
    ("D", "T-1", -1, "2026-10-30", None),
    ("D", "T+3", 3, None, None),  # planned, never sent: ignored
]


def _funnel(rows: list[tuple[str, str, int, str | None, str | None]]) -> pd.DataFrame:
    return _frame(
        [
            {
                "contract_key": key,
                "term_end": _ts("2026-10-31"),
                "step": step,
                "offset_days": offset,
                "sent_at": _ts(sent),
                "renewed_at": _ts(renewed),
            }
            for key, step, offset, sent, renewed in rows
        ],
        kpis.FUNNEL,
    )


class TestRenewalFunnel:
    def test_reached_and_renewed_before_the_next_step_by_hand(self) -> None:
        out = kpis.renewal_funnel(_funnel(FUNNEL_ROWS))
        assert list(out.step) == ["T-30", "T-14", "T-1"]
        # T-30: A, B, C, D reached; A renewed before 10-17 -> 1/4; cumulative 1 of 4.
        # T-14: B, C, D; B renewed before 10-30 -> 1/3; cumulative A, B = 2 of 4.
        # T-1: C, D; C renewed by 11-14 -> 1/2; cumulative 3 of 4.
        got = out[["reached", "renewed_before_next", "cumulative_renewed", "entered"]].to_numpy().tolist()
        assert got == [[4, 1, 1, 4], [3, 1, 2, 4], [2, 1, 3, 4]]
        assert list(out.renewed_share) == pytest.approx([0.25, 1 / 3, 0.5])
        assert list(out.cumulative_share) == pytest.approx([0.25, 0.5, 0.75])

    def test_only_mature_terms_when_a_report_day_is_given(self) -> None:
        # 2026-10-31 + 14 days = 11-14: mature on 11-14, not on 11-13.
        assert kpis.renewal_funnel(_funnel(FUNNEL_ROWS), as_of="2026-11-13").empty
        assert len(kpis.renewal_funnel(_funnel(FUNNEL_ROWS), as_of="2026-11-14")) == 3

    def test_empty_input(self) -> None:
        out = kpis.renewal_funnel(kpis.empty_frame(kpis.FUNNEL))
        assert out.empty and list(out.columns) == list(kpis.FUNNEL_COLUMNS)


def test_total_uplift_pools_the_counts_of_all_rows() -> None:
    frame = kpis.renewal_uplift(
        _frame(RENEWALS, kpis.EXPOSURES).assign(segment="standard"), AS_OF, by=["segment"]
    )
    pooled = kpis.total_uplift(pd.concat([frame, frame]))
    # Twice (3/5 treated, 1/3 control) -> 6/10 vs 2/6.
    assert (pooled.treated.successes, pooled.treated.n, pooled.control.successes, pooled.control.n) == (
        6,
        10,
        2,
        6,
    )
    assert math.isnan(kpis.total_uplift(pd.DataFrame()).difference)


def test_kpi_doc_lists_the_input_schemas_of_the_code() -> None:
    doc = (ROOT / "docs/kpis.md").read_text()
    section = doc.split("<!-- schemas:begin -->\n", 1)[1].split("<!-- schemas:end -->", 1)[0]
    assert section == kpis.schema_markdown()


def test_kpi_doc_defines_every_public_function() -> None:
    doc = (ROOT / "docs/kpis.md").read_text()
    names = [
        "proportion_ci",
        "uplift_ci",
        "renewal_uplift",
        "churn_rate",
        "repayment_uplift",
        "ladder_cure_rates",
        "reactivation_rate",
        "channel_health",
        "reward_economics",
        "reminder_to_renewal_days",
        "renewal_funnel",
    ]
    assert [n for n in names if f"`{n}" not in doc] == []
