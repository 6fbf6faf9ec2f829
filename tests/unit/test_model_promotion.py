"""A learned model replaces what scores today only when better; its probability becomes the score and band."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from config.loader import load_segmentation
from tasks.domain.promotion import decide_promotion
from tasks.domain.segmentation import SCORECARD_VERSION, ModelRisk, segment_contracts
from tasks.domain.summary import stage_rows
from tasks.explain import scorecard_in_words
from tests.support.factories import ROOT

CONFIG = load_segmentation(ROOT / "config")
AS_OF = date(2026, 11, 22)
MODEL = "renewal-gam-20261122-1a2b3c4d"


class TestPromotion:
    def test_the_first_model_of_a_kind_without_a_scorecard_is_promoted(self) -> None:
        decision = decide_promotion(0.61, active_version=None, active_roc_auc=None)
        assert decision.promote and decision.against == "none"

    @pytest.mark.parametrize(("candidate", "promote"), [(0.80, True), (0.75, False), (0.70, False)])
    def test_with_none_active_a_renewal_model_must_beat_the_scorecard(
        self, candidate: float, promote: bool
    ) -> None:
        decision = decide_promotion(
            candidate,
            active_version=None,
            active_roc_auc=None,
            scorecard_version=SCORECARD_VERSION,
            scorecard_roc_auc=0.75,
        )
        assert decision.promote is promote and decision.against == SCORECARD_VERSION
        assert decision.incumbent_roc_auc == 0.75

    @pytest.mark.parametrize(("candidate", "promote"), [(0.81, True), (0.80, False), (0.79, False)])
    def test_with_a_model_active_the_candidate_must_beat_it_not_just_the_scorecard(
        self, candidate: float, promote: bool
    ) -> None:
        decision = decide_promotion(
            candidate,
            active_version=MODEL,
            active_roc_auc=0.80,
            scorecard_version=SCORECARD_VERSION,
            scorecard_roc_auc=0.60,
        )
        assert decision.promote is promote and decision.against == MODEL
        assert MODEL in decision.reason and f"{candidate:.3f}" in decision.reason

    def test_an_active_model_without_its_figure_on_the_same_rows_is_a_mistake(self) -> None:
        with pytest.raises(ValueError, match="same rows"):
            decide_promotion(0.8, active_version=MODEL, active_roc_auc=None)


def _contracts(n: int) -> dict[str, pd.DataFrame]:
    keys = [f"K{i}" for i in range(n)]
    contracts = pd.DataFrame(
        {
            "contract_key": keys,
            "customer_key": [f"C{i}" for i in range(n)],
            "product": "loan",
            "status": "active",
            "term_end": pd.Timestamp(AS_OF + timedelta(days=20)),
            "auto_renew": False,
            "price": 100.0,
            "currency": "EUR",
        }
    )
    customers = pd.DataFrame(
        {
            "customer_key": [f"C{i}" for i in range(n)],
            "market": "DE",
            "customer_since": pd.Timestamp(2020, 1, 1),
        }
    )
    instalments = pd.DataFrame(columns=["instalment_key", "contract_key", "due_date", "paid_date"])
    activity = pd.DataFrame(columns=["customer_key", "month", "transactions"])
    return {"contracts": contracts, "customers": customers, "instalments": instalments, "activity": activity}


class TestModelScores:
    def test_the_probability_in_percent_is_the_score_and_the_model_bands_cut_it(self) -> None:
        frames = _contracts(4)
        risk = ModelRisk(
            MODEL,
            pd.Series(["K0", "K1", "K2", "K3"]),
            pd.Series([0.004, 0.295, 0.3, 0.6]),
            pd.Series(["", "a", "b", "no automatic renewal"]),
        )
        out = segment_contracts(*frames.values(), AS_OF, CONFIG, risk)
        assert out["risk_score"].tolist() == [0, 30, 30, 60]
        assert out["risk_band"].tolist() == ["low", "medium", "medium", "high"]
        assert set(out["model_version"]) == {MODEL}
        assert out["risk_reasons"].tolist() == ["", "a", "b", "no automatic renewal"]
        assert out["segment"].tolist()[-1] == "renewal_due_high_risk"

    def test_a_contract_the_model_did_not_score_keeps_the_scorecard(self) -> None:
        frames = _contracts(2)
        scorecard = segment_contracts(*frames.values(), AS_OF, CONFIG)
        risk = ModelRisk(MODEL, pd.Series(["K1"]), pd.Series([0.9]), pd.Series(["why"]))
        out = segment_contracts(*frames.values(), AS_OF, CONFIG, risk)
        assert out["model_version"].tolist() == [SCORECARD_VERSION, MODEL]
        assert out.loc[0, "risk_score"] == scorecard.loc[0, "risk_score"]
        assert pd.isna(out.loc[0, "risk_reasons"]) and out.loc[1, "risk_band"] == "high"

    def test_the_scorecard_points_stay_on_model_rows_for_comparison(self) -> None:
        frames = _contracts(1)
        scorecard = segment_contracts(*frames.values(), AS_OF, CONFIG)
        risk = ModelRisk(MODEL, pd.Series(["K0"]), pd.Series([0.1]), pd.Series([""]))
        out = segment_contracts(*frames.values(), AS_OF, CONFIG, risk)
        assert out.loc[0, "risk_factors"] == scorecard.loc[0, "risk_factors"]


class TestInWords:
    def test_a_model_row_is_explained_by_its_stored_reasons(self) -> None:
        row = {
            "risk_score": 72,
            "risk_band": "high",
            "risk_factors": "tenure+25",
            "risk_reasons": "no automatic renewal; paid 3 instalments late in the last 12 months",
            "model_version": MODEL,
        }
        text = scorecard_in_words(row)
        assert text.startswith("Renewal risk 72 of 100 (high)")
        assert "chance of not renewing at about 72%" in text and row["risk_reasons"] in text
        assert "short customer relationship" not in text

    def test_a_model_row_without_reasons_says_nothing_stood_out(self) -> None:
        row = {"risk_score": 8, "risk_band": "low", "risk_reasons": "", "model_version": MODEL}
        assert scorecard_in_words(row).endswith("with nothing standing out.")

    def test_a_row_from_before_reasons_were_stored_falls_back_to_the_scorecard_text(self) -> None:
        row = {"risk_score": 45, "risk_band": "medium", "risk_factors": "tenure+25,no_auto_renew+20"}
        assert scorecard_in_words({**row, "risk_reasons": None, "model_version": SCORECARD_VERSION}) == (
            "Renewal risk 45 of 100 (medium), driven by a short customer relationship, no automatic renewal."
        )

    def test_the_segment_stage_names_the_model_that_scored(self) -> None:
        stats = {"contracts": 3, "customers": 2, "by_segment": {"active": 3}, "model_version": MODEL}
        ((stage, _, detail, _),) = stage_rows({"stages": {"segment": stats}})
        assert stage == "segment" and detail == f"active 3; model {MODEL}"
