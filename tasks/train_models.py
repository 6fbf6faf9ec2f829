"""Train the risk models on the store's history, keep every version, and promote one only when it is better.

Each run trains the renewal and the repayment model on point-in-time features (tasks/domain/features.py),
measures them on the newest rows they never saw, compares the renewal model with the scorecard on those
same rows, and stores each as a `candidate` in model_versions. A candidate becomes `active` (and the
cycle scores with it) only when it ranks better than what scores today; see docs/models.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]
from sqlalchemy import Connection, Engine
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from tasks._prefect import STEP
from tasks.domain.contract import Entity
from tasks.domain.features import (
    ACTIVITY_MONTHS,
    LABELS,
    TIME_COLUMN,
    ModelKind,
    feature_columns,
    history_start,
    renewal_training_frame,
    repayment_training_frame,
)
from tasks.domain.promotion import Promotion, decide_promotion
from tasks.domain.segmentation import SCORECARD_VERSION, Scorecard
from tasks.extract import extract_sources
from tasks.load import load_validated
from tasks.models.compare import compare_with_scorecard, scorecard_scores
from tasks.models.training import TrainedModel, train
from tasks.runtime import get_runtime
from tasks.sources.validation import validate_all
from tasks.store.repository import (
    activate_model,
    active_model_artifact,
    audit,
    create_cycle,
    finish_cycle,
    known_keys,
    read_segment_inputs,
    set_model_report,
    store_model_version,
    utcnow,
)

KINDS: tuple[ModelKind, ...] = ("renewal", "repayment")
# Repayment rows are instalments, tens of millions at a million customers: the last year is plenty to learn
# from and keeps the training frame (and its memory) bounded; older rows still feed the look-back features.
REPAYMENT_MONTHS = 12
HISTORY_LOAD = "(history load)"

Trainer = Callable[..., TrainedModel]


class ModelIntegrityError(ValueError):
    """A stored model artifact is not the one that was trained: it is refused, never unpickled."""


def resolve_markets(markets: Sequence[str] | None, configured: Sequence[str]) -> list[str]:
    """Return the requested market codes (upper-cased, sorted), or every configured one."""
    wanted = sorted({m.strip().upper() for m in markets or [] if m.strip()})
    unknown = sorted(set(wanted) - set(configured))
    if unknown:
        raise ValueError(f"unknown market(s) {unknown}; configured: {sorted(configured)}")
    return wanted or sorted(configured)


def _months_before(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def training_frame(kind: ModelKind, history: Mapping[Entity, pd.DataFrame], as_of: date) -> pd.DataFrame:
    """Return the point-in-time training rows of `kind` from the store's history."""
    frames = (
        history[Entity.CONTRACTS],
        history[Entity.CUSTOMERS],
        history[Entity.INSTALMENTS],
        history[Entity.ACTIVITY],
    )
    if kind == "renewal":
        frame = renewal_training_frame(*frames, as_of)
    else:
        # Rows are kept from where their activity look-back is on record: starting the record 12 + 3
        # months back keeps the instalments due from the first of the month a year ago.
        recent = _months_before(as_of, REPAYMENT_MONTHS + ACTIVITY_MONTHS)
        start = history_start(frames[2], frames[3])
        frame = repayment_training_frame(*frames, as_of, history_from=max(start or recent, recent))
    label = LABELS[kind]
    if frame.empty or frame[label].nunique() < 2:
        raise ValueError(
            f"not enough history to train the {kind} model as of {as_of}: {len(frame)} rows with "
            f"outcomes {sorted(frame[label].unique().tolist()) if len(frame) else []}; load the sources "
            "first (`renewals run renewal-cycle` or `renewals demo`)"
        )
    return frame


def verified_model(version: str, kind: str, blob: bytes, expected_sha256: str) -> TrainedModel:
    """Return the model in `blob` after checking its sha256 against the stored one."""
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"refusing the {kind} model {version}: its artifact's sha256 {actual[:16]}... does not match "
            f"the {expected_sha256[:16]}... stored when it was trained, so it was changed in the store and "
            "is not loaded (restore it, or retire that version to fall back to the scorecard, and retrain)"
        )
    model = TrainedModel.from_bytes(blob)
    if model.version != version or model.kind != kind:
        raise ModelIntegrityError(f"the artifact stored as {kind} model {version} holds {model.version}")
    return model


def active_model(conn: Connection, kind: ModelKind) -> TrainedModel | None:
    """Return the active model of `kind` (its artifact checked before unpickling), or None."""
    found = active_model_artifact(conn, kind)
    return None if found is None else verified_model(found[0], kind, found[1], found[2])


def _head_to_head(
    candidate: TrainedModel, incumbent: TrainedModel, validation: pd.DataFrame
) -> tuple[float, float, int]:
    """Return both ROC AUCs on the validation rows neither model was trained on, and how many rows."""
    times = pd.to_datetime(validation[candidate.time_column])
    rows = validation[times > pd.Timestamp(incumbent.train_to)]
    outcome = rows[candidate.label].to_numpy(dtype=np.int64)
    same_inputs = incumbent.features == tuple(feature_columns(candidate.kind))
    if not same_inputs or len(np.unique(outcome)) < 2:
        # Nothing fair to score both on: fall back to what each measured on its own newer rows.
        return candidate.metrics["roc_auc"], incumbent.metrics["roc_auc"], 0
    return (
        float(roc_auc_score(outcome, candidate.predict_proba(rows))),
        float(roc_auc_score(outcome, incumbent.predict_proba(rows))),
        len(rows),
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _promotion_markdown(decision: Promotion, status: str, promote: bool) -> str:
    if status == "active" and not decision.promote:
        outcome = "already the active model; nothing changed"
    elif status == "active":
        outcome = "promoted: the cycle now scores with this model"
    elif not promote:
        outcome = "kept as a candidate (promotion turned off for this run)"
    else:
        outcome = "kept as a candidate"
    return f"\n## Promotion\n\n{decision.reason}: {outcome}.\n"


def train_and_register(
    engine: Engine,
    kind: ModelKind,
    history: Mapping[Entity, pd.DataFrame],
    as_of: date,
    *,
    card: Scorecard,
    markets: Sequence[str],
    promote: bool = True,
    flow_run_id: str | None = None,
    now: datetime | None = None,
    trainer: Trainer = train,
) -> dict[str, Any]:
    """Train one model, compare it, store it as a candidate and promote it when it beats what is active."""
    frame = training_frame(kind, history, as_of)
    with engine.connect() as conn:
        incumbent = active_model(conn, kind)
    # Importance and best-case search make thousands of small predictions; on a busy host waking the
    # BLAS/OpenMP threads for each cost far more than they gave (3k-customer demo: 69 s vs 5 s).
    with threadpool_limits(limits=1):
        model = trainer(kind, frame, time_column=TIME_COLUMN, label=LABELS[kind], now=now)
        validation = model.validation_rows(frame)
        scorecard = (
            compare_with_scorecard(model, validation, scorecard_scores(validation, card))
            if kind == "renewal"
            else None
        )
        versus = (
            _head_to_head(model, incumbent, validation)
            if incumbent is not None and incumbent.version != model.version
            else None
        )
    head_to_head: dict[str, Any] | None = None
    if incumbent is not None and versus is not None:
        mine, theirs, rows = versus
        head_to_head = {"version": incumbent.version, "rows": rows, "model_roc_auc": mine, "roc_auc": theirs}
        decision = decide_promotion(mine, active_version=incumbent.version, active_roc_auc=theirs)
    else:
        decision = decide_promotion(
            model.metrics["roc_auc"],
            active_version=None,
            active_roc_auc=None,
            scorecard_version=SCORECARD_VERSION if scorecard else None,
            scorecard_roc_auc=scorecard["scorecard_roc_auc"] if scorecard else None,
        )
    if incumbent is not None and incumbent.version == model.version:
        decision = replace(decision, promote=False, reason="the same training is active already")
    blob = model.to_bytes()
    stamp = now or utcnow()
    row = {
        "version": model.version,
        "kind": kind,
        "algorithm": model.algorithm,
        "flow_run_id": flow_run_id,
        "as_of": as_of,
        "trained_at": model.trained_at,
        "train_from": model.train_from,
        "train_to": model.train_to,
        "validation_from": model.validation_from,
        "validation_to": model.validation_to,
        "n_train": model.n_train,
        "n_validation": model.n_validation,
        "base_rate_train": model.base_rate_train,
        "base_rate_validation": model.base_rate_validation,
        "metrics": model.metrics,
        "comparison": _jsonable(
            {"scorecard": scorecard, "active": head_to_head, "decision": asdict(decision)}
        ),
        "calibration": _jsonable([asdict(b) for b in model.calibration]),
        "top_features": _jsonable([asdict(f) for f in model.top_features]),
        "features": list(model.features),
        "params": _jsonable({**model.params, "label": model.label, "markets": list(markets)}),
        "artifact": blob,
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
    }
    report = model.report_markdown(scorecard)
    with engine.begin() as conn:
        status = store_model_version(conn, {**row, "report_md": report})
        promoted = False
        if status != "active" and promote and decision.promote:
            replaces = incumbent.version if incumbent is not None else None
            promoted = activate_model(conn, kind, model.version, replaces, stamp)
            if promoted:
                status = "active"
                audit(
                    conn,
                    "model.promoted",
                    subject_type="model",
                    subject_key=model.version,
                    details={
                        "kind": kind,
                        "replaces": replaces or (SCORECARD_VERSION if kind == "renewal" else None),
                        "reason": decision.reason,
                        "roc_auc": model.metrics["roc_auc"],
                        "flow_run_id": flow_run_id,
                    },
                )
            else:
                decision = replace(decision, reason=decision.reason + "; the active model changed meanwhile")
        report += _promotion_markdown(decision, status, promote)
        set_model_report(conn, model.version, report)
    return {
        "version": model.version,
        "status": status,
        "promoted": promoted,
        "reason": decision.reason,
        "rows": {"train": model.n_train, "validation": model.n_validation},
        "roc_auc": round(model.metrics["roc_auc"], 4),
        "pr_auc": round(model.metrics["pr_auc"], 4),
        "brier": round(model.metrics["brier"], 4),
        "scorecard_roc_auc": round(scorecard["scorecard_roc_auc"], 4) if scorecard else None,
        "scorecard_pr_auc": round(scorecard["scorecard_pr_auc"], 4) if scorecard else None,
        "report": report,
    }


def load_history_for_training(as_of: date) -> dict[str, Any]:
    """Extract, validate and load the sources into the store so there is history to train on."""
    # Recorded as a dry-run side run, so no report or worklist ever counts it as a cycle.
    rt = get_runtime()
    markets = sorted(rt.markets)
    with rt.engine.begin() as conn:
        cycle_id = create_cycle(
            conn,
            as_of=as_of,
            markets=markets,
            playbook=HISTORY_LOAD,
            playbook_version=0,
            dry_run=True,
            flow_run_id=None,
        )
    raws = extract_sources(rt.settings)
    with rt.engine.begin() as conn:
        result = validate_all(raws, rt.markets, known_keys=lambda entity: known_keys(conn, entity))
        stats = load_validated(
            conn,
            result,
            cycle_id,
            rt.settings.controller,
            rt.settings.pii_hash_key.get_secret_value().encode(),
        )
        finish_cycle(conn, cycle_id, "completed", {"load": stats})
    return stats


def has_active_model(kind: ModelKind) -> bool:
    """Return whether a model of `kind` is active in the store."""
    with get_runtime().engine.connect() as conn:
        return active_model_artifact(conn, kind) is not None


@task(name="read-history", **STEP)
def read_history(markets: list[str]) -> dict[Entity, pd.DataFrame]:
    """Read the markets' customers, contracts, instalments and activity from the store."""
    with get_runtime().engine.connect() as conn:
        history = read_segment_inputs(conn, markets)
    get_run_logger().info(
        "history of %s: %s", ",".join(markets), ", ".join(f"{e.value}={len(f):,}" for e, f in history.items())
    )
    return history


@task(name="train-model", **STEP)
def train_model(
    kind: ModelKind, history: dict[Entity, pd.DataFrame], as_of: date, markets: list[str], promote: bool
) -> dict[str, Any]:
    """Train, compare and store one risk model, promote it when better, and publish its report."""
    rt = get_runtime()
    result = train_and_register(
        rt.engine,
        kind,
        history,
        as_of,
        card=rt.segmentation.scorecard,
        markets=markets,
        promote=promote,
        flow_run_id=flow_run.id,
    )
    report = result.pop("report")
    create_markdown_artifact(
        key=f"risk-model-{kind}",
        markdown=report,
        description=f"{result['version']} ({result['status']}): metrics, calibration, top features",
    )
    logger = get_run_logger()
    if result["scorecard_roc_auc"] is not None:
        logger.info(
            "%s model %s: ROC AUC %.3f vs scorecard %.3f on %s newer rows (PR AUC %.3f vs %.3f, Brier %.4f)",
            kind,
            result["version"],
            result["roc_auc"],
            result["scorecard_roc_auc"],
            f"{result['rows']['validation']:,}",
            result["pr_auc"],
            result["scorecard_pr_auc"],
            result["brier"],
        )
    else:
        logger.info(
            "%s model %s: ROC AUC %.3f on %s newer rows (PR AUC %.3f, Brier %.4f)",
            kind,
            result["version"],
            result["roc_auc"],
            f"{result['rows']['validation']:,}",
            result["pr_auc"],
            result["brier"],
        )
    logger.info("%s model %s is %s: %s", kind, result["version"], result["status"], result["reason"])
    return result
