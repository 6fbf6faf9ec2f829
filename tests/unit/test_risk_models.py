"""The risk models learn from older rows, are judged on newer ones, and explain themselves in plain words."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from config.loader import load_segmentation
from tasks.domain.contract import Entity
from tasks.domain.features import FEATURES, renewal_training_frame, repayment_training_frame
from tasks.models.compare import compare_with_scorecard, scorecard_scores
from tasks.models.explain import (
    PLAIN_WORDS,
    factor_effects,
    phrase,
    scorecard_factors_in_words,
    top_factor_lists,
    top_factors,
)
from tasks.models.training import TrainedModel, split_by_time, train
from tasks.sources.demo_data import generate_portfolio
from tasks.sources.raw import RawFrame
from tasks.sources.validation import validate_all
from tests.support.factories import ROOT, markets

AS_OF = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
# A feature name leaking into text: lower-case words joined by underscores.
SNAKE = re.compile(r"\b[a-z0-9]+_[a-z0-9_]+\b")


@dataclass(frozen=True)
class Trained:
    renewal_frame: pd.DataFrame
    repayment_frame: pd.DataFrame
    renewal: TrainedModel
    repayment: TrainedModel


@pytest.fixture(scope="module")
def trained() -> Trained:
    portfolio = generate_portfolio(5000, 3, AS_OF, markets())
    raws = {e: RawFrame(e, e.value, f, pd.Series(range(2, len(f) + 2))) for e, f in portfolio.items()}
    clean = validate_all(raws, markets()).clean
    history = (
        clean[Entity.CONTRACTS],
        clean[Entity.CUSTOMERS],
        clean[Entity.INSTALMENTS],
        clean[Entity.ACTIVITY],
    )
    renewal_frame = renewal_training_frame(*history, AS_OF)
    repayment_frame = repayment_training_frame(*history, AS_OF)
    return Trained(
        renewal_frame,
        repayment_frame,
        train("renewal", renewal_frame, time_column="decision_date", label="not_renewed", now=NOW),
        train("repayment", repayment_frame, time_column="decision_date", label="dpd30", now=NOW),
    )


class TestTimeSplit:
    def test_newer_rows_are_validation_and_no_date_is_on_both_sides(self, trained: Trained) -> None:
        older, newer = split_by_time(trained.renewal_frame, "decision_date", 0.25)
        assert older["decision_date"].max() < newer["decision_date"].min()
        assert len(older) + len(newer) == len(trained.renewal_frame)
        assert 0.2 <= len(newer) / len(trained.renewal_frame) <= 0.3

    @pytest.mark.parametrize("kind", ["renewal", "repayment"])
    def test_the_model_records_training_and_validation_windows_that_do_not_overlap(
        self, trained: Trained, kind: str
    ) -> None:
        model: TrainedModel = getattr(trained, kind)
        frame: pd.DataFrame = getattr(trained, f"{kind}_frame")
        assert model.train_from <= model.train_to < model.validation_from <= model.validation_to
        assert model.n_train + model.n_validation == len(frame)
        assert len(model.validation_rows(frame)) == model.n_validation

    def test_a_share_outside_zero_and_one_is_refused(self, trained: Trained) -> None:
        with pytest.raises(ValueError, match="validation_share"):
            split_by_time(trained.renewal_frame, "decision_date", 1.0)


class TestQuality:
    def test_renewal_model_beats_the_scorecard_on_newer_terms(self, trained: Trained) -> None:
        card = load_segmentation(ROOT / "config").scorecard
        validation = trained.renewal.validation_rows(trained.renewal_frame)
        result = compare_with_scorecard(trained.renewal, validation, scorecard_scores(validation, card))
        print(  # noqa: T201 - the two numbers are the point of this test; -s shows them
            f"\nrenewal ROC AUC on {result['rows']} newer terms: model {result['model_roc_auc']:.3f}, "
            f"scorecard {result['scorecard_roc_auc']:.3f}"
        )
        assert result["rows"] == trained.renewal.n_validation
        assert result["model_roc_auc"] > result["scorecard_roc_auc"]
        assert result["model_roc_auc"] == pytest.approx(trained.renewal.metrics["roc_auc"])

    def test_repayment_model_ranks_30_day_arrears_better_than_chance(self, trained: Trained) -> None:
        assert trained.repayment.metrics["roc_auc"] > 0.6
        assert trained.repayment.metrics["pr_auc"] > trained.repayment.base_rate_validation

    @pytest.mark.parametrize("kind", ["renewal", "repayment"])
    def test_calibration_table_covers_every_validation_row(self, trained: Trained, kind: str) -> None:
        model: TrainedModel = getattr(trained, kind)
        assert len(model.calibration) == 10
        assert sum(b.count for b in model.calibration) == model.n_validation
        for b in model.calibration:
            assert 0 <= b.low <= b.mean_predicted <= b.high <= 1 and 0 <= b.observed_rate <= 1

    def test_calibrated_probabilities_match_the_observed_rate_overall(self, trained: Trained) -> None:
        model = trained.renewal
        predicted = sum(b.mean_predicted * b.count for b in model.calibration) / model.n_validation
        assert predicted == pytest.approx(model.base_rate_validation, abs=0.08)

    def test_top_features_have_plain_titles(self, trained: Trained) -> None:
        names = {f.name for f in FEATURES["renewal"]}
        assert 0 < len(trained.renewal.top_features) <= 10
        for item in trained.renewal.top_features:
            assert item.feature in names and item.title not in names and not SNAKE.search(item.title)


class TestArtifact:
    @pytest.mark.parametrize("kind", ["renewal", "repayment"])
    def test_bytes_round_trip_predicts_exactly_the_same(self, trained: Trained, kind: str) -> None:
        model: TrainedModel = getattr(trained, kind)
        frame: pd.DataFrame = getattr(trained, f"{kind}_frame").tail(2000)
        loaded = TrainedModel.from_bytes(model.to_bytes())
        assert loaded.version == model.version and loaded.metrics == model.metrics
        assert np.array_equal(loaded.predict_proba(frame), model.predict_proba(frame))

    def test_version_names_kind_algorithm_day_and_a_hash(self, trained: Trained) -> None:
        assert re.fullmatch(r"renewal-gam-20261122-[0-9a-f]{8}", trained.renewal.version)

    def test_probabilities_are_one_per_row_between_zero_and_one(self, trained: Trained) -> None:
        risk = trained.repayment.predict_proba(trained.repayment_frame.head(500))
        assert risk.shape == (500,) and ((risk > 0) & (risk < 1)).all()

    def test_report_has_metrics_calibration_and_features_but_no_personal_data(self, trained: Trained) -> None:
        report = trained.renewal.report_markdown(
            {"model_roc_auc": 0.8, "scorecard_roc_auc": 0.7, "model_pr_auc": 0.6, "scorecard_pr_auc": 0.5}
        )
        for needle in ("ROC AUC", "PR AUC", "Brier score", "log loss", "Calibration", "Top features"):
            assert needle in report
        assert f"{trained.renewal.metrics['roc_auc']:.3f}" in report
        assert trained.renewal.top_features[0].title in report
        assert "scorecard" in report
        assert not re.search(r"\b[CK]\d{7}\b", report)


class TestExplanations:
    def test_reasons_are_plain_words_without_feature_names(self, trained: Trained) -> None:
        model, frame = trained.renewal, trained.renewal.validation_rows(trained.renewal_frame)
        risky = frame.assign(risk=model.predict_proba(frame)).nlargest(200, "risk")
        reasons = top_factors(model, risky)
        assert (reasons != "").all()
        names = {f.name for f in FEATURES["renewal"]}
        for text in reasons:
            assert not SNAKE.search(text), text
            assert not any(name in text for name in names), text
            assert 1 <= len(text.split("; ")) <= 3

    @pytest.mark.parametrize("kind", ["renewal", "repayment"])
    def test_reason_strings_match_the_factor_lists(self, trained: Trained, kind: str) -> None:
        model: TrainedModel = getattr(trained, kind)
        frame = model.validation_rows(getattr(trained, f"{kind}_frame"))
        rows = frame.assign(risk=model.predict_proba(frame)).nlargest(100, "risk")
        expected = ["; ".join(f.text for f in factors) for factors in top_factor_lists(model, rows)]
        assert list(top_factors(model, rows)) == expected

    def test_each_row_gets_its_biggest_reasons_first(self, trained: Trained) -> None:
        model, frame = trained.repayment, trained.repayment.validation_rows(trained.repayment_frame)
        risky = frame.assign(risk=model.predict_proba(frame)).nlargest(50, "risk")
        for factors in top_factor_lists(model, risky):
            effects = [f.effect for f in factors]
            assert effects == sorted(effects, reverse=True) and all(e >= 0.01 for e in effects)
            assert len({f.feature for f in factors}) == len(factors)

    def test_overdue_instalments_are_named_for_the_riskiest_repayments(self, trained: Trained) -> None:
        model, frame = trained.repayment, trained.repayment.validation_rows(trained.repayment_frame)
        riskiest = frame.assign(risk=model.predict_proba(frame)).nlargest(30, "risk")
        assert (riskiest["days_past_due"] > 0).mean() > 0.8
        assert top_factors(model, riskiest).str.contains("overdue").mean() > 0.8

    def test_effects_are_zero_for_a_row_already_at_its_best_case(self, trained: Trained) -> None:
        model = trained.renewal
        best = pd.DataFrame([model.baseline])
        assert np.allclose(factor_effects(model, best).to_numpy(), 0.0)

    def test_every_feature_has_plain_words(self) -> None:
        for features in FEATURES.values():
            for feature in features:
                assert feature.name in PLAIN_WORDS
                for value in (0, 1, 3.5, None):
                    text = phrase(feature.name, "loan" if feature.kind == "category" else value)
                    assert text and not SNAKE.search(text), (feature.name, value, text)

    def test_plain_words_for_typical_values(self) -> None:
        assert phrase("late_payments_12m", 3) == "paid 3 instalments late in the last 12 months"
        assert phrase("late_payments_12m", 1) == "paid 1 instalment late in the last 12 months"
        assert phrase("auto_renew", 0) == "no automatic renewal"
        assert phrase("tenure_years", 0.4) == "customer for less than a year"
        assert phrase("transactions_per_month", 1.3) == "fewer than 2 transactions a month"
        assert phrase("product", "insurance_policy") == "this kind of contract (insurance policy)"

    def test_scorecard_factors_in_the_same_plain_words(self) -> None:
        card = load_segmentation(ROOT / "config").scorecard
        text = scorecard_factors_in_words("tenure+25,low_activity+25,late_payments+20", card)
        assert text.split("; ") == [
            "customer for less than a year",
            "fewer than 2 transactions a month",
            "2-3 late payments in 12 months",
        ]
        assert scorecard_factors_in_words("no_auto_renew+20") == "no automatic renewal"
        assert scorecard_factors_in_words("") == ""
        assert not SNAKE.search(scorecard_factors_in_words("tenure+5,late_payments+10,no_auto_renew+20"))
