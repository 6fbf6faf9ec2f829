"""The renewal-cycle flow end to end under prefect_test_harness, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

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
from flows.consent_audit import consent_audit
from flows.renewal_cycle import renewal_cycle
from tasks.domain.contract import Entity
from tasks.store.repository import utcnow
from tests.e2e.conftest import AS_OF, Portfolio, run_logs, wire

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]


def _run(**params: Any) -> tuple[dict[str, Any], UUID]:
    state = renewal_cycle(as_of=AS_OF, return_state=True, **params)
    summary = state.result()
    return summary, state.state_details.flow_run_id


def _outbox_keys(portfolio: Portfolio) -> list[str]:
    keys = []
    for path in portfolio.outbox_dir.glob("*.jsonl"):
        keys += [json.loads(line)["message_key"] for line in path.read_text().splitlines() if line]
    return keys


def _query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text(sql)))
    engine.dispose()
    return rows


def _pii_needles(portfolio: Portfolio) -> set[str]:
    customers = portfolio.frames[Entity.CUSTOMERS]
    assert isinstance(customers, pd.DataFrame)
    needles: set[str] = set()
    for col in ("email", "first_name", "last_name"):
        needles |= {v for v in customers[col] if isinstance(v, str) and len(v) >= 4}
    return needles


PHONE = re.compile(r"\+\d{9,15}")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def _run_texts(flow_run_id: UUID) -> list[str]:
    logs = run_logs(flow_run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        run = client.read_flow_run(flow_run_id)
    texts = list(logs)
    texts += [json.dumps(a.data, default=str) if not isinstance(a.data, str) else a.data for a in artifacts]
    texts.append(json.dumps(run.parameters, default=str))
    texts.append(run.name)
    assert logs, "the run should have sent logs to the API"
    assert artifacts, "the run should have published its summary artifact"
    return texts


@pytest.mark.postgres
def test_cycle_twice_on_postgres_sends_each_message_once(tmp_path: Path, pg_url: str) -> None:
    portfolio = wire(tmp_path, pg_url)
    first, first_run = _run()
    assert first["status"] == "completed"
    stages = first["stages"]
    assert stages["validate"]["rows_quarantined"], "the demo data carries dirty rows"
    assert stages["load"]["customers"]["inserted"] > 1000
    assert stages["plan"]["new"] > 0
    assert stages["dispatch"]["sent"] > 0
    sent_keys = _outbox_keys(portfolio)
    assert len(sent_keys) == stages["dispatch"]["sent"] == len(set(sent_keys))

    second, _ = _run()
    assert second["stages"]["plan"]["new"] == 0
    assert second["stages"]["dispatch"]["sent"] == 0
    assert second["stages"]["plan"]["already_handled"] == stages["plan"]["candidates"]
    assert second["headline"].startswith("Nothing new to send")
    assert sorted(_outbox_keys(portfolio)) == sorted(sent_keys)

    (dupes,) = _query(pg_url, "select count(*) - count(distinct message_key) from messages")
    assert dupes[0] == 0
    sent_rows = _query(pg_url, "select count(*) from messages where status = 'sent'")
    assert sent_rows[0][0] == len(sent_keys)
    # Every sent message has exactly one decision, and it allowed the send.
    (bad,) = _query(
        pg_url,
        "select count(*) from messages m where m.status = 'sent' and (select count(*) from decisions d "
        "where d.message_key = m.message_key and d.outcome = 'allowed') <> 1",
    )
    assert bad[0] == 0
    (quarantined,) = _query(
        pg_url, "select count(distinct (source, line)) from quarantine where cycle_id = 1"
    )
    assert quarantined[0] == sum(stages["validate"]["rows_quarantined"].values())

    # The run's decisions and sends carry the run's clock (pinned to today), not the as-of day.
    today = utcnow().date()
    audit_summary = consent_audit(start=today, end=today + timedelta(days=1))
    assert audit_summary["decision_groups"] > 0, "the audit period holds the run's decisions"
    assert set(audit_summary["anomalies"].values()) == {0}, audit_summary["anomalies"]

    texts = _run_texts(first_run)
    needles = _pii_needles(portfolio)
    assert len(needles) > 1000
    bodies = _query(pg_url, "select body from messages where body is not null limit 50")
    for blob in texts:
        assert not PHONE.search(blob), blob
        assert not EMAIL.search(blob), blob
        leaked = [n for n in needles if n in blob]
        assert not leaked, f"personal data in Prefect: {leaked[:3]}"
        for (body,) in bodies:
            assert body not in blob


def test_cycle_on_sqlite_with_a_dry_run_first_sends_nothing_then_everything(tmp_path: Path) -> None:
    portfolio = wire(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", customers=800, seed=3)
    dry, _ = _run(dry_run=True)
    assert dry["stages"]["dispatch"] == {"skipped": True}
    assert dry["headline"].startswith("Dry run")
    assert not _outbox_keys(portfolio)
    real, _ = _run()
    assert real["stages"]["plan"]["new"] == dry["stages"]["plan"]["new"] > 0
    assert real["stages"]["dispatch"]["sent"] == len(_outbox_keys(portfolio)) > 0

    sent_to = _query(
        f"sqlite:///{tmp_path / 'store.db'}", "select customer_key from messages where status = 'sent'"
    )
    result = CliRunner().invoke(app, ["consent", "explain", sent_to[0][0]])
    assert result.exit_code == 0, result.output
    assert "plan decision" in result.output and "policy version gate-v2.0+" in result.output
    assert not EMAIL.search(result.output)


def test_a_missing_column_stops_the_run_before_anything_is_sent(tmp_path: Path) -> None:
    portfolio = wire(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", customers=300, seed=5)
    path = portfolio.source_dir / "contracts.csv"
    pd.read_csv(path, dtype=str).drop(columns=["term_end"]).to_csv(path, index=False)
    state = renewal_cycle(as_of=AS_OF, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"contracts\.csv: missing required column term_end"):
        state.result()
    assert not _outbox_keys(portfolio)
    rows = _query(f"sqlite:///{tmp_path / 'store.db'}", "select status, summary from cycles")
    assert rows[0][0] == "failed"
    assert "term_end" in rows[0][1]
