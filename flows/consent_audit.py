"""Monthly consent audit: decisions per market, purpose, channel and reason; anomalies that must be zero."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.consent_audit import consent_audit_task


def previous_month(today: date) -> tuple[date, date]:
    """Return the first day of last month and the first day of this month."""
    first = today.replace(day=1)
    start = (
        first.replace(year=first.year - 1, month=12)
        if first.month == 1
        else first.replace(month=first.month - 1)
    )
    return start, first


@flow(name="consent-audit", flow_run_name="consent-audit {start}..{end}")
def consent_audit(start: date | None = None, end: date | None = None) -> dict[str, Any]:
    """Audit consent decisions in [start, end) (default: last calendar month)."""
    protect_run({"start": start, "end": end})
    default_start, default_end = previous_month(datetime.now(UTC).date())
    begin = datetime.combine(start or default_start, datetime.min.time(), tzinfo=UTC)
    finish = datetime.combine(end or default_end, datetime.min.time(), tzinfo=UTC)
    return consent_audit_task(begin, finish)
