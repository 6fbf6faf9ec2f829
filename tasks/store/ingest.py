"""Chunk-wise writes of the staged load: the same results as the whole-frame syncs, in bounded memory."""

from __future__ import annotations

import uuid
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection, func, select

from tasks.domain.contract import CONTRACT, Entity
from tasks.store import schema as s
from tasks.store.bulk import SyncStats, copy_frame, insert_frame, read_frame, upsert_frame
from tasks.store.repository import ENTITY_TABLES

CONSENT_KEY = ["customer_key", "channel", "purpose", "controller"]


def upsert_customers(conn: Connection, frame: pd.DataFrame, now: datetime) -> SyncStats:
    """Upsert one chunk of customers; erased customers are never restored by a re-import."""
    df = frame.rename(columns={"phone": "phone_e164"}).assign(loaded_at=now)
    return upsert_frame(conn, s.customers, df, ["customer_key"], only_where_null="erased_at")


def upsert_entity(conn: Connection, entity: Entity, frame: pd.DataFrame, now: datetime) -> SyncStats:
    """Upsert one chunk of contracts, instalments or activity by key and row hash."""
    table = ENTITY_TABLES[entity]
    return upsert_frame(conn, table, frame.assign(loaded_at=now), list(CONTRACT[entity].key))


def last_consent_id(conn: Connection) -> int:
    """Return the highest consent id so far (0 when there are none)."""
    return int(conn.execute(select(func.coalesce(func.max(s.consents.c.consent_id), 0))).scalar_one())


def append_consents_upto(
    conn: Connection, frame: pd.DataFrame, controller: str, now: datetime, upto: int
) -> SyncStats:
    """Add one chunk of CRM consent records that differ from the last CRM import of the same key.

    Records are compared with the store as it was before the load began (consent ids up to `upto`),
    so chunks counted one by one give the counts of `append_consents` on the whole frame.
    """
    if frame.empty:
        return SyncStats(0, 0, 0)
    df = frame.copy()
    df["controller"] = df["controller"].fillna("").replace("", controller)
    df["lawful_basis"] = df["lawful_basis"].fillna("consent")
    if conn.dialect.name != "postgresql":
        return _append_consents_frame(conn, df, now, upto)
    tmp = f"tmp_consents_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(f'"{c}"' for c in df.columns)
    conn.exec_driver_sql(f"CREATE TEMP TABLE {tmp} AS SELECT {cols} FROM consents WITH NO DATA")
    # The ordinal keeps the chunk's order in the consent ids, which break ties between records.
    conn.exec_driver_sql(f"ALTER TABLE {tmp} ADD COLUMN ordinal bigserial")
    copy_frame(conn, tmp, s.consents, df)
    keys = ", ".join(f"c.{k}" for k in CONSENT_KEY)
    match = " AND ".join(f"l.{k} = s.{k}" for k in CONSENT_KEY)
    source = ", ".join(f's."{c}"' for c in df.columns)
    counts = conn.exec_driver_sql(
        f"WITH last AS (SELECT DISTINCT ON ({keys}) {keys}, c.row_hash FROM consents c "
        f"WHERE c.origin = 'crm' AND c.consent_id <= %(upto)s "
        f"AND c.customer_key IN (SELECT customer_key FROM {tmp}) ORDER BY {keys}, c.consent_id DESC), "
        f"cmp AS (SELECT s.*, l.row_hash AS last_hash FROM {tmp} s LEFT JOIN last l ON {match}), "
        f"ins AS (INSERT INTO consents ({cols}, origin, recorded_at) "
        f"SELECT {source}, 'crm', %(now)s FROM cmp s WHERE s.last_hash IS NULL OR s.last_hash <> s.row_hash "
        "ORDER BY s.ordinal) "
        "SELECT count(*) FILTER (WHERE last_hash IS NULL), "
        "count(*) FILTER (WHERE last_hash IS NOT NULL AND last_hash <> row_hash) FROM cmp",
        {"upto": upto, "now": now},
    ).one()
    conn.exec_driver_sql(f"DROP TABLE {tmp}")
    fresh, changed = int(counts[0]), int(counts[1])
    return SyncStats(fresh, changed, len(df) - fresh - changed)


def _append_consents_frame(conn: Connection, df: pd.DataFrame, now: datetime, upto: int) -> SyncStats:
    c = s.consents
    last = read_frame(
        conn,
        select(*(c.c[k] for k in CONSENT_KEY), c.c.row_hash, c.c.consent_id).where(
            c.c.origin == "crm", c.c.consent_id <= upto
        ),
    )
    if not last.empty:
        last = last.sort_values("consent_id").drop_duplicates(CONSENT_KEY, keep="last")
    merged = df.merge(last[CONSENT_KEY + ["row_hash"]], on=CONSENT_KEY, how="left", suffixes=("", "_last"))
    fresh = merged["row_hash_last"].isna()
    changed = ~fresh & (merged["row_hash"] != merged["row_hash_last"])
    insert_frame(conn, c, df.loc[(fresh | changed).to_numpy()].assign(origin="crm", recorded_at=now))
    return SyncStats(int(fresh.sum()), int(changed.sum()), len(df) - int(fresh.sum()) - int(changed.sum()))
