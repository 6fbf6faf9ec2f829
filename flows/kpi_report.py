"""Weekly KPI report: renewal, repayment and reactivation uplift, reward ROI and channel health, as HTML."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.kpi_report import kpi_report_task

# A quarter of cycles: long enough for annual terms reminded at T-30 to mature and show an uplift.
DEFAULT_DAYS = 91


def default_period(today: date, days: int = DEFAULT_DAYS) -> tuple[date, date]:
    """Return the period a scheduled report covers: the `days` days up to and including today."""
    return today - timedelta(days=days - 1), today


@flow(name="kpi-report", flow_run_name="kpi-report {start}..{end}")
def kpi_report(
    start: date | None = None,
    end: date | None = None,
    markets: list[str] | None = None,
    as_of: date | None = None,
    out: str | None = None,
    locale: str = "en",
) -> dict[str, Any]:
    """Report the KPIs of the cycles run in [start, end] (default: the last 91 days), measured on `as_of`."""
    protect_run({"start": start, "end": end, "markets": markets, "as_of": as_of, "out": out})
    today = datetime.now(UTC).date()
    first, last = default_period(today)
    return kpi_report_task(
        start or first, end or last, as_of or today, [m.upper() for m in markets or []], out, locale
    )
