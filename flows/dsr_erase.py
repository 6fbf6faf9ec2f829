"""Answer an erasure request (GDPR Art. 17): remove personal data, keep what the law needs, suppress."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks._prefect import protect_run
from tasks.dsr import erase_task


@flow(name="dsr-erase", flow_run_name="dsr-erase {customer_key}")
def dsr_erase(customer_key: str) -> dict[str, Any]:
    """Erase one customer's personal data and record the request and its deadline."""
    protect_run({"customer_key": customer_key})
    return erase_task(customer_key)
