"""When a newly trained risk model becomes the one the cycle uses: only when it ranks better than today's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Promotion:
    """Whether a candidate model should replace what scores today, against what, and why."""

    promote: bool
    against: str
    candidate_roc_auc: float
    incumbent_roc_auc: float | None
    reason: str


def decide_promotion(
    candidate_roc_auc: float,
    *,
    active_version: str | None,
    active_roc_auc: float | None,
    scorecard_version: str | None = None,
    scorecard_roc_auc: float | None = None,
) -> Promotion:
    """Return whether the candidate beats the active model, or with none active the scorecard (if any)."""
    # All ROC AUCs are measured on the same validation rows. A tie keeps what is in place: a new version
    # is only worth the change when it ranks customers better.
    if active_version is not None:
        if active_roc_auc is None:
            raise ValueError("an active model needs its ROC AUC on the same rows")
        incumbent, auc = active_version, active_roc_auc
    elif scorecard_version is not None and scorecard_roc_auc is not None:
        incumbent, auc = scorecard_version, scorecard_roc_auc
    else:
        return Promotion(True, "none", candidate_roc_auc, None, "no model of this kind is active yet")
    better = candidate_roc_auc > auc
    verb = "beats" if better else "does not beat"
    reason = f"ROC AUC {candidate_roc_auc:.3f} {verb} {incumbent} ({auc:.3f}) on the same validation rows"
    return Promotion(better, incumbent, candidate_roc_auc, auc, reason)
