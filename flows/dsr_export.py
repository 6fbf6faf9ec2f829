"""Answer a data-subject access request (GDPR Art. 15): everything held about one customer, as JSON."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.dsr import export_task


@flow(name="dsr-export", flow_run_name="dsr-export {customer_key}")
def dsr_export(customer_key: str) -> dict[str, Any]:
    """Export one customer's data to a file outside Prefect and record the request and its deadline."""
    protect_run({"customer_key": customer_key})
    return export_task(customer_key)
