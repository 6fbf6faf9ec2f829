"""Risk models in the store: versions, promotion, the cycle scoring with the active one, tampering refused."""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from alembic import command
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from config.loader import load_segmentation
from tasks.domain.contract import Entity
from tasks.domain.features import FEATURES, repayment_training_frame
from tasks.domain.segmentation import SCORECARD_VERSION
from tasks.domain.summary import stage_rows
from tasks.dsr import export_customer
from tasks.models.explain import scorecard_factors_in_words
from tasks.models.training import TrainedModel, train
from tasks.segment import segment_cycle
from tasks.sources.demo_data import generate_portfolio
from tasks.sources.raw import RawFrame
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.engine import make_engine
from tasks.store.migrate import alembic_config, upgrade
from tasks.store.repository import activate_model, create_cycle, model_versions_of, read_segment_inputs
from tasks.timeline import customer_timeline
from tasks.train_models import ModelIntegrityError, active_model, train_and_register, training_frame
from tests.support.factories import ROOT, markets
from tests.support.pipeline import HASH_KEY, Pipeline

AS_OF = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
MARKETS = sorted(markets())
CONFIG = load_segmentation(ROOT / "config")
# A feature name leaking into text: lower-case words joined by underscores.
SNAKE = re.compile(r"\b[a-z0-9]+_[a-z0-9_]+\b")


@dataclass(frozen=True)
class Demo:
    """A demo portfolio's history as the store returns it, and a SQLite file it is loaded into."""

    history: dict[Entity, pd.DataFrame]
    store: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    portfolio = generate_portfolio(2500, 11, AS_OF, markets())
    raws = {e: RawFrame(e, e.value, f, pd.Series(range(2, len(f) + 2))) for e, f in portfolio.items()}
    path = tmp_path_factory.mktemp("risk-models") / "loaded.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    Pipeline(engine).load(raws)
    with engine.connect() as conn:
        history = read_segment_inputs(conn, MARKETS)
    engine.dispose()
    return Demo(history, path)


@pytest.fixture
def store(demo: Demo, tmp_path: Path) -> Iterator[Engine]:
    """Yield a fresh copy of the loaded store."""
    path = tmp_path / "store.db"
    shutil.copy(demo.store, path)
    engine = make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def _train(engine: Engine, demo: Demo, kind: Any = "renewal", **options: Any) -> dict[str, Any]:
    options.setdefault("now", NOW)
    return train_and_register(
        engine, kind, demo.history, AS_OF, card=CONFIG.scorecard, markets=MARKETS, **options
    )


def _noise(kind: Any, frame: pd.DataFrame, **options: Any) -> TrainedModel:
    """Train on shuffled outcomes: a model that has learned nothing."""
    label = options["label"]
    shuffled = np.random.default_rng(0).permutation(frame[label].to_numpy())
    return train(kind, frame.assign(**{label: shuffled}), **options)


def _versions(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return model_versions_of(conn).set_index("version")


def _promotions(engine: Engine) -> list[dict[str, Any]]:
    a = s.audit_log
    with engine.connect() as conn:
        rows = conn.execute(select(a.c.subject_key, a.c.details).where(a.c.action == "model.promoted"))
        return [{"version": r.subject_key, **r.details} for r in rows]


def _segment(engine: Engine) -> tuple[dict[str, Any], pd.DataFrame]:
    with engine.begin() as conn:
        cycle_id = create_cycle(
            conn,
            as_of=AS_OF,
            markets=MARKETS,
            playbook="renewal-standard",
            playbook_version=1,
            dry_run=False,
            flow_run_id=None,
        )
        stats = segment_cycle(conn, cycle_id, AS_OF, MARKETS, CONFIG)
    with engine.connect() as conn:
        sa_ = s.segment_assignments
        rows = read_frame(conn, select(sa_).where(sa_.c.cycle_id == cycle_id))
    return stats, rows


class TestTraining:
    def test_both_models_are_stored_with_their_evidence_and_promoted_when_none_is_active(
        self, engine: Engine, demo: Demo
    ) -> None:
        renewal = _train(engine, demo, "renewal")
        repayment = _train(engine, demo, "repayment")

        versions = _versions(engine)
        assert sorted(versions.index) == sorted([renewal["version"], repayment["version"]])
        assert set(versions["status"]) == {"active"} and versions["activated_at"].notna().all()
        assert renewal["roc_auc"] > renewal["scorecard_roc_auc"]
        assert "beats scorecard-v1" in renewal["reason"]
        assert repayment["reason"] == "no model of this kind is active yet"
        stored = versions.loc[renewal["version"]]
        assert stored["metrics"]["roc_auc"] == pytest.approx(renewal["roc_auc"], abs=1e-4)
        assert stored["comparison"]["scorecard"]["scorecard_roc_auc"] == pytest.approx(
            renewal["scorecard_roc_auc"], abs=1e-4
        )
        assert len(stored["calibration"]) == 10 and stored["top_features"]
        assert stored["features"] == [f.name for f in FEATURES["renewal"]]
        assert stored["params"]["markets"] == MARKETS and len(stored["artifact_sha256"]) == 64
        assert {p["version"] for p in _promotions(engine)} == {renewal["version"], repayment["version"]}
        for report in (renewal["report"], repayment["report"]):
            for needle in ("ROC AUC", "PR AUC", "Brier score", "Calibration", "Top features", "promoted"):
                assert needle in report
            assert not re.search(r"\b[CK]\d{7}\b", report), "no customer or contract keys in the report"
        assert "Compared with the scorecard" in renewal["report"]
        with engine.connect() as conn:
            loaded = active_model(conn, "renewal")
        assert loaded is not None and loaded.version == renewal["version"]

    def test_a_worse_model_stays_a_candidate_and_the_active_one_keeps_scoring(
        self, sqlite_engine: Engine, demo: Demo
    ) -> None:
        first = _train(sqlite_engine, demo)
        worse = _train(sqlite_engine, demo, now=NOW + timedelta(days=7), trainer=_noise)

        assert (worse["status"], worse["promoted"]) == ("candidate", False)
        assert f"does not beat {first['version']}" in worse["reason"]
        versions = _versions(sqlite_engine)
        assert versions.loc[first["version"], "status"] == "active"
        assert versions.loc[worse["version"], "status"] == "candidate"
        assert versions.loc[worse["version"], "comparison"]["active"]["version"] == first["version"]
        assert [p["version"] for p in _promotions(sqlite_engine)] == [first["version"]]

    def test_an_equally_good_retraining_does_not_replace_the_active_model(
        self, sqlite_engine: Engine, demo: Demo
    ) -> None:
        first = _train(sqlite_engine, demo)
        again = _train(sqlite_engine, demo, now=NOW + timedelta(days=7))

        assert again["version"] != first["version"] and again["roc_auc"] == first["roc_auc"]
        assert again["status"] == "candidate" and "does not beat" in again["reason"]
        assert _versions(sqlite_engine).loc[first["version"], "status"] == "active"

    def test_a_better_model_replaces_the_active_one_which_is_retired(
        self, sqlite_engine: Engine, demo: Demo
    ) -> None:
        weak = _train(sqlite_engine, demo, trainer=_noise)
        assert weak["status"] == "candidate", "a model that learned nothing does not beat the scorecard"
        with sqlite_engine.begin() as conn:
            assert activate_model(conn, "renewal", weak["version"], None, NOW)

        better = _train(sqlite_engine, demo, now=NOW + timedelta(days=7))

        assert (better["status"], better["promoted"]) == ("active", True)
        assert f"beats {weak['version']}" in better["reason"]
        versions = _versions(sqlite_engine)
        assert versions.loc[weak["version"], "status"] == "retired"
        assert versions.loc[weak["version"], "retired_at"] is not None
        assert _promotions(sqlite_engine)[-1]["replaces"] == weak["version"]

    def test_a_rerun_of_the_same_training_changes_nothing(self, sqlite_engine: Engine, demo: Demo) -> None:
        first = _train(sqlite_engine, demo)
        rerun = _train(sqlite_engine, demo)

        assert rerun["version"] == first["version"] and rerun["status"] == "active"
        assert not rerun["promoted"]
        assert len(_versions(sqlite_engine)) == 1 and len(_promotions(sqlite_engine)) == 1

    def test_without_promotion_the_model_is_kept_as_a_candidate(
        self, sqlite_engine: Engine, demo: Demo
    ) -> None:
        result = _train(sqlite_engine, demo, promote=False)

        assert result["status"] == "candidate" and "promotion turned off" in result["report"]
        assert not _promotions(sqlite_engine)

    def test_repayment_training_learns_from_instalments_due_in_the_last_year_only(self, demo: Demo) -> None:
        later = AS_OF + timedelta(days=150)
        frames = [demo.history[e] for e in (Entity.CONTRACTS, Entity.CUSTOMERS)]
        frames += [demo.history[e] for e in (Entity.INSTALMENTS, Entity.ACTIVITY)]
        everything = repayment_training_frame(*frames, later)

        bounded = training_frame("repayment", demo.history, later)

        assert everything["due_date"].min() < pd.Timestamp(later - timedelta(days=400))
        assert bounded["due_date"].min() >= pd.Timestamp(later.year - 1, later.month, 1)
        assert len(bounded) < len(everything)

    def test_a_store_without_history_gives_a_clear_error(self, sqlite_engine: Engine) -> None:
        with sqlite_engine.connect() as conn:
            empty = read_segment_inputs(conn, MARKETS)
        with pytest.raises(ValueError, match="not enough history to train the renewal model"):
            train_and_register(sqlite_engine, "renewal", empty, AS_OF, card=CONFIG.scorecard, markets=MARKETS)


class Unpickled:
    """Leaves a mark when unpickled: an artifact someone swapped in to run code."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> Any:
        return (Path.touch, (self.mark,))


class TestCycle:
    def test_segment_rows_record_the_active_model_and_plain_reasons_for_high_risk_rows(
        self, store: Engine, demo: Demo
    ) -> None:
        model = _train(store, demo)

        stats, rows = _segment(store)

        assert stats["model_version"] == model["version"]
        assert set(rows["model_version"]) == {model["version"]}
        high = rows[rows["risk_band"] == "high"]
        assert len(high) > 0 and (high["risk_score"] >= 60).all()
        assert (high["risk_reasons"].str.len() > 0).all()
        for text in high["risk_reasons"]:
            assert not SNAKE.search(text), text
            assert 1 <= len(text.split("; ")) <= 3
        assert rows["risk_score"].between(0, 100).all()
        assert (rows.loc[rows["risk_band"] == "low", "risk_score"] < 30).all()
        ((_, _, detail, _),) = [r for r in stage_rows({"stages": {"segment": stats}}) if r[0] == "segment"]
        assert detail.endswith(f"model {model['version']}")

        riskiest = high.sort_values("risk_score").iloc[-1]
        with store.connect() as conn:
            timeline = customer_timeline(conn, riskiest["customer_key"])
            export = export_customer(conn, riskiest["customer_key"], HASH_KEY, {"request_id": 1})
        details = " ".join(timeline.loc[timeline["kind"] == "segment", "detail"])
        assert riskiest["risk_reasons"] in details and "learned model" in details
        assert model["version"] in details
        words = [row["in_plain_words"] for row in export["segments_and_scores"]]
        assert any(riskiest["risk_reasons"] in w for w in words)

    def test_without_a_model_the_scorecard_is_recorded_with_its_factors_in_words(self, store: Engine) -> None:
        stats, rows = _segment(store)

        assert stats["model_version"] == SCORECARD_VERSION
        assert set(rows["model_version"]) == {SCORECARD_VERSION}
        expected = [scorecard_factors_in_words(f, CONFIG.scorecard) for f in rows["risk_factors"]]
        assert rows["risk_reasons"].tolist() == expected
        assert (rows.loc[rows["risk_band"] == "high", "risk_reasons"].str.len() > 0).all()

    def test_a_tampered_artifact_is_refused_before_it_is_unpickled(
        self, store: Engine, demo: Demo, tmp_path: Path
    ) -> None:
        model = _train(store, demo)
        mark = tmp_path / "unpickled"
        mv = s.model_versions
        with store.begin() as conn:
            conn.execute(
                update(mv)
                .where(mv.c.version == model["version"])
                .values(artifact=pickle.dumps(Unpickled(mark)))
            )

        with pytest.raises(
            ModelIntegrityError, match=r"refusing the renewal model .*sha256 .* does not match"
        ):
            _segment(store)

        assert not mark.exists()
        with store.connect() as conn:
            assert conn.execute(select(func.count()).select_from(s.segment_assignments)).scalar_one() == 0


def _row(version: str, kind: str, status: str) -> dict[str, Any]:
    day = AS_OF
    return {
        "version": version,
        "kind": kind,
        "algorithm": "gam",
        "status": status,
        "as_of": day,
        "trained_at": NOW,
        "train_from": day,
        "train_to": day,
        "validation_from": day,
        "validation_to": day,
        "n_train": 1,
        "n_validation": 1,
        "base_rate_train": 0.5,
        "base_rate_validation": 0.5,
        "metrics": {},
        "calibration": [],
        "top_features": [],
        "features": [],
        "params": {},
        "report_md": "",
        "artifact": b"x",
        "artifact_sha256": "0" * 64,
    }


class TestStore:
    def test_at_most_one_model_of_a_kind_can_be_active(self, engine: Engine) -> None:
        with engine.begin() as conn:
            conn.execute(insert(s.model_versions).values(**_row("renewal-a", "renewal", "active")))
            conn.execute(insert(s.model_versions).values(**_row("renewal-b", "renewal", "retired")))
            conn.execute(insert(s.model_versions).values(**_row("repayment-a", "repayment", "active")))

        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(s.model_versions).values(**_row("renewal-c", "renewal", "active")))
        with engine.begin() as conn:
            assert not activate_model(conn, "renewal", "renewal-b", "someone-else", NOW)
            assert activate_model(conn, "renewal", "renewal-b", "renewal-a", NOW)
        with engine.connect() as conn:
            active = model_versions_of(conn).query("status == 'active'")
        assert sorted(active["version"]) == ["renewal-b", "repayment-a"]

    def test_the_migration_downgrades_and_upgrades_again(self, engine: Engine) -> None:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
        with engine.connect() as conn:
            assert "model_versions" not in engine.dialect.get_table_names(conn)
            columns = {c["name"] for c in engine.dialect.get_columns(conn, "segment_assignments")}
            assert "risk_reasons" not in columns

        upgrade(engine)

        with engine.connect() as conn:
            assert "model_versions" in engine.dialect.get_table_names(conn)
            columns = {c["name"] for c in engine.dialect.get_columns(conn, "segment_assignments")}
            assert "risk_reasons" in columns
            indexes = {i["name"] for i in engine.dialect.get_indexes(conn, "model_versions")}
            assert "uq_model_versions_active" in indexes
