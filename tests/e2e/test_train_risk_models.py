"""The train-risk-models flow end to end: it promotes both models and the next cycle scores with one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
)
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from flows.cli import app
from flows.renewal_cycle import renewal_cycle
from flows.train_risk_models import train_risk_models
from tasks.domain.contract import Entity
from tasks.train_models import load_history_for_training
from tests.e2e.conftest import AS_OF, run_logs, wire

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]

PHONE = re.compile(r"\+\d{9,15}")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def test_training_promotes_both_models_and_the_next_cycle_scores_with_the_renewal_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    portfolio = wire(tmp_path, url, customers=2000, seed=11)
    load_history_for_training(AS_OF)

    state = train_risk_models(as_of=AS_OF, return_state=True)

    result = state.result()
    renewal, repayment = result["renewal"], result["repayment"]
    assert (renewal["status"], repayment["status"]) == ("active", "active")
    assert renewal["roc_auc"] > renewal["scorecard_roc_auc"]
    run_id = state.state_details.flow_run_id
    logs = run_logs(run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert any(
        f"ROC AUC {renewal['roc_auc']:.3f} vs scorecard {renewal['scorecard_roc_auc']:.3f}" in m for m in logs
    )
    reports = {a.key: str(a.data) for a in artifacts}
    assert {"risk-model-renewal", "risk-model-repayment"} <= set(reports)
    assert renewal["version"] in reports["risk-model-renewal"]
    customers = portfolio.frames[Entity.CUSTOMERS]
    assert isinstance(customers, pd.DataFrame)
    names = {
        v for c in ("first_name", "last_name") for v in customers[c] if isinstance(v, str) and len(v) >= 4
    }
    for blob in [*logs, *reports.values(), json.dumps(result, default=str)]:
        assert not PHONE.search(blob) and not EMAIL.search(blob), blob
        assert not re.search(r"\bC\d{7}\b", blob), "no customer keys either: aggregates only"
        assert not [n for n in names if re.search(rf"\b{re.escape(n)}\b", blob)], blob

    rerun = CliRunner().invoke(app, ["run", "train-risk-models", "--as-of", str(AS_OF), "--no-promote"])
    assert rerun.exit_code == 0, rerun.output
    assert "already" in rerun.output

    summary = renewal_cycle(as_of=AS_OF)

    assert summary["stages"]["segment"]["model_version"] == renewal["version"]
    engine = create_engine(url)
    with engine.connect() as conn:
        versions = conn.execute(text("select distinct model_version from segment_assignments")).all()
        unexplained = conn.execute(
            text("select count(*) from segment_assignments where risk_band = 'high' and risk_reasons = ''")
        ).scalar_one()
    engine.dispose()
    assert versions == [(renewal["version"],)]
    assert unexplained == 0
