"""The report in headless Chromium: every chart lays out with a size, the page fetches nothing, it prints."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.reporting.report import CHART_NAMES, write_report
from tests.support.browser import DevTools, ensure_chromium
from tests.unit.test_report import empty_report_data, synthetic_report_data

pytestmark = pytest.mark.e2e

# Evaluated in the page over DevTools, so the report itself stays free of scripts.
CHART_BOXES = """JSON.stringify([...document.querySelectorAll("svg.chart")].map((svg) => {
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll("rect, path, line, circle, text")];
  return {
    name: svg.dataset.chart,
    width: box.width,
    height: box.height,
    drawn: marks.filter((m) => {
      const b = m.getBoundingClientRect();
      return b.width > 0 || b.height > 0;
    }).length,
    noData: svg.textContent.includes("no data for this period"),
  };
}))"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    chromium = ensure_chromium()
    with DevTools(chromium, tmp_path_factory.mktemp("chromium") / "profile") as devtools:
        yield devtools


def _charts(browser: DevTools, session: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(browser.evaluate(session, CHART_BOXES))}


def test_every_chart_renders_with_a_size_and_the_page_fetches_nothing(
    browser: DevTools, tmp_path: Path
) -> None:
    report = write_report(synthetic_report_data(), tmp_path / "report.html")
    session = browser.open(report.as_uri())
    charts = _charts(browser, session)
    assert sorted(charts) == sorted(CHART_NAMES)
    for name, chart in charts.items():
        assert chart["width"] > 300 and chart["height"] > 80, name
        assert chart["drawn"] >= 10 and not chart["noData"], name
    assert browser.requests(session) == [report.as_uri()]


def test_empty_report_shows_a_no_data_panel_for_each_chart(browser: DevTools, tmp_path: Path) -> None:
    report = write_report(empty_report_data(), tmp_path / "report.html")
    session = browser.open(report.as_uri())
    charts = _charts(browser, session)
    assert sorted(charts) == sorted(CHART_NAMES)
    for name, chart in charts.items():
        assert chart["width"] > 300 and chart["height"] > 50 and chart["noData"], name
    assert browser.requests(session) == [report.as_uri()]


def test_the_fetch_check_notices_a_page_that_loads_an_outside_asset(
    browser: DevTools, tmp_path: Path
) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><title>x</title><img src="https://cdn.example.com/logo.png" alt="">')
    session = browser.open(page.as_uri())
    assert "https://cdn.example.com/logo.png" in browser.requests(session)


def test_report_prints_to_a_multi_page_pdf_and_screenshots(browser: DevTools, tmp_path: Path) -> None:
    report = write_report(synthetic_report_data(), tmp_path / "report.html")
    session = browser.open(report.as_uri(), width=1100, height=900)
    pdf = browser.pdf(session)
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 3
    png = browser.screenshot(session)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1100
    # The whole page, far taller than the window: every section is in the picture.
    assert int.from_bytes(png[20:24], "big") > 3000


def test_missing_chromium_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import browser as support

    monkeypatch.setattr(support, "_found", lambda: None)
    monkeypatch.setattr(support.os, "geteuid", lambda: 1000)
    support._install.cache_clear()
    try:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception, match="not run as root"):
            support.ensure_chromium()
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="required under CI=true"):
            support.ensure_chromium()
    finally:
        support._install.cache_clear()
