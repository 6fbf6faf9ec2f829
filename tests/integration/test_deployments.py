"""prefect.yaml: every entrypoint imports, every schedule parses, and `prefect deploy --all` succeeds."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from prefect import Flow
from prefect.server.schemas.schedules import CronSchedule

from tests.support.factories import ROOT
from tests.support.prefect_server import prefect_server

SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS: list[dict[str, Any]] = SPEC["deployments"]


def _flow(entrypoint: str) -> Flow[Any, Any]:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow)
    return flow


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_fit_the_flow(deployment: dict[str, Any]) -> None:
    flow = _flow(deployment["entrypoint"])
    if deployment.get("parameters") is not None:
        flow.validate_parameters(deployment["parameters"])


@pytest.mark.parametrize(
    "deployment", [d for d in DEPLOYMENTS if d.get("schedules")], ids=lambda d: d["name"]
)
def test_every_schedule_parses_in_its_time_zone(deployment: dict[str, Any]) -> None:
    for entry in deployment["schedules"]:
        schedule = CronSchedule(cron=entry["cron"], timezone=entry["timezone"])
        runs = asyncio.run(schedule.get_dates(n=2, start=datetime(2026, 11, 22, tzinfo=UTC)))
        assert len(runs) == 2
        local = runs[0].astimezone(ZoneInfo(entry["timezone"]))
        minute, hour = entry["cron"].split()[:2]
        assert local.minute == int(minute)
        if hour.isdigit():
            assert local.hour == int(hour)


def test_deployments_cover_every_configured_market_once() -> None:
    covered = [
        m
        for d in DEPLOYMENTS
        if d["entrypoint"].startswith("flows/renewal_cycle.py")
        for m in d["parameters"]["markets"]
    ]
    markets = sorted(p.stem for p in (ROOT / "config/markets").glob("*.yaml"))
    assert sorted(covered) == markets


@pytest.mark.timeout(600)
def test_prefect_deploy_all_registers_every_deployment(tmp_path: Path) -> None:
    with prefect_server(tmp_path / "prefect") as api:
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "RENEWALS_PROJECT_DIR": str(ROOT),
        }
        prefect = [sys.executable, "-m", "prefect"]
        subprocess.run(
            [*prefect, "work-pool", "create", "renewals", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
        )
        done = subprocess.run(
            [*prefect, "--no-prompt", "deploy", "--all"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        found = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        assert sorted(d["name"] for d in found) == sorted(d["name"] for d in DEPLOYMENTS)
        zones = {e["timezone"] for d in DEPLOYMENTS for e in d.get("schedules", [])}
        for dep in found:
            assert all(entry["schedule"]["timezone"] in zones for entry in dep["schedules"])
            assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
                "directory"
            ] == str(ROOT)
