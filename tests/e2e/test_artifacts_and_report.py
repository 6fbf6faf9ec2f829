"""What people see: the cycle's artifacts in Prefect, and the kpi-report flow, its file and its link."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from flows.cli import app
from flows.kpi_report import kpi_report
from flows.renewal_cycle import renewal_cycle
from tasks.domain.kpis import GRACE_DAYS
from tasks.reporting.report import render_report
from tasks.runtime import reset_runtime
from tests.e2e.conftest import AS_OF, Portfolio, flush_logs, wire
from tests.e2e.test_renewal_cycle import EMAIL, PHONE, _pii_needles, _run_texts
from tests.unit.test_report import empty_report_data

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]

MEASURED_ON = AS_OF + timedelta(days=90)


def _artifacts(flow_run_id: UUID) -> dict[str, Any]:
    flush_logs()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def _scalar(url: str, sql: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text(sql)).scalar_one()
    engine.dispose()
    return int(value)


def _table(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    return list(json.loads(data) if isinstance(data, str) else data)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Portfolio, UUID, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("artifacts")
    portfolio = wire(tmp, f"sqlite:///{tmp / 'store.db'}", customers=1500, seed=11)
    state = renewal_cycle(as_of=AS_OF, markets=["DE", "FR", "ES", "GB"], return_state=True)
    return portfolio, state.state_details.flow_run_id, state.result()


@pytest.fixture
def cycle(ran: tuple[Portfolio, UUID, dict[str, Any]]) -> tuple[Portfolio, UUID, dict[str, Any]]:
    """Point the settings back at the module's store (each test's teardown unwires them)."""
    portfolio = ran[0]
    os.environ["RENEWALS_DATABASE_URL"] = portfolio.database_url
    os.environ["RENEWALS_SOURCE_DIR"] = str(portfolio.source_dir)
    os.environ["RENEWALS_OUTBOX_DIR"] = str(portfolio.outbox_dir)
    os.environ["RENEWALS_HOME"] = str(portfolio.source_dir.parent / "home")
    reset_runtime()
    return ran


def test_a_cycle_run_publishes_its_summary_tables_and_dispatch_progress(
    cycle: tuple[Portfolio, UUID, dict[str, Any]],
) -> None:
    portfolio, run_id, summary = cycle
    found = _artifacts(run_id)
    expected = {
        "renewal-cycle-summary",
        "cycle-segments",
        "cycle-decisions",
        "cycle-messages",
        "cycle-rewards",
        "cycle-worklist",
        "dispatch-progress",
    }
    assert expected <= set(found)
    assert found["dispatch-progress"].data == 100.0
    url = portfolio.database_url
    messages = sum(r["messages"] for r in _table(found["cycle-messages"]))
    assert messages == _scalar(url, "select count(*) from messages where cycle_id = 1") > 0
    segments = sum(r["contracts"] for r in _table(found["cycle-segments"]))
    assert segments == _scalar(url, "select count(*) from segment_assignments where cycle_id = 1")
    decisions = sum(r["decisions"] for r in _table(found["cycle-decisions"]))
    assert decisions == _scalar(url, "select count(*) from decisions where cycle_id = 1")
    worklist = _table(found["cycle-worklist"])
    assert len(worklist) == summary["worklist_rows"] or worklist == [{"note": "nothing in this cycle"}]
    markdown = str(found["renewal-cycle-summary"].data)
    for key in ("cycle-segments", "cycle-decisions", "cycle-messages", "cycle-rewards", "cycle-worklist"):
        assert key in markdown


def test_run_and_task_names_say_markets_day_and_playbook(
    cycle: tuple[Portfolio, UUID, dict[str, Any]],
) -> None:
    _, run_id, _ = cycle
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
        )
    assert run.name == f"renewal-cycle DE,ES,FR,GB {AS_OF} all"
    segment = [t.name for t in tasks if t.name.startswith("segment")]
    assert segment and all(f"{AS_OF}" in n and "DE,ES,FR,GB" in n for n in segment)


def test_no_artifact_log_or_parameter_of_the_cycle_holds_personal_data(
    cycle: tuple[Portfolio, UUID, dict[str, Any]],
) -> None:
    portfolio, run_id, _ = cycle
    needles = _pii_needles(portfolio)
    for blob in _run_texts(run_id):
        assert not PHONE.search(blob) and not EMAIL.search(blob), blob[:200]
        assert not [n for n in needles if n in blob]


def _renew_some(url: str) -> None:
    """Record renewals as the CRM would report them: every third contract renewed 3 days early."""
    engine = create_engine(url)
    with engine.begin() as conn:
        keys = [
            k
            for (k,) in conn.execute(
                text(
                    "select distinct contract_key from messages where playbook = 'renewal-standard' union "
                    "select distinct contract_key from holdouts where playbook = 'renewal-standard' "
                    "order by 1"
                )
            )
        ]
        for key in keys[::3]:
            conn.execute(
                text("update contracts set renewed_at = date(term_end, '-3 days') where contract_key = :k"),
                {"k": key},
            )
    engine.dispose()


def test_kpi_report_counts_the_cycles_terms_and_links_a_report_without_personal_data(
    cycle: tuple[Portfolio, UUID, dict[str, Any]], tmp_path: Path
) -> None:
    portfolio, _, _ = cycle
    url = portfolio.database_url
    _renew_some(url)
    state = kpi_report(
        start=AS_OF, end=AS_OF, as_of=MEASURED_ON, out=str(tmp_path / "r.html"), return_state=True
    )
    result = state.result()
    found = _artifacts(state.state_details.flow_run_id)
    assert {"kpi-report", "kpi-headline", "kpi-channel-health", "kpi-report-summary"} <= set(found)
    link = re.fullmatch(r"\[r\.html\]\((file:[^)]+)\)", str(found["kpi-report"].data))
    assert link, found["kpi-report"].data
    path = Path(unquote(urlparse(link.group(1)).path))
    assert path == (tmp_path / "r.html").resolve() and path.stat().st_size > 10_000

    mature = f"date(anchor_date, '+{GRACE_DAYS} days') <= '{MEASURED_ON}'"
    treated = _scalar(
        url,
        "select count(*) from (select distinct contract_key, anchor_date from messages "
        f"where playbook = 'renewal-standard' and {mature})",
    )
    control = _scalar(
        url,
        "select count(*) from (select distinct contract_key, anchor_date from holdouts "
        f"where playbook = 'renewal-standard' and {mature})",
    )
    renewed = _scalar(
        url,
        "select count(*) from (select distinct m.contract_key, m.anchor_date from messages m "
        "join contracts c on c.contract_key = m.contract_key "
        f"where m.playbook = 'renewal-standard' and {mature.replace('anchor_date', 'm.anchor_date')} "
        "and c.renewed_at <= m.anchor_date)",
    )
    row = {r["kpi"]: r for r in result["headline"]}["on-time renewal"]
    assert row["treated"] == f"{renewed}/{treated}" and treated > 0
    assert row["control"].endswith(f"/{control}")
    assert result["rows"]["deliveries"] == _scalar(url, "select count(*) from messages")

    html = path.read_text()
    needles = _pii_needles(portfolio)
    assert not EMAIL.search(html) and not PHONE.search(html)
    # The report's own words (a "Wilson" interval) are not a customer's name.
    vocabulary = render_report(empty_report_data())
    leaked = [n for n in needles if re.search(rf"\b{re.escape(n)}\b", html) and n not in vocabulary]
    assert not leaked


def test_report_command_writes_the_file_it_names(
    cycle: tuple[Portfolio, UUID, dict[str, Any]], tmp_path: Path
) -> None:
    target = tmp_path / "manager.html"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--from",
            str(AS_OF),
            "--to",
            str(AS_OF),
            "--out",
            str(target),
            "--as-of",
            str(MEASURED_ON),
        ],
    )
    assert result.exit_code == 0, result.output
    assert target.exists() and "on-time" in result.output
    assert f"Report: {target}" in result.output
