"""Shared fixtures: isolated settings, SQLite and PostgreSQL stores with the real migrations."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Isolate Prefect and Renewals from the developer's own state before either is imported.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="renewals-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in list(os.environ):
    if _name.startswith("RENEWALS_") and _name != "RENEWALS_TEST_DATABASE_URL":
        del os.environ[_name]

from sqlalchemy import Engine  # noqa: E402

from tasks.store.engine import make_engine  # noqa: E402
from tasks.store.migrate import upgrade  # noqa: E402
from tests.support.postgres import NoPostgres, postgres_server, scratch_database  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """Return whether the suite runs in CI, where a missing PostgreSQL must fail, never skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """Yield an admin DSN of a running PostgreSQL (found or started for this session)."""
    try:
        with postgres_server() as dsn:
            yield dsn
    except (NoPostgres, OSError, Exception) as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI=true but unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture
def pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """Yield the URL of a fresh, empty PostgreSQL database (dropped afterwards)."""
    with scratch_database(pg_admin_dsn) as url:
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """Yield an engine on a fresh PostgreSQL database migrated to head."""
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """Yield an engine on a fresh SQLite file migrated to head."""
    engine = make_engine(f"sqlite:///{tmp_path / 'renewals.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Yield a migrated engine on each supported backend in turn."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]
