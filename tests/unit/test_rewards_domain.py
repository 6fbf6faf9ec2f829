"""Reward rules: validation, who qualifies at the boundaries, budgets, holdout, FIFO points, clawback."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from config.loader import ConfigError, load_markets
from config.rewards_loader import load_reward_rules
from tasks.domain.rewards import (
    EarlyRenewal,
    Fulfilment,
    FxRates,
    Lot,
    NotEnoughPoints,
    OnTimeStreak,
    Reactivation,
    RewardInputs,
    RewardKind,
    RewardRule,
    When,
    allocate,
    balance,
    claw_back_points,
    clawbacks,
    decide,
    early_renewal_events,
    expiring,
    holdout,
    pick_channel,
    priced,
    qualifying_events,
    reactivation_events,
    redeem,
    reward_key,
    streak_events,
    to_minor,
)
from tests.support.factories import ROOT

AS_OF = date(2026, 11, 22)
FX = FxRates({"EUR": Decimal(1), "GBP": Decimal("1.17"), "IDR": Decimal("0.000058")})
CURRENCIES = {"DE": "EUR", "GB": "GBP", "ID": "IDR"}


def rule(**changes: Any) -> RewardRule:
    base = RewardRule(
        id="early",
        name="Early",
        version=1,
        when=When(early_renewal=EarlyRenewal(30)),
        reward=RewardKind.CASHBACK,
        value={"EUR": Decimal(10), "GBP": Decimal(8), "IDR": Decimal(150000)},
        budget={"DE": Decimal(1000), "GB": Decimal(1000), "ID": Decimal(10_000_000)},
        fulfilment=Fulfilment.WEBHOOK,
    )
    return replace(base, **changes)


def streak_rule(k: int = 3, grace: int = 0, **changes: Any) -> RewardRule:
    values: dict[str, Any] = {
        "id": "streak",
        "when": When(on_time_streak=OnTimeStreak(k, grace)),
        "reward": RewardKind.POINTS,
        "points": 500,
        "fulfilment": Fulfilment.POINTS,
        "expires_after_days": 365,
    }
    return rule(**(values | changes))


def reactivation_rule(**changes: Any) -> RewardRule:
    return rule(
        id="back",
        when=When(reactivation=Reactivation()),
        reward=RewardKind.VOUCHER,
        fulfilment=Fulfilment.VOUCHER,
        expires_after_days=60,
        **changes,
    )


def contracts(*rows: tuple[str, str, str, str | None]) -> pd.DataFrame:
    """(contract, customer, term_end, renewed_at) in DE."""
    return pd.DataFrame(
        {
            "contract_key": [r[0] for r in rows],
            "customer_key": [r[1] for r in rows],
            "market": "DE",
            "term_end": pd.to_datetime([r[2] for r in rows]),
            "renewed_at": pd.to_datetime([r[3] for r in rows]),
        }
    )


def instalments(
    *rows: tuple[str, str, str | None], contract: str = "K1", customer: str = "C1"
) -> pd.DataFrame:
    """(instalment, due_date, paid_date) of one contract in DE."""
    return pd.DataFrame(
        {
            "instalment_key": [r[0] for r in rows],
            "contract_key": contract,
            "customer_key": customer,
            "market": "DE",
            "due_date": pd.to_datetime([r[1] for r in rows]),
            "paid_date": pd.to_datetime([r[2] for r in rows]),
        }
    )


def monthly(due: list[str], paid: list[str | None]) -> pd.DataFrame:
    return instalments(*[(f"I{i + 1}", d, p) for i, (d, p) in enumerate(zip(due, paid, strict=True))])


DUE = ["2026-06-01", "2026-07-01", "2026-08-01", "2026-09-01", "2026-10-01", "2026-11-01"]


class TestRuleValidation:
    def test_the_shipped_rules_load_against_the_configured_markets(self) -> None:
        config = load_reward_rules(ROOT / "config", load_markets(ROOT / "config"))

        assert {r.id for r in config.rules} >= {"early-renewal", "on-time-streak", "reactivation"}
        assert config.fx.to_eur(Decimal(150000), "IDR") == Decimal("8.70")

    def test_a_misspelt_field_names_file_line_field_and_the_right_spelling(self, tmp_path: Path) -> None:
        folder = tmp_path / "rewards"
        shutil.copytree(ROOT / "config/rewards", folder)
        path = folder / "early-renewal.yaml"
        path.write_text(path.read_text().replace("holdout_share:", "holdout_shar:"))

        with pytest.raises(ConfigError) as err:
            load_reward_rules(tmp_path)

        message = str(err.value)
        assert "early-renewal.yaml" in message
        assert "unknown field 'holdout_shar'" in message and "did you mean 'holdout_share'" in message
        assert "line 1" in message or "line " in message

    def test_an_unknown_budget_market_names_its_line(self, tmp_path: Path) -> None:
        folder = tmp_path / "rewards"
        shutil.copytree(ROOT / "config/rewards", folder)
        path = folder / "reactivation.yaml"
        text = path.read_text().replace("budget: {DE: 2000", "budget: {XX: 2000")
        path.write_text(text)
        line = next(i for i, row in enumerate(text.splitlines(), 1) if "XX: 2000" in row)

        with pytest.raises(ConfigError) as err:
            load_reward_rules(tmp_path, load_markets(ROOT / "config"))

        assert f"line {line}, budget.XX: unknown market 'XX'" in str(err.value)

    def test_a_file_name_that_differs_from_the_id_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "rewards"
        shutil.copytree(ROOT / "config/rewards", folder)
        (folder / "early-renewal.yaml").rename(folder / "early.yaml")

        with pytest.raises(ConfigError, match="does not match the file name"):
            load_reward_rules(tmp_path)

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"fulfilment": Fulfilment.POINTS}, "fulfilled by webhook"),
            ({"expires_after_days": 30}, "cashback is paid out and never expires"),
            ({"holdout_share": 1.0}, r"holdout_share must be in \[0, 1\)"),
            ({"value": {"eur": Decimal(1)}}, "not an ISO 4217"),
            ({"value": {"EUR": Decimal(0)}}, "must be positive"),
            ({"budget": {"Germany": Decimal(1)}}, "two-letter"),
            ({"points": 10}, "only for one"),
            ({"notify": ("pigeon",)}, "unknown channel"),
            ({"id": "Early Renewal"}, "may only hold"),
        ],
    )
    def test_an_inconsistent_rule_is_refused_with_a_clear_reason(
        self, changes: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            rule(**changes)

    def test_a_rule_names_exactly_one_kind_of_event(self) -> None:
        with pytest.raises(ValueError, match=r"exactly one of .* \(got none\)"):
            When()
        with pytest.raises(ValueError, match=r"\(got early_renewal, reactivation\)"):
            When(early_renewal=EarlyRenewal(30), reactivation=Reactivation())

    def test_points_and_vouchers_need_an_expiry(self) -> None:
        with pytest.raises(ValueError, match="needs expires_after_days"):
            streak_rule(expires_after_days=None)


class TestEarlyRenewal:
    @pytest.mark.parametrize(("renewed", "qualifies"), [("2026-11-21", True), ("2026-11-22", False)])
    def test_exactly_n_days_before_the_term_end_qualifies_and_one_day_less_does_not(
        self, renewed: str, qualifies: bool
    ) -> None:
        # term ends 2026-12-21: renewed on 11-21 is 30 days before, on 11-22 is 29 days before.
        frame = contracts(("K1", "C1", "2026-12-21", renewed))

        events = early_renewal_events(frame, rule(), date(2026, 11, 22))

        assert len(events) == int(qualifies)

    def test_not_renewed_renewed_in_the_future_or_before_the_lookback_never_qualifies(self) -> None:
        frame = contracts(
            ("K1", "C1", "2027-03-01", None),
            ("K2", "C2", "2027-03-01", "2026-11-23"),
            ("K3", "C3", "2027-03-01", "2026-10-07"),
            ("K4", "C4", "2027-03-01", "2026-10-08"),
        )

        events = early_renewal_events(frame, rule(lookback_days=45), AS_OF)

        assert events["contract_key"].tolist() == ["K4"]

    def test_the_reward_key_names_rule_customer_contract_and_renewal_day(self) -> None:
        events = early_renewal_events(contracts(("K1", "C1", "2027-03-01", "2026-11-02")), rule(), AS_OF)

        assert (
            events.loc[0, "reward_key"] == reward_key("early", "C1", "K1:20261102") == "early:C1:K1:20261102"
        )
        assert events.loc[0, "event_date"] == date(2026, 11, 2)

    def test_a_market_without_a_budget_is_not_rewarded(self) -> None:
        frame = contracts(("K1", "C1", "2027-03-01", "2026-11-02")).assign(market="FR")

        assert early_renewal_events(frame, rule(), AS_OF).empty


class TestStreak:
    def test_k_consecutive_on_time_payments_earn_one_reward_at_the_kth(self) -> None:
        frame = monthly(DUE[:3], DUE[:3])

        events = streak_events(frame, streak_rule(3), date(2026, 8, 10))

        assert events["event_key"].tolist() == ["I3"]
        assert events.loc[0, "evidence"] == ["I1", "I2", "I3"]
        assert events.loc[0, "event_date"] == date(2026, 8, 1)

    def test_k_minus_one_earns_nothing(self) -> None:
        assert streak_events(monthly(DUE[:2], DUE[:2]), streak_rule(3), date(2026, 8, 10)).empty

    def test_a_payment_one_day_late_breaks_the_run_unless_within_grace(self) -> None:
        paid = ["2026-06-01", "2026-07-02", "2026-08-01", "2026-09-01", "2026-10-01", "2026-11-01"]
        frame = monthly(DUE, paid)

        strict = streak_events(frame, streak_rule(3, lookback_days=400), AS_OF)
        lenient = streak_events(frame, streak_rule(3, grace=1, lookback_days=400), AS_OF)

        assert strict["event_key"].tolist() == ["I5"]
        assert strict.loc[0, "evidence"] == ["I3", "I4", "I5"]
        assert lenient["event_key"].tolist() == ["I3", "I6"]

    def test_a_payment_on_the_due_date_counts_as_on_time(self) -> None:
        assert len(streak_events(monthly(DUE, DUE), streak_rule(6), AS_OF)) == 1

    def test_two_full_runs_earn_two_rewards(self) -> None:
        events = streak_events(monthly(DUE, DUE), streak_rule(3, lookback_days=400), AS_OF)

        assert events["event_key"].tolist() == ["I3", "I6"]

    def test_an_unpaid_instalment_past_its_due_date_breaks_the_run(self) -> None:
        paid: list[str | None] = [DUE[0], DUE[1], None, DUE[3], DUE[4], DUE[5]]

        events = streak_events(monthly(DUE, paid), streak_rule(3), AS_OF)

        assert events["event_key"].tolist() == ["I6"]

    def test_an_instalment_not_yet_due_and_unpaid_does_not_break_it(self) -> None:
        frame = monthly([*DUE[3:], "2026-12-01"], [*DUE[3:], None])

        events = streak_events(frame, streak_rule(3), AS_OF)

        assert events["event_key"].tolist() == ["I3"]

    def test_instalments_counted_by_an_earlier_reward_do_not_count_again(self) -> None:
        frame = monthly(DUE, DUE)

        events = streak_events(frame, streak_rule(3, lookback_days=400), AS_OF, used={"I1", "I2", "I3"})

        assert events["event_key"].tolist() == ["I6"]
        assert events.loc[0, "evidence"] == ["I4", "I5", "I6"]

    def test_runs_are_counted_per_contract(self) -> None:
        frame = pd.concat(
            [
                instalments(("A1", DUE[3], DUE[3]), ("A2", DUE[4], DUE[4]), contract="K1"),
                instalments(("B1", DUE[5], DUE[5]), contract="K2"),
            ]
        )

        assert streak_events(frame, streak_rule(3), AS_OF).empty

    def test_events_older_than_the_lookback_are_not_rewarded(self) -> None:
        events = streak_events(monthly(DUE, DUE), streak_rule(3, lookback_days=30), AS_OF)

        assert events["event_key"].tolist() == ["I6"]


def activity(rows: dict[str, int], customer: str = "C1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": customer,
            "month": pd.to_datetime([f"{m}-01" for m in rows]),
            "transactions": list(rows.values()),
        }
    )


def people(since: str = "2020-01-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": ["C1"],
            "market": ["DE"],
            "customer_since": pd.to_datetime([since]),
            "contract_key": ["K1"],
        }
    )


class TestReactivation:
    def test_an_inactive_customer_who_becomes_active_qualifies_once(self) -> None:
        acts = activity({"2026-07": 9, "2026-08": 1, "2026-09": 2, "2026-10": 1, "2026-11": 2})

        events = reactivation_events(acts, people(), reactivation_rule(), AS_OF)

        assert events["event_key"].tolist() == ["2026-11"]
        assert events.loc[0, "reward_key"] == "back:C1:2026-11"
        assert events.loc[0, "contract_key"] == "K1"

    def test_an_average_of_exactly_two_is_active_not_inactive(self) -> None:
        acts = activity({"2026-08": 2, "2026-09": 3, "2026-10": 1, "2026-11": 5})

        assert reactivation_events(acts, people(), reactivation_rule(), AS_OF).empty

    def test_below_the_active_threshold_this_month_is_not_back_yet(self) -> None:
        acts = activity({"2026-08": 0, "2026-09": 0, "2026-10": 0, "2026-11": 1})

        assert reactivation_events(acts, people(), reactivation_rule(), AS_OF).empty

    def test_missing_months_count_as_no_transactions(self) -> None:
        acts = activity({"2026-03": 12, "2026-11": 3})

        assert len(reactivation_events(acts, people(), reactivation_rule(), AS_OF)) == 1

    def test_the_month_after_coming_back_does_not_qualify_again(self) -> None:
        acts = activity({"2026-08": 0, "2026-09": 0, "2026-10": 4, "2026-11": 4})

        events = reactivation_events(acts, people(), reactivation_rule(lookback_days=60), AS_OF)

        assert events["event_key"].tolist() == ["2026-10"]

    def test_a_customer_newer_than_the_inactive_window_is_not_reactivated(self) -> None:
        acts = activity({"2026-11": 6})

        assert reactivation_events(acts, people(since="2026-09-15"), reactivation_rule(), AS_OF).empty


class TestBudget:
    def test_allocation_never_exceeds_the_remaining_budget(self) -> None:
        rng = random.Random(7)
        for _ in range(500):
            costs = [rng.randint(0, 5000) for _ in range(rng.randint(0, 40))]
            remaining = rng.randint(0, 60000)

            fits = allocate(costs, remaining)

            assert sum(c for c, f in zip(costs, fits, strict=True) if f) <= remaining

    def test_a_cost_that_does_not_fit_is_skipped_and_a_smaller_later_one_still_fits(self) -> None:
        assert allocate([600, 500, 300], 1000) == [True, False, True]

    def test_events_are_served_oldest_first(self) -> None:
        events = priced(
            pd.DataFrame(
                {
                    "reward_key": ["early:C3:x", "early:C1:x", "early:C2:x"],
                    "customer_key": ["C3", "C1", "C2"],
                    "market": "DE",
                    "event_date": [date(2026, 11, 3), date(2026, 11, 1), date(2026, 11, 2)],
                }
            ),
            rule(),
            CURRENCIES,
            FX,
        )

        status = decide(events, rule(), to_minor(Decimal(20)))

        assert dict(zip(events["customer_key"], status, strict=True)) == {
            "C1": "granted",
            "C2": "granted",
            "C3": "over_budget",
        }

    def test_no_budget_left_grants_nothing(self) -> None:
        events = priced(
            pd.DataFrame(
                {"reward_key": ["a"], "customer_key": ["C1"], "market": "DE", "event_date": [AS_OF]}
            ),
            rule(),
            CURRENCIES,
            FX,
        )

        assert decide(events, rule(), 0).tolist() == ["over_budget"]

    def test_prices_are_in_the_market_currency_with_the_eur_cost(self) -> None:
        events = pd.DataFrame(
            {
                "reward_key": ["a", "b"],
                "customer_key": ["C1", "C2"],
                "market": ["GB", "ID"],
                "event_date": [AS_OF] * 2,
            }
        )

        out = priced(events, rule(), CURRENCIES, FX)

        assert out["currency"].tolist() == ["GBP", "IDR"]
        assert out["value"].tolist() == [Decimal(8), Decimal(150000)]
        assert out["cost_eur"].tolist() == [Decimal("9.36"), Decimal("8.70")]


class TestHoldout:
    def frame(self, n: int) -> pd.DataFrame:
        keys = [f"C{i:07d}" for i in range(n)]
        return priced(
            pd.DataFrame(
                {"reward_key": keys, "customer_key": keys, "market": "DE", "event_date": [AS_OF] * n}
            ),
            rule(),
            CURRENCIES,
            FX,
        )

    def test_the_control_group_is_stable_across_runs_and_row_order(self) -> None:
        events = self.frame(2000)
        first = holdout(events, rule(holdout_share=0.2))
        shuffled = events.sample(frac=1, random_state=3)

        second = holdout(shuffled, rule(holdout_share=0.2))

        assert first.sum() == second.sum()
        assert set(events.loc[first, "customer_key"]) == set(shuffled.loc[second, "customer_key"])
        assert 300 < first.sum() < 500

    def test_each_rule_has_its_own_control_group(self) -> None:
        events = self.frame(2000)

        a = holdout(events, rule(id="a", holdout_share=0.5))
        b = holdout(events, rule(id="b", holdout_share=0.5))

        assert (a != b).any()

    def test_held_out_customers_get_nothing_even_with_budget_left(self) -> None:
        events = self.frame(200)
        control = holdout(events, rule(holdout_share=0.3))

        status = decide(events, rule(holdout_share=0.3), to_minor(Decimal(1_000_000)))

        assert (status[control] == "holdout").all()
        assert (status[~control] == "granted").all()


def lot(key: str, granted: str, remaining: int, expires: str | None = "2027-12-31") -> Lot:
    return Lot(key, date.fromisoformat(granted), date.fromisoformat(expires) if expires else None, remaining)


class TestFifo:
    def test_redeeming_takes_from_the_oldest_lot_first(self) -> None:
        lots = [lot("new", "2026-10-01", 500), lot("old", "2026-01-01", 300), lot("mid", "2026-05-01", 200)]

        assert redeem(lots, 400, AS_OF) == {"old": 300, "mid": 100}

    def test_expired_lots_are_skipped(self) -> None:
        lots = [lot("old", "2025-01-01", 300, expires="2026-11-21"), lot("new", "2026-10-01", 500)]

        assert redeem(lots, 100, AS_OF) == {"new": 100}
        assert balance(lots, AS_OF) == 500

    def test_a_lot_is_usable_through_its_last_day(self) -> None:
        lots = [lot("a", "2025-11-22", 100, expires="2026-11-22")]

        assert balance(lots, AS_OF) == 100
        assert expiring(lots, AS_OF) == {}
        assert expiring(lots, AS_OF + timedelta(days=1)) == {"a": 100}

    def test_asking_for_more_than_the_balance_takes_nothing(self) -> None:
        with pytest.raises(NotEnoughPoints):
            redeem([lot("a", "2026-01-01", 100)], 101, AS_OF)

    def test_expiry_takes_what_is_left_of_every_lapsed_lot_oldest_first(self) -> None:
        lots = [
            lot("b", "2025-06-01", 50, expires="2026-06-01"),
            lot("a", "2025-01-01", 0, expires="2026-01-01"),
            lot("c", "2026-06-01", 70, expires="2027-06-01"),
        ]

        assert list(expiring(lots, AS_OF).items()) == [("b", 50)]

    def test_a_clawback_takes_the_own_lot_first_then_the_oldest_others(self) -> None:
        lots = [lot("x", "2026-09-01", 200), lot("old", "2026-01-01", 400), lot("new", "2026-10-01", 400)]

        taken, short = claw_back_points(lots, "x", 500, AS_OF)

        assert taken == {"x": 200, "old": 300}
        assert short == 0

    def test_a_clawback_never_drives_the_balance_below_zero(self) -> None:
        taken, short = claw_back_points([lot("x", "2026-09-01", 100)], "x", 500, AS_OF)

        assert taken == {"x": 100}
        assert short == 400


class TestClawback:
    def live(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "reward_key": ["early:C1:K1:20261101", "streak:C2:I3", "streak:C3:J3"],
                "trigger": ["early_renewal", "on_time_streak", "on_time_streak"],
                "contract_key": ["K1", "K2", "K3"],
                "evidence": [["K1"], ["I1", "I2", "I3"], ["J1", "J2", "J3"]],
            }
        )

    def test_an_undone_renewal_and_a_reversed_payment_are_clawed_back(self) -> None:
        ct = contracts(("K1", "C1", "2027-03-01", None))
        inst = pd.concat(
            [
                instalments(
                    ("I1", DUE[0], DUE[0]), ("I2", DUE[1], None), ("I3", DUE[2], DUE[2]), contract="K2"
                ),
                instalments(
                    ("J1", DUE[0], DUE[0]), ("J2", DUE[1], DUE[1]), ("J3", DUE[2], DUE[2]), contract="K3"
                ),
            ]
        )

        found = clawbacks(self.live(), ct, inst)

        assert dict(zip(found["reward_key"], found["reason"], strict=True)) == {
            "early:C1:K1:20261101": "renewal_undone",
            "streak:C2:I3": "payment_reversed",
        }

    def test_rows_that_vanished_from_the_source_are_not_clawed_back(self) -> None:
        assert clawbacks(self.live(), contracts(), instalments()).empty

    def test_a_renewal_still_in_place_is_kept(self) -> None:
        assert clawbacks(
            self.live(), contracts(("K1", "C1", "2027-03-01", "2026-11-01")), instalments()
        ).empty


def test_the_notification_channel_is_the_first_the_customer_can_be_reached_on() -> None:
    email = pd.Series([True, False, False])
    phone = pd.Series([True, True, False])

    assert pick_channel(email, phone, ("email", "sms")).tolist() == ["email", "sms", None]
    assert pick_channel(email, phone, ("sms",)).tolist() == ["sms", "sms", None]


def test_qualifying_events_dispatches_on_the_trigger() -> None:
    inputs = RewardInputs(
        customers=people(),
        contracts=contracts(("K1", "C1", "2027-03-01", "2026-11-02")),
        instalments=monthly(DUE, DUE),
        activity=activity({"2026-08": 0, "2026-11": 5}),
    )

    assert qualifying_events(rule(), inputs, AS_OF)["rule"].tolist() == ["early"]
    assert qualifying_events(streak_rule(6), inputs, AS_OF)["rule"].tolist() == ["streak"]
    assert qualifying_events(reactivation_rule(), inputs, AS_OF)["rule"].tolist() == ["back"]
