"""End-to-end fixtures: a Prefect test harness and a store plus source directory wired through settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from prefect.logging.handlers import APILogWorker
from prefect.testing.utilities import prefect_test_harness

from config.loader import load_markets
from tasks.domain.contract import Entity
from tasks.runtime import reset_runtime
from tasks.sources.demo_data import generate_portfolio, write_portfolio
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tests.conftest import ROOT

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
