"""A cycle split into shards does the same work as the cycle run whole, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from flows.renewal_cycle import renewal_cycle
from tasks.domain.shards import shard_of
from tests.e2e.conftest import AS_OF, Portfolio, wire
from tests.support.postgres import scratch_database

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]

VARYING = ("seconds", "peak_rss_mb", "shards", "headline")
INGEST = ("extract", "validate", "load")


@contextmanager
def _databases(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'whole.db'}", f"sqlite:///{tmp_path / 'split.db'}"
        return
    admin = request.getfixturevalue("pg_admin_dsn")
    with scratch_database(admin) as whole, scratch_database(admin) as split:
        yield whole, split


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return sorted(rows, key=repr)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k not in VARYING}
    out["stages"] = json.loads(json.dumps(summary["stages"], sort_keys=True, default=str))
    return out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_four_shards_send_and_count_exactly_what_the_whole_cycle_does(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with _databases(backend, tmp_path, request) as (whole_url, split_url):
        wire(tmp_path / "whole", whole_url, customers=1200, seed=11)
        whole = renewal_cycle(as_of=AS_OF)
        wire(tmp_path / "split", split_url, customers=1200, seed=11)
        split = renewal_cycle(as_of=AS_OF, shards=4)

        assert split["shards"] == 4
        assert whole["stages"]["dispatch"]["sent"] > 50
        assert _comparable(split) == _comparable(whole)
        messages = "SELECT message_key, customer_key, channel, status, body FROM messages"
        assert _rows(split_url, messages) == _rows(whole_url, messages)
        decisions = "SELECT message_key, stage, outcome, reason, rule_ids FROM decisions"
        assert _rows(split_url, decisions) == _rows(whole_url, decisions)
        segments = (
            "SELECT contract_key, segment, risk_score, risk_band, model_version FROM segment_assignments"
        )
        assert _rows(split_url, segments) == _rows(whole_url, segments)
        finished = _rows(split_url, "SELECT subject_key FROM audit_log WHERE action = 'shard.finished'")
        assert finished == [("1/4",), ("2/4",), ("3/4",), ("4/4",)]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_each_shard_sends_only_to_its_own_customers(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with _databases(backend, tmp_path, request) as (_, split_url):
        wire(tmp_path / "split", split_url, customers=800, seed=5)
        renewal_cycle(as_of=AS_OF, shards=3)
        runs = _rows(
            split_url,
            "SELECT subject_key, details FROM audit_log WHERE action = 'shard.finished'",
        )
        sent = _rows(split_url, "SELECT customer_key FROM messages WHERE status = 'sent'")
    per_shard = {
        key: (json.loads(d) if isinstance(d, str) else d)["stages"]["dispatch"]["sent"] for key, d in runs
    }
    expected = {f"{i + 1}/3": sum(1 for (c,) in sent if shard_of(c, 3) == i) for i in range(3)}
    assert per_shard == expected
    assert all(n > 0 for n in per_shard.values())


@pytest.mark.postgres
def test_shards_on_a_dask_cluster_do_the_same_work_as_the_whole_cycle(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    with (
        _databases("postgres", tmp_path, request) as (whole_url, split_url),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
    ):
        wire(tmp_path / "whole", whole_url, customers=600, seed=13)
        whole = renewal_cycle(as_of=AS_OF)
        monkeypatch.setenv("RENEWALS_DASK_ADDRESS", cluster.scheduler_address)
        wire(tmp_path / "split", split_url, customers=600, seed=13)
        split = renewal_cycle(as_of=AS_OF, shards=3)

        assert len(cluster.scheduler.workers) == 2
        assert _comparable(split) == _comparable(whole)
        messages = "SELECT message_key, customer_key, channel, status FROM messages"
        assert _rows(split_url, messages) == _rows(whole_url, messages)
        finished = _rows(split_url, "SELECT subject_key FROM audit_log WHERE action = 'shard.finished'")
        assert finished == [("1/3",), ("2/3",), ("3/3",)]


@contextmanager
def _on_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, customers: int) -> Iterator[Portfolio]:
    """Wire a SQLite store whose cycles run their shards on a one-worker local Dask cluster."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("RENEWALS_DASK_ADDRESS", cluster.scheduler_address)
        yield wire(tmp_path / "split", f"sqlite:///{tmp_path / 'split.db'}", customers=customers, seed=3)


def test_a_parent_whose_shards_run_on_a_cluster_ingests_in_a_child_process_under_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.objects import StateType

    with _on_a_cluster(tmp_path, monkeypatch, customers=300):
        # With no ingest left in this process, only a child that imports the module afresh can ingest.
        monkeypatch.setattr("flows.renewal_cycle.ingest", None)
        state = renewal_cycle(as_of=AS_OF, shards=2, return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    ingest = {t.name.split()[0]: t.state_type for t in tasks if t.name.split()[0] in INGEST}
    assert ingest == dict.fromkeys(INGEST, StateType.COMPLETED)
    valid = summary["stages"]["validate"]["rows_valid"]["customers"]
    assert 250 < valid == summary["stages"]["load"]["customers"]["inserted"]
    assert summary["stages"]["dispatch"]["sent"] > 0
    assert {"extract", "validate", "load"} <= set(summary["seconds"])


def test_a_bad_source_file_stops_a_cycle_that_ingests_apart_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    with _on_a_cluster(tmp_path, monkeypatch, customers=200) as portfolio:
        path = portfolio.source_dir / "contracts.csv"
        pd.read_csv(path, dtype=str).drop(columns=["term_end"]).to_csv(path, index=False)
        state = renewal_cycle(as_of=AS_OF, shards=2, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"contracts\.csv: missing required column term_end"):
        state.result()
    assert not list(portfolio.outbox_dir.glob("*.jsonl"))
    assert _rows(portfolio.database_url, "SELECT status FROM cycles") == [("failed",)]
    assert _rows(portfolio.database_url, "SELECT count(*) FROM messages") == [(0,)]
