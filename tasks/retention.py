"""Retention purge: delete message content and contact details past retention; keep what the law needs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection, func, not_, null, or_, select, update

from tasks._prefect import STEP
from tasks.domain.rules import RetentionPolicy
from tasks.dsr import KEPT_FOR, erase_customer
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.repository import audit, utcnow


def purge(
    conn: Connection, policy: RetentionPolicy, hash_key: bytes, now: datetime, dsr_dir: Path
) -> dict[str, Any]:
    """Apply every retention period once; return how many records each step touched."""
    m, q = s.messages, s.quarantine
    content_cutoff = now - timedelta(days=policy.message_content_days)
    stamp = f"content purged {now:%Y-%m-%d} after {policy.message_content_days} days; ledger kept: "
    purged_messages = conn.execute(
        update(m)
        .where(
            or_(m.c.subject.is_not(None), m.c.body.is_not(None), m.c.body_html.is_not(None)),
            func.coalesce(m.c.sent_at, m.c.planned_at) < content_cutoff,
        )
        .values(
            subject=None, body=None, body_html=None, retention_basis=stamp + "Art. 17(3)(e)", updated_at=now
        )
    ).rowcount
    purged_quarantine = conn.execute(
        update(q)
        .where(q.c.raw.is_not(None), q.c.created_at < now - timedelta(days=policy.quarantine_raw_days))
        # SQL NULL, not the JSON literal null that SQLAlchemy writes for None.
        .values(raw=null())
    ).rowcount

    ct = s.contracts
    ended_long_ago = now.date() - timedelta(days=policy.inactive_contact_days)
    still_customers = select(ct.c.customer_key).where(
        or_(ct.c.status == "active", ct.c.term_end >= ended_long_ago)
    )
    cust = s.customers
    stale = [
        str(k)
        for (k,) in conn.execute(
            select(cust.c.customer_key).where(
                cust.c.erased_at.is_(None),
                not_(cust.c.customer_key.in_(still_customers)),
                cust.c.customer_key.in_(select(ct.c.customer_key)),
            )
        )
    ]
    for key in stale:
        erase_customer(conn, key, hash_key)

    tagged_consents = conn.execute(
        update(s.consents)
        .where(s.consents.c.retention_basis.is_(None))
        .values(retention_basis=KEPT_FOR["consents"])
    ).rowcount
    tagged_suppressions = conn.execute(
        update(s.suppressions)
        .where(s.suppressions.c.retention_basis.is_(None))
        .values(retention_basis=KEPT_FOR["suppressions"])
    ).rowcount
    removed_exports = 0
    if dsr_dir.is_dir():
        cutoff = (now - timedelta(days=policy.dsr_export_days)).timestamp()
        for path in dsr_dir.glob("dsr-*.json"):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed_exports += 1
    result = {
        "message_contents_purged": purged_messages,
        "quarantine_rows_purged": purged_quarantine,
        "inactive_customers_erased": len(stale),
        "consents_tagged": tagged_consents,
        "suppressions_tagged": tagged_suppressions,
        "dsr_exports_removed": removed_exports,
        "policy": {
            "message_content_days": policy.message_content_days,
            "quarantine_raw_days": policy.quarantine_raw_days,
            "inactive_contact_days": policy.inactive_contact_days,
        },
    }
    audit(conn, "retention.purged", details=result)
    return result


@task(name="retention-purge", **STEP)
def purge_task(as_of: str | None = None) -> dict[str, Any]:
    """Apply the retention periods of config/retention.yaml."""
    rt = get_runtime()
    now = pd.Timestamp(as_of, tz="UTC").to_pydatetime() if as_of else utcnow()
    with rt.engine.begin() as conn:
        result = purge(
            conn,
            rt.retention,
            rt.settings.pii_hash_key.get_secret_value().encode(),
            now,
            rt.settings.home / "dsr",
        )
    get_run_logger().info("retention purge: %s", {k: v for k, v in result.items() if k != "policy"})
    return result
