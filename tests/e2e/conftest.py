"""End-to-end fixtures: a Prefect test harness and a store plus source directory wired through settings."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import Log
from prefect.logging.handlers import APILogWorker
from prefect.testing.utilities import prefect_test_harness

from config.loader import load_markets
from tasks.domain.contract import Entity
from tasks.runtime import reset_runtime
from tasks.sources.demo_data import generate_portfolio, write_portfolio
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tests.conftest import ROOT
from tests.support.clock import pinned_clock

AS_OF = date(2026, 11, 22)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Run flows against a temporary Prefect API for the whole session."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


@dataclass
class Portfolio:
    """A generated demo portfolio on disk and the store it is loaded into."""

    source_dir: Path
    outbox_dir: Path
    database_url: str
    frames: dict[Entity, object]


def wire(tmp_path: Path, database_url: str, customers: int = 1500, seed: int = 7) -> Portfolio:
    """Generate a portfolio, migrate the store and point the settings at both."""
    frames = generate_portfolio(customers, seed, AS_OF, load_markets(ROOT / "config"))
    source = tmp_path / "source"
    write_portfolio(frames, source, "csv")
    outbox = tmp_path / "outbox"
    os.environ["RENEWALS_DATABASE_URL"] = database_url
    os.environ["RENEWALS_SOURCE_DIR"] = str(source)
    os.environ["RENEWALS_OUTBOX_DIR"] = str(outbox)
    os.environ["RENEWALS_HOME"] = str(tmp_path / "home")
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    reset_runtime()
    return Portfolio(source, outbox, database_url, dict(frames))


@pytest.fixture(autouse=True)
def clock_at_ten() -> Iterator[None]:
    """Judge send windows at 10:00 UTC today, so reruns and sharded runs decide as the first run did."""
    with pinned_clock(10):
        yield


@pytest.fixture
def unwire() -> Iterator[None]:
    """Drop the environment and runtime a test wired up."""
    yield
    for name in ("RENEWALS_DATABASE_URL", "RENEWALS_SOURCE_DIR", "RENEWALS_OUTBOX_DIR", "RENEWALS_HOME"):
        os.environ.pop(name, None)
    reset_runtime()


def flush_logs() -> None:
    """Push buffered run logs to the API so tests can read them."""
    APILogWorker.drain_all(timeout=10)


def run_logs(flow_run_id: UUID, timeout: float = 120.0) -> list[str]:
    """Return a flow run's log messages once its closing line has reached the API (or `timeout` passed)."""
    flush_logs()
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs: list[Log] = []
            while page := client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(logs),
            ):
                logs += page
            closed = any(
                log.task_run_id is None and log.message.startswith("Finished in state") for log in logs
            )
            if closed or time.monotonic() > deadline:
                return [log.message for log in logs]
            time.sleep(0.2)
