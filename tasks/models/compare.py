"""Does the learned model rank risk better than the transparent scorecard, on the same newer rows?"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score  # type: ignore[import-untyped]

from tasks.domain.segmentation import Scorecard, score_renewal_risk
from tasks.models.training import TrainedModel


def scorecard_scores(frame: pd.DataFrame, card: Scorecard) -> pd.Series:
    """Return the scorecard's 0..100 score per row, from the same point-in-time features as the model."""
    # Segment v1 counts missing tenure and activity as zero; do the same so the scores match it.
    inputs = frame[["tenure_years", "late_payments_12m", "transactions_per_month"]].fillna(0.0)
    score, _, _ = score_renewal_risk(inputs, frame["auto_renew"].fillna(0).astype(bool), card)
    return score.rename("scorecard_score")


def compare_with_scorecard(
    model: TrainedModel, validation_frame: pd.DataFrame, scorecard_scores: pd.Series
) -> dict[str, Any]:
    """Return the ROC AUC and PR AUC of the model and of the scorecard on the same validation rows."""
    if not scorecard_scores.index.equals(validation_frame.index):
        raise ValueError("scorecard_scores must be indexed like validation_frame")
    outcome = validation_frame[model.label].to_numpy(dtype=np.int64)
    if len(np.unique(outcome)) < 2:
        raise ValueError(f"the validation rows need both outcomes of {model.label}")
    risk = model.predict_proba(validation_frame)
    score = scorecard_scores.to_numpy(dtype=np.float64)
    out: dict[str, Any] = {
        "model_version": model.version,
        "rows": len(validation_frame),
        "base_rate": float(outcome.mean()),
        "model_roc_auc": float(roc_auc_score(outcome, risk)),
        "scorecard_roc_auc": float(roc_auc_score(outcome, score)),
        "model_pr_auc": float(average_precision_score(outcome, risk)),
        "scorecard_pr_auc": float(average_precision_score(outcome, score)),
    }
    out["roc_auc_gain"] = out["model_roc_auc"] - out["scorecard_roc_auc"]
    return out
