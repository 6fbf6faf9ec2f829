"""A sharded cycle on a real Prefect server: the shards run as deployment runs on two process workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from config.loader import load_markets
from tasks.domain.shards import shard_of
from tasks.sources.demo_data import generate_portfolio, write_portfolio
from tests.support.clock import pinned_clock
from tests.support.factories import ROOT
from tests.support.postgres import scratch_database
from tests.support.prefect_server import prefect_server

pytestmark = pytest.mark.postgres

AS_OF = "2026-11-22"
VARYING = ("seconds", "peak_rss_mb", "shards", "headline")


def _prefect(env: dict[str, str], *args: str, timeout: float = 300) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@contextmanager
def _workers(env: dict[str, str], count: int, logs: Path) -> Iterator[None]:
    procs = []
    for i in range(count):
        log = (logs / f"worker-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "renewals", "--name", f"w{i}"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        yield
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _cycle(env: dict[str, str], *args: str) -> dict[str, Any]:
    migrated = subprocess.run(
        [sys.executable, "-m", "flows.cli", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "renewal-cycle", "--as-of", AS_OF, "--json", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return sorted(rows, key=repr)


@pytest.mark.timeout(1200)
def test_workers_share_the_shards_and_the_summary_equals_the_unsharded_run(
    tmp_path: Path, pg_admin_dsn: str
) -> None:
    from datetime import date

    source = tmp_path / "source"
    frames = generate_portfolio(900, 3, date.fromisoformat(AS_OF), load_markets(ROOT / "config"))
    write_portfolio(frames, source, "csv")
    with (
        # The workers' flow runs are processes of their own: the pin reaches them through the environment.
        pinned_clock(10) as ten,
        prefect_server(tmp_path / "prefect") as api,
        scratch_database(pg_admin_dsn) as whole_url,
        scratch_database(pg_admin_dsn) as split_url,
    ):
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RENEWALS_")},
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "RENEWALS_PROJECT_DIR": str(ROOT),
            "RENEWALS_SOURCE_DIR": str(source),
        }
        _prefect(base, "work-pool", "create", "renewals", "--type", "process")
        _prefect(base, "--no-prompt", "deploy", "--name", "shards")
        whole = _cycle(
            {
                **base,
                "RENEWALS_DATABASE_URL": whole_url,
                "RENEWALS_HOME": str(tmp_path / "whole"),
                "RENEWALS_OUTBOX_DIR": str(tmp_path / "whole-outbox"),
            }
        )
        split_env = {
            **base,
            "RENEWALS_DATABASE_URL": split_url,
            "RENEWALS_HOME": str(tmp_path / "split"),
            "RENEWALS_OUTBOX_DIR": str(tmp_path / "split-outbox"),
            "RENEWALS_SHARD_DEPLOYMENT": "renewal-cycle-shard/shards",
        }
        with _workers(split_env, 2, tmp_path):
            split = _cycle(split_env, "--shards", "4")
            workers = httpx.post(f"{api}/work_pools/renewals/workers/filter", json={}, timeout=30).json()
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"name": {"like_": "renewal-cycle-shard"}}},
            timeout=30,
        ).json()

        assert sorted(w["name"] for w in workers) == ["w0", "w1"]
        assert sorted(r["state"]["type"] for r in runs) == ["COMPLETED"] * 4
        assert {r["work_pool_name"] for r in runs} == {"renewals"}
        assert {r["parameters"]["shard_index"] for r in runs} == {0, 1, 2, 3}
        assert split["shards"] == 4 and whole["stages"]["dispatch"]["sent"] > 20
        assert {k: v for k, v in split.items() if k not in VARYING} == {
            k: v for k, v in whole.items() if k not in VARYING
        }
        messages = "SELECT message_key, customer_key, channel, status FROM messages"
        assert _rows(split_url, messages) == _rows(whole_url, messages)
        ((first, last),) = _rows(split_url, "SELECT min(sent_at), max(sent_at) FROM messages")
        assert ten <= first <= last < ten + timedelta(hours=1), "the shards ran on the pinned clock"
        finished = _rows(
            split_url, "SELECT subject_key, details FROM audit_log WHERE action = 'shard.finished'"
        )
        sent = _rows(split_url, "SELECT customer_key FROM messages WHERE status = 'sent'")
        for label, details in finished:
            index = int(label.split("/")[0]) - 1
            stats = details if isinstance(details, dict) else json.loads(details)
            assert stats["stages"]["dispatch"]["sent"] == sum(1 for (c,) in sent if shard_of(c, 4) == index)
