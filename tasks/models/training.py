"""Train a calibrated risk model on older rows, check it on newer ones and report how good it is."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV  # type: ignore[import-untyped]
from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]
from sklearn.frozen import FrozenEstimator  # type: ignore[import-untyped]
from sklearn.impute import SimpleImputer  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import (  # type: ignore[import-untyped]
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline, make_pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import (  # type: ignore[import-untyped]
    FunctionTransformer,
    OneHotEncoder,
    SplineTransformer,
    StandardScaler,
)

from tasks.domain.features import FEATURES, Feature, ModelKind

Array = np.ndarray[Any, Any]
Algorithm = Literal["gam", "gbm"]

MISSING_CATEGORY = "unknown"
# Renewals give one row per term, so an additive model is as good and steadier; repayments give many rows
# and their risk hangs on combinations (overdue now and late before), where boosted trees rank better.
DEFAULT_ALGORITHM: dict[ModelKind, Algorithm] = {"renewal": "gam", "repayment": "gbm"}
CALIBRATION_SHARE = 0.2
CALIBRATION_BINS = 10
TOP_FEATURES = 10
# Permutation importance and best-case search run on a sample: enough to rank, cheap at any size.
IMPORTANCE_ROWS = 10_000
IMPORTANCE_REPEATS = 3
BASELINE_ROWS = 2_000
# A best case must be a common value, not a handful of rows the model knows little about.
COMMON_SHARE = 0.05
# The safe end of inputs whose direction is not in doubt; the others get a best case from the data.
SAFE_END: dict[str, Literal["low", "high"]] = {
    "late_payments_12m": "low",
    "severe_late_12m": "low",
    "days_past_due": "low",
    "overdue_instalments": "low",
    "worst_days_late": "low",
    "earlier_lapses": "low",
    "no_activity_history": "low",
    "tenure_years": "high",
    "transactions_per_month": "high",
    "auto_renew": "high",
    "earlier_renewals": "high",
}
# Left free: missing activity is filled with a typical value, so its flag may lean either way; and the
# days overdue right now peak near a month (a missed instalment about to roll into the next) in our data.
UNCONSTRAINED = frozenset({"no_activity_history", "days_past_due"})
# Inputs whose best case is "no change": a decline is a risk, a rise is no reason for concern.
NEUTRAL: dict[str, float] = {"activity_change": 0.0}

_LABEL_MEANING: dict[ModelKind, str] = {
    "renewal": "the contract is not renewed by its term end",
    "repayment": "the instalment is still unpaid 30 days after its due date",
}


@dataclass(frozen=True)
class CalibrationBin:
    """One tenth of the validation rows, by predicted probability: how often the event really happened."""

    low: float
    high: float
    count: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class FeatureImportance:
    """How much the validation ROC AUC drops when one input is shuffled."""

    feature: str
    title: str
    importance: float
    spread: float


@dataclass(frozen=True)
class TrainedModel:
    """A fitted, calibrated model with the evidence of how well it did on newer rows it never saw."""

    kind: ModelKind
    algorithm: Algorithm
    version: str
    trained_at: datetime
    label: str
    time_column: str
    features: tuple[str, ...]
    train_from: date
    train_to: date
    validation_from: date
    validation_to: date
    n_train: int
    n_validation: int
    base_rate_train: float
    base_rate_validation: float
    metrics: dict[str, float]
    calibration: tuple[CalibrationBin, ...]
    top_features: tuple[FeatureImportance, ...]
    params: dict[str, Any]
    baseline: dict[str, Any] = field(repr=False)
    layout: tuple[tuple[str, int, int], ...] = field(repr=False)
    pipeline: Any = field(repr=False, compare=False)

    def predict_proba(self, frame: pd.DataFrame) -> Array:
        """Return the calibrated probability of the event for each row of `frame`."""
        if frame.empty:
            return np.zeros(0)
        return np.asarray(self.pipeline.predict_proba(model_inputs(frame, self.kind))[:, 1])

    def validation_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the rows of `frame` that fall in this model's validation window."""
        times = pd.to_datetime(frame[self.time_column])
        start, end = pd.Timestamp(self.validation_from), pd.Timestamp(self.validation_to)
        return frame[(times >= start) & (times <= end)]

    def to_bytes(self) -> bytes:
        """Return the model as bytes for the store."""
        return pickle.dumps(self, protocol=5)

    @staticmethod
    def from_bytes(blob: bytes) -> TrainedModel:
        """Return the model stored by `to_bytes`."""
        # Unpickling runs code: load only artifacts we wrote ourselves, from our own store.
        model = pickle.loads(blob)
        if not isinstance(model, TrainedModel):
            raise TypeError(f"not a TrainedModel: {type(model).__name__}")
        return model

    def report_markdown(self, comparison: dict[str, Any] | None = None) -> str:
        """Return a Markdown report: windows, metrics, calibration and top features (no personal data)."""
        lines = [
            f"# Risk model `{self.version}`",
            "",
            f"Predicts the probability that {_LABEL_MEANING[self.kind]}.",
            "",
            "| | |",
            "|---|---|",
            f"| kind | {self.kind} ({self.algorithm}) |",
            f"| trained at | {self.trained_at:%Y-%m-%d %H:%M} UTC |",
            f"| training rows | {self.n_train:,} ({self.train_from} to {self.train_to}) |",
            f"| validation rows | {self.n_validation:,} ({self.validation_from} to {self.validation_to}) |",
            f"| base rate, training | {self.base_rate_train:.1%} |",
            f"| base rate, validation | {self.base_rate_validation:.1%} |",
            "",
            "## Validation metrics (newer rows the model never saw)",
            "",
            "| metric | value |",
            "|---|---|",
            f"| ROC AUC | {self.metrics['roc_auc']:.3f} |",
            f"| PR AUC (average precision) | {self.metrics['pr_auc']:.3f} |",
            f"| Brier score | {self.metrics['brier']:.4f} |",
            f"| log loss | {self.metrics['log_loss']:.4f} |",
            "",
        ]
        if comparison:
            lines += [
                "## Compared with the scorecard (same validation rows)",
                "",
                "| | model | scorecard |",
                "|---|---|---|",
                f"| ROC AUC | {comparison['model_roc_auc']:.3f} | {comparison['scorecard_roc_auc']:.3f} |",
                f"| PR AUC | {comparison['model_pr_auc']:.3f} | {comparison['scorecard_pr_auc']:.3f} |",
                "",
            ]
        lines += [
            "## Calibration (validation rows in tenths by predicted probability)",
            "",
            "| predicted range | rows | mean predicted | observed rate |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {b.low:.3f}-{b.high:.3f} | {b.count:,} | {b.mean_predicted:.3f} | {b.observed_rate:.3f} |"
            for b in self.calibration
        ]
        lines += [
            "",
            "## Top features (drop in validation ROC AUC when shuffled)",
            "",
            "| feature | importance |",
            "|---|---|",
        ]
        lines += [f"| {f.title} | {f.importance:.4f} ± {f.spread:.4f} |" for f in self.top_features]
        return "\n".join(lines) + "\n"


def model_inputs(frame: pd.DataFrame, kind: ModelKind) -> pd.DataFrame:
    """Return the model's input columns of `frame`: numbers as floats, categories as text."""
    out = pd.DataFrame(index=frame.index)
    for feature in FEATURES[kind]:
        column = frame[feature.name]
        if feature.kind == "category":
            out[feature.name] = column.astype("object").where(column.notna(), MISSING_CATEGORY).astype(str)
        else:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype("float64")
    return out


def split_by_time(
    frame: pd.DataFrame, time_column: str, validation_share: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (older, newer) rows: the newest `validation_share` of rows, cut on a whole date."""
    if not 0.0 < validation_share < 1.0:
        raise ValueError("validation_share must be between 0 and 1")
    times = pd.to_datetime(frame[time_column])
    if times.isna().any():
        raise ValueError(f"{time_column} has empty values")
    ordered = np.sort(times.to_numpy())
    cut = ordered[min(int(len(ordered) * (1 - validation_share)), len(ordered) - 1)]
    # Every row of the cut date goes to the newer side, so no date is on both sides.
    older, newer = frame[times < cut], frame[times >= cut]
    if older.empty or newer.empty:
        raise ValueError("not enough distinct dates to split by time")
    return older, newer


def signed_log1p(x: Array) -> Array:
    """Return sign(x) * log(1 + |x|): counts and days on a scale where one more matters less and less."""
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)))


def _preprocessor(features: tuple[Feature, ...], algorithm: Algorithm) -> ColumnTransformer:
    numbers = [f.name for f in features if f.kind == "number"]
    flags = [f.name for f in features if f.kind == "flag"]
    categories = [f.name for f in features if f.kind == "category"]
    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    if algorithm == "gam":
        # Splines let the additive model bend: the fifth late payment adds less risk than the first.
        shape = make_pipeline(
            imputer,
            FunctionTransformer(signed_log1p, feature_names_out="one-to-one"),
            SplineTransformer(n_knots=5, degree=3, knots="uniform", extrapolation="constant"),
        )
    else:
        shape = make_pipeline(imputer, StandardScaler())
    return ColumnTransformer(
        [
            ("number", shape, numbers),
            ("flag", SimpleImputer(strategy="most_frequent", keep_empty_features=True), flags),
            ("category", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categories),
        ],
        sparse_threshold=0.0,
    )


def _classifier(
    algorithm: Algorithm, seed: int, layout: tuple[tuple[str, int, int], ...]
) -> tuple[Any, dict[str, Any]]:
    if algorithm == "gbm":
        params: dict[str, Any] = {
            "learning_rate": 0.1,
            "max_iter": 300,
            "max_leaf_nodes": 15,
            "min_samples_leaf": 40,
            "l2_regularization": 1.0,
            "early_stopping": True,
            "n_iter_no_change": 20,
        }
        # More late payments may never lower the risk, more tenure never raise it: trees would otherwise
        # learn such wiggles from noise, and the explanations would follow them.
        direction = {"low": 1, "high": -1}
        monotonic = np.zeros(layout[-1][2] if layout else 0, dtype=np.int64)
        for name, low, high in layout:
            if name in SAFE_END and name not in UNCONSTRAINED:
                monotonic[low:high] = direction[SAFE_END[name]]
        model = HistGradientBoostingClassifier(random_state=seed, monotonic_cst=monotonic, **params)
        return model, {
            **params,
            "monotonic": [n for n, _, _ in layout if n in SAFE_END and n not in UNCONSTRAINED],
        }
    params = {"C": 0.5, "max_iter": 2000}
    return LogisticRegression(**params), params


def _layout(prepare: ColumnTransformer, features: tuple[Feature, ...]) -> tuple[tuple[str, int, int], ...]:
    """Return each input's slice of the transformed columns."""
    encoder = prepare.named_transformers_["category"]
    spans: list[tuple[str, int, int]] = []
    for part, kinds in (("number", ("number",)), ("flag", ("flag",)), ("category", ("category",))):
        names = [f.name for f in features if f.kind in kinds]
        block = prepare.output_indices_[part]
        widths = (
            [len(values) for values in encoder.categories_]
            if part == "category"
            else [(block.stop - block.start) // max(len(names), 1)] * len(names)
        )
        at = block.start
        for name, width in zip(names, widths, strict=True):
            spans.append((name, at, at + width))
            at += width
    return tuple(spans)


def _calibration_table(y: Array, p: Array) -> tuple[CalibrationBin, ...]:
    order = np.argsort(p, kind="stable")
    bins = np.empty(len(p), dtype=np.int64)
    bins[order] = np.arange(len(p)) * CALIBRATION_BINS // len(p)
    table = []
    for b in range(CALIBRATION_BINS):
        mask = bins == b
        if not mask.any():
            continue
        table.append(
            CalibrationBin(
                low=float(p[mask].min()),
                high=float(p[mask].max()),
                count=int(mask.sum()),
                mean_predicted=float(p[mask].mean()),
                observed_rate=float(y[mask].mean()),
            )
        )
    return tuple(table)


def _metrics(y: Array, p: Array) -> dict[str, float]:
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
    }


def _importance(
    classify: Any, z: Array, y: Array, layout: tuple[tuple[str, int, int], ...], seed: int
) -> list[tuple[str, float, float]]:
    """Return per input the mean and spread of the drop in ROC AUC when its columns are shuffled together."""
    if len(np.unique(y)) < 2:
        return [(name, 0.0, 0.0) for name, _, _ in layout]
    rng = np.random.default_rng(seed)
    base = roc_auc_score(y, classify.predict_proba(z)[:, 1])
    out = []
    for name, low, high in layout:
        drops = []
        for _ in range(IMPORTANCE_REPEATS):
            shuffled = z.copy()
            shuffled[:, low:high] = z[rng.permutation(len(z)), low:high]
            drops.append(base - roc_auc_score(y, classify.predict_proba(shuffled)[:, 1]))
        out.append((name, float(np.mean(drops)), float(np.std(drops))))
    return out


def _baseline(
    prepare: ColumnTransformer,
    classify: Any,
    sample: pd.DataFrame,
    training: pd.DataFrame,
    features: tuple[Feature, ...],
    layout: tuple[tuple[str, int, int], ...],
) -> dict[str, Any]:
    """Return, per input, its best case: the safe end, else the common value of lowest mean risk."""
    z = np.asarray(prepare.transform(sample), dtype=np.float64)
    spans = {name: (low, high) for name, low, high in layout}
    best: dict[str, Any] = {}
    for feature in features:
        column = training[feature.name]
        present = column.dropna()
        safe = SAFE_END.get(feature.name)
        if feature.name in NEUTRAL:
            best[feature.name] = NEUTRAL[feature.name]
            continue
        if safe is not None and len(present):
            best[feature.name] = float(present.quantile(0.0 if safe == "low" else 0.9))
            continue
        if feature.kind == "category":
            shares = column.value_counts(normalize=True)
            candidates: list[Any] = list(shares.index[shares >= COMMON_SHARE]) or list(shares.index[:1])
        elif len(present):
            candidates = sorted({float(q) for q in present.quantile(np.linspace(0.1, 0.9, 9))})
        else:
            candidates = [0.0]
        low, high = spans[feature.name]
        risks = []
        for value in candidates:
            row = sample.iloc[[0]].copy()
            row[feature.name] = value
            trial = z.copy()
            trial[:, low:high] = prepare.transform(row)[0, low:high]
            risks.append(float(classify.predict_proba(trial)[:, 1].mean()))
        best[feature.name] = candidates[int(np.argmin(risks))]
    return best


def _version(kind: ModelKind, algorithm: Algorithm, trained_at: datetime, facts: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{kind}-{algorithm}-{trained_at:%Y%m%d}-{digest}"


def train(
    kind: ModelKind,
    frame: pd.DataFrame,
    *,
    time_column: str,
    label: str,
    validation_share: float = 0.25,
    seed: int = 0,
    algorithm: Algorithm | None = None,
    max_train_rows: int | None = 250_000,
    now: datetime | None = None,
) -> TrainedModel:
    """Fit on older rows, calibrate on the newest of those, and measure on the newest `validation_share`."""
    algorithm = algorithm or DEFAULT_ALGORITHM[kind]
    features = FEATURES[kind]
    older, newer = split_by_time(frame, time_column, validation_share)
    fit_rows, calibration_rows = split_by_time(older, time_column, CALIBRATION_SHARE)
    if max_train_rows is not None and len(fit_rows) > max_train_rows:
        fit_rows = fit_rows.sample(n=max_train_rows, random_state=seed).sort_index()
    for name, part in (("fitting", fit_rows), ("calibration", calibration_rows), ("validation", newer)):
        if part[label].nunique() < 2:
            raise ValueError(f"the {name} rows need both outcomes of {label}")

    x_fit, y_fit = model_inputs(fit_rows, kind), fit_rows[label].to_numpy(dtype=np.int64)
    x_cal, y_cal = model_inputs(calibration_rows, kind), calibration_rows[label].to_numpy(dtype=np.int64)
    x_val, y_val = model_inputs(newer, kind), newer[label].to_numpy(dtype=np.int64)

    prepare = _preprocessor(features, algorithm).fit(x_fit)
    layout = _layout(prepare, features)
    classifier, params = _classifier(algorithm, seed, layout)
    z_fit, z_cal = prepare.transform(x_fit), prepare.transform(x_cal)
    if algorithm == "gbm":
        # Early stopping watches the newest training rows, never a random slice across time.
        classifier.fit(z_fit, y_fit, X_val=z_cal, y_val=y_cal)
        params = {**params, "n_iter": int(classifier.n_iter_)}
    else:
        classifier.fit(z_fit, y_fit)
    calibrated = CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid").fit(z_cal, y_cal)
    pipeline = Pipeline([("prepare", prepare), ("classify", calibrated)])

    z_val = np.asarray(prepare.transform(x_val), dtype=np.float64)
    p_val = np.asarray(calibrated.predict_proba(z_val)[:, 1])
    pick = np.random.default_rng(seed).permutation(len(x_val))[:IMPORTANCE_ROWS]
    titles = {f.name: f.title for f in features}
    ranked = sorted(_importance(calibrated, z_val[pick], y_val[pick], layout, seed), key=lambda r: -r[1])
    top = tuple(
        FeatureImportance(feature=name, title=titles[name], importance=mean, spread=spread)
        for name, mean, spread in ranked[:TOP_FEATURES]
    )
    sample = pick[:BASELINE_ROWS]
    baseline = _baseline(prepare, calibrated, x_val.iloc[sample], x_fit, features, layout)

    trained_at = (now or datetime.now(UTC)).astimezone(UTC)
    times = {
        name: pd.to_datetime(part[time_column]) for name, part in (("train", older), ("validation", newer))
    }
    facts = {
        "kind": kind,
        "algorithm": algorithm,
        "params": params,
        "features": [f.name for f in features],
        "seed": seed,
        "train": [str(times["train"].min().date()), str(times["train"].max().date()), len(older)],
        "validation": [
            str(times["validation"].min().date()),
            str(times["validation"].max().date()),
            len(newer),
        ],
    }
    return TrainedModel(
        kind=kind,
        algorithm=algorithm,
        version=_version(kind, algorithm, trained_at, facts),
        trained_at=trained_at,
        label=label,
        time_column=time_column,
        features=tuple(f.name for f in features),
        train_from=times["train"].min().date(),
        train_to=times["train"].max().date(),
        validation_from=times["validation"].min().date(),
        validation_to=times["validation"].max().date(),
        n_train=len(older),
        n_validation=len(newer),
        base_rate_train=float(older[label].mean()),
        base_rate_validation=float(newer[label].mean()),
        metrics=_metrics(y_val, p_val),
        calibration=_calibration_table(y_val, p_val),
        top_features=top,
        params=params,
        baseline=baseline,
        layout=layout,
        pipeline=pipeline,
    )
