"""Queries and bulk writes the pipeline steps need; every per-customer path is a batch."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from tasks.domain.consent import latest_consents
from tasks.domain.contract import CONTRACT, Entity
from tasks.domain.segmentation import OPEN
from tasks.domain.shards import Shard
from tasks.store import schema as s
from tasks.store.bulk import (
    SyncStats,
    executemany,
    insert_frame,
    insert_new,
    read_frame,
    sync_frame,
    update_frame,
)
from tasks.store.columns import is_in, read_columns
from tasks.store.sharding import in_shard

ENTITY_TABLES = {
    Entity.CUSTOMERS: s.customers,
    Entity.CONTRACTS: s.contracts,
    Entity.INSTALMENTS: s.instalments,
    Entity.ACTIVITY: s.activity,
    Entity.CONSENTS: s.consents,
}


# Zero except in benchmarks (`shift_clock`); never read from settings or the environment, so no
# deployment can move the clock the consent gate's send windows are judged by.
_clock_offset = [timedelta(0)]


def utcnow() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC) + _clock_offset[0]


def shift_clock(offset: timedelta) -> None:
    """Make `utcnow` in this process run `offset` ahead of the wall clock (benchmarks pin the hour)."""
    _clock_offset[0] = offset


def audit(
    conn: Connection,
    action: str,
    *,
    actor: str = "renewals",
    cycle_id: int | None = None,
    subject_type: str | None = None,
    subject_key: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry to the audit log."""
    conn.execute(
        insert(s.audit_log).values(
            at=utcnow(),
            actor=actor,
            action=action,
            cycle_id=cycle_id,
            subject_type=subject_type,
            subject_key=subject_key,
            details=details or {},
        )
    )


def insert_ignore(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """Insert one row unless its key exists (safe when two processes race); return whether it was new."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        result = conn.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        result = conn.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)


def known_keys(conn: Connection, entity: Entity) -> pd.Index:
    """Return the keys of `entity` already in the store."""
    table = ENTITY_TABLES[entity]
    key = CONTRACT[entity].key[0]
    frame = read_frame(conn, select(table.c[key]))
    keys: pd.Index = pd.Index(frame[key].dropna().astype(str).unique())
    return keys


# --- load -----------------------------------------------------------------------------------------


def _with_loaded_at(frame: pd.DataFrame, now: datetime) -> pd.DataFrame:
    return frame.assign(loaded_at=now)


def sync_customers(conn: Connection, frame: pd.DataFrame, now: datetime) -> SyncStats:
    """Upsert customers; erased customers are never restored by a re-import."""
    df = frame.rename(columns={"phone": "phone_e164"})
    return sync_frame(
        conn, s.customers, _with_loaded_at(df, now), ["customer_key"], only_where_null="erased_at"
    )


def sync_entity(conn: Connection, entity: Entity, frame: pd.DataFrame, now: datetime) -> SyncStats:
    """Upsert contracts, instalments or activity by key and row hash."""
    table = ENTITY_TABLES[entity]
    return sync_frame(conn, table, _with_loaded_at(frame, now), list(CONTRACT[entity].key))


def append_consents(conn: Connection, frame: pd.DataFrame, controller: str, now: datetime) -> SyncStats:
    """Add CRM consent records that differ from the last CRM import of the same key; keep history."""
    if frame.empty:
        return SyncStats(0, 0, 0)
    df = frame.copy()
    df["controller"] = df["controller"].fillna("").replace("", controller)
    df["lawful_basis"] = df["lawful_basis"].fillna("consent")
    key = ["customer_key", "channel", "purpose", "controller"]
    last = read_frame(
        conn,
        select(*(s.consents.c[k] for k in key), s.consents.c.row_hash, s.consents.c.consent_id).where(
            s.consents.c.origin == "crm"
        ),
    )
    if not last.empty:
        last = last.sort_values("consent_id").drop_duplicates(key, keep="last")[key + ["row_hash"]]
    merged = df.merge(last, on=key, how="left", suffixes=("", "_last"))
    fresh = (
        merged["row_hash_last"].isna() if "row_hash_last" in merged else pd.Series(True, index=merged.index)
    )
    changed = ~fresh & (merged["row_hash"] != merged.get("row_hash_last"))
    new_rows = df.loc[(fresh | changed).to_numpy()].assign(origin="crm", recorded_at=now)
    insert_frame(conn, s.consents, new_rows)
    return SyncStats(int(fresh.sum()), int(changed.sum()), len(df) - int(fresh.sum()) - int(changed.sum()))


def insert_quarantine(conn: Connection, frame: pd.DataFrame, cycle_id: int, now: datetime) -> int:
    """Store quarantined rows with their file, line, field and reason."""
    if frame.empty:
        return 0
    return insert_frame(conn, s.quarantine, frame.assign(cycle_id=cycle_id, created_at=now))


# --- cycles ---------------------------------------------------------------------------------------


def create_cycle(
    conn: Connection,
    *,
    as_of: date,
    markets: Sequence[str],
    playbook: str,
    playbook_version: int,
    dry_run: bool,
    flow_run_id: str | None,
) -> int:
    """Open a cycle row and return its id."""
    result = conn.execute(
        insert(s.cycles)
        .values(
            flow_run_id=flow_run_id,
            as_of=as_of,
            markets=",".join(markets),
            playbook=playbook,
            playbook_version=playbook_version,
            dry_run=dry_run,
            status="running",
            started_at=utcnow(),
        )
        .returning(s.cycles.c.cycle_id)
    )
    return int(result.scalar_one())


def finish_cycle(conn: Connection, cycle_id: int, status: str, summary: dict[str, Any]) -> None:
    """Close a cycle with its final status and summary."""
    conn.execute(
        update(s.cycles)
        .where(s.cycles.c.cycle_id == cycle_id)
        .values(status=status, finished_at=utcnow(), summary=summary)
    )


def rewards_granted_on(conn: Connection, day: date, markets: Sequence[str]) -> list[dict[str, Any]]:
    """Return the rewards decided on `day` in the markets, per rule, market and status, with their cost."""
    r = s.rewards
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    stmt = (
        select(
            r.c.rule,
            r.c.market,
            r.c.status,
            func.count().label("rewards"),
            func.coalesce(func.sum(r.c.cost_eur), 0).label("cost_eur"),
        )
        .where(r.c.granted_at >= start, r.c.granted_at < start + timedelta(days=1), r.c.market.in_(markets))
        .group_by(r.c.rule, r.c.market, r.c.status)
        .order_by(r.c.rule, r.c.market, r.c.status)
    )
    return [
        {"rule": rule, "market": market, "status": status, "rewards": int(n), "cost_eur": float(cost)}
        for rule, market, status, n, cost in conn.execute(stmt)
    ]


# Runs that open a cycle row without planning from playbooks: grant-rewards and release-deferred.
SIDE_RUNS = ("rewards", "(deferred release)")


def latest_cycle(conn: Connection) -> int | None:
    """Return the id of the latest completed, non-dry renewal cycle."""
    c = s.cycles
    value = conn.execute(
        select(func.max(c.c.cycle_id)).where(
            c.c.status == "completed", c.c.dry_run.is_(False), c.c.playbook.not_in(SIDE_RUNS)
        )
    ).scalar()
    return int(value) if value is not None else None


def cycle_row(conn: Connection, cycle_id: int) -> dict[str, Any]:
    """Return one cycle as a dict."""
    row = conn.execute(select(s.cycles).where(s.cycles.c.cycle_id == cycle_id)).mappings().one()
    return dict(row)


# --- segment --------------------------------------------------------------------------------------


def _market_customers(
    conn: Connection, markets: Sequence[str], shard: Shard | None, reader: Callable[..., pd.DataFrame]
) -> tuple[pd.DataFrame, Select[Any]]:
    """Return the markets' unerased customers, read by `reader`, and a subquery of all their keys."""
    cust = s.customers
    in_markets = cust.c.market.in_(list(markets)), in_shard(cust.c.customer_key, shard)
    customers = reader(
        conn,
        select(cust.c.customer_key, cust.c.market, cust.c.customer_since).where(
            *in_markets, cust.c.erased_at.is_(None)
        ),
    )
    return customers, select(cust.c.customer_key).where(*in_markets)


def _contracts_of(where: ColumnElement[bool]) -> Select[Any]:
    ct = s.contracts
    return select(
        ct.c.contract_key,
        ct.c.customer_key,
        ct.c.product,
        ct.c.status,
        ct.c.term_end,
        ct.c.auto_renew,
        ct.c.price,
        ct.c.currency,
        ct.c.renewed_at,
    ).where(where)


def read_segment_inputs(
    conn: Connection, markets: Sequence[str], shard: Shard | None = None
) -> dict[Entity, pd.DataFrame]:
    """Return customers, contracts, instalments and activity of the given markets (segments and models)."""
    customers, in_markets = _market_customers(conn, markets, shard, read_frame)
    ct = s.contracts
    contracts = read_frame(conn, _contracts_of(ct.c.customer_key.in_(in_markets)))
    contracts = contracts[contracts["customer_key"].isin(customers["customer_key"])].reset_index(drop=True)
    inst = s.instalments
    instalments = read_frame(
        conn,
        select(
            inst.c.instalment_key,
            inst.c.contract_key,
            inst.c.due_date,
            inst.c.paid_date,
            inst.c.amount,
            inst.c.currency,
        ).where(inst.c.contract_key.in_(select(ct.c.contract_key).where(ct.c.customer_key.in_(in_markets)))),
    )
    act = s.activity
    activity = read_frame(
        conn,
        select(act.c.customer_key, act.c.month, act.c.transactions).where(act.c.customer_key.in_(in_markets)),
    )
    return {
        Entity.CUSTOMERS: customers,
        Entity.CONTRACTS: contracts,
        Entity.INSTALMENTS: instalments,
        Entity.ACTIVITY: activity,
    }


def _due_between(window: tuple[date, date] | None) -> ColumnElement[bool]:
    if window is None:
        return true()
    after, before = window
    inst = s.instalments
    return and_(inst.c.due_date < before, or_(inst.c.due_date > after, inst.c.paid_date.is_(None)))


def read_segment_history(
    conn: Connection,
    markets: Sequence[str],
    activity_months: tuple[date, date],
    shard: Shard | None = None,
    open_only: bool = False,
    due_between: tuple[date, date] | None = None,
) -> dict[Entity, pd.DataFrame]:
    """Return what segmenting and scoring read of the markets' history, text as Arrow strings.

    The rows of read_segment_inputs, less what neither looks at: instalment keys and amounts, and
    activity outside `activity_months` (first month, month after the last); with `open_only`, only
    the open contracts and their instalments; with `due_between` (after, before), only instalments due
    in between, or unpaid and due before.
    """
    customers, in_markets = _market_customers(conn, markets, shard, read_columns)
    ct = s.contracts
    wanted = and_(ct.c.customer_key.in_(in_markets), ct.c.status == OPEN if open_only else true())
    contracts = read_columns(conn, _contracts_of(wanted))
    contracts = contracts[is_in(contracts["customer_key"], customers["customer_key"])].reset_index(drop=True)
    inst = s.instalments
    instalments = read_columns(
        conn,
        select(inst.c.contract_key, inst.c.due_date, inst.c.paid_date).where(
            inst.c.contract_key.in_(select(ct.c.contract_key).where(wanted)), _due_between(due_between)
        ),
    )
    act = s.activity
    first, after = activity_months
    activity = read_columns(
        conn,
        select(act.c.customer_key, act.c.month, act.c.transactions).where(
            act.c.customer_key.in_(in_markets), act.c.month >= first, act.c.month < after
        ),
    )
    return {
        Entity.CUSTOMERS: customers,
        Entity.CONTRACTS: contracts,
        Entity.INSTALMENTS: instalments,
        Entity.ACTIVITY: activity,
    }


# The generated shard hash is the database's to write.
SEGMENT_COLUMNS = [c.name for c in s.segment_assignments.columns if c.computed is None]


def marketing_objectors(conn: Connection, markets: Sequence[str], shard: Shard | None = None) -> set[str]:
    """Return customers whose current general marketing record is an objection (GDPR Art. 21)."""
    c, cust = s.consents, s.customers
    rows = read_frame(
        conn,
        select(
            c.c.consent_id,
            c.c.customer_key,
            c.c.channel,
            c.c.purpose,
            c.c.status,
            c.c.captured_at,
            c.c.withdrawn_at,
        )
        .where(c.c.channel == "all", c.c.purpose == "marketing")
        .where(c.c.customer_key.in_(select(cust.c.customer_key).where(cust.c.market.in_(list(markets)))))
        .where(in_shard(c.c.customer_key, shard)),
    )
    if rows.empty:
        return set()
    current = latest_consents(rows)
    return set(current.loc[current["status"] == "withdrawn", "customer_key"].astype(str))


def write_segments(conn: Connection, cycle_id: int, frame: pd.DataFrame) -> int:
    """Store the cycle's segment rows."""
    df = frame.assign(cycle_id=cycle_id)
    return insert_frame(conn, s.segment_assignments, df[SEGMENT_COLUMNS])


def read_segments(conn: Connection, cycle_id: int, shard: Shard | None = None) -> pd.DataFrame:
    """Return the cycle's segment rows joined with the contract fields planning needs."""
    sa_, ct = s.segment_assignments, s.contracts
    stmt = (
        select(
            sa_.c.contract_key,
            sa_.c.customer_key,
            sa_.c.market,
            sa_.c.product,
            sa_.c.segment,
            sa_.c.risk_band,
            sa_.c.inactive,
            sa_.c.profiling_objection,
            ct.c.status,
            ct.c.term_end,
            ct.c.auto_renew,
        )
        .join(ct, ct.c.contract_key == sa_.c.contract_key)
        .where(sa_.c.cycle_id == cycle_id, in_shard(sa_.c.customer_key, shard))
    )
    return read_frame(conn, stmt)


# --- plan and gate --------------------------------------------------------------------------------


def read_unpaid_instalments(
    conn: Connection, cycle_id: int, since: date, shard: Shard | None = None
) -> pd.DataFrame:
    """Return unpaid instalments due since `since` of the cycle's segmented contracts."""
    inst, sa_ = s.instalments, s.segment_assignments
    return read_frame(
        conn,
        select(inst.c.instalment_key, inst.c.contract_key, inst.c.due_date, inst.c.paid_date).where(
            inst.c.paid_date.is_(None),
            inst.c.due_date >= since,
            inst.c.contract_key.in_(
                select(sa_.c.contract_key).where(
                    sa_.c.cycle_id == cycle_id, in_shard(sa_.c.customer_key, shard)
                )
            ),
        ),
    )


def read_lapsed_contracts(
    conn: Connection, markets: Sequence[str], since: date, shard: Shard | None = None
) -> pd.DataFrame:
    """Return contracts of the markets that lapsed (ended unrenewed) since `since`, shaped like segments."""
    ct, cust = s.contracts, s.customers
    return read_frame(
        conn,
        select(
            ct.c.contract_key,
            ct.c.customer_key,
            cust.c.market,
            ct.c.product,
            ct.c.status,
            ct.c.term_end,
            ct.c.auto_renew,
        )
        .join(cust, cust.c.customer_key == ct.c.customer_key)
        .where(
            ct.c.status == "lapsed",
            ct.c.term_end >= since,
            cust.c.market.in_(list(markets)),
            cust.c.erased_at.is_(None),
            in_shard(ct.c.customer_key, shard),
        ),
    )


def _last_active_of(conn: Connection, keys: list[str]) -> Select[Any]:
    act = s.activity
    if conn.dialect.name != "postgresql":
        return (
            select(act.c.customer_key, func.max(act.c.last_active).label("last_active"))
            .where(act.c.customer_key.in_(keys))
            .group_by(act.c.customer_key)
        )
    # Key by key through the primary key: for a long IN list PostgreSQL scans the whole table instead,
    # once per chunk, which made a shard's cost grow with every customer's activity, not its own.
    # An array, not VALUES: SQLAlchemy renders 20,000 VALUES rows in 0.6 s, the array in 0.01 s.
    wanted = func.unnest(literal(keys, ARRAY(String))).table_valued("customer_key").render_derived("wanted")
    # HAVING: a customer without activity rows gets no row, as GROUP BY gives none.
    latest = (
        select(func.max(act.c.last_active).label("last_active"))
        .where(act.c.customer_key == wanted.c.customer_key)
        .having(func.count() > 0)
        .lateral("latest")
    )
    return select(wanted.c.customer_key, latest.c.last_active).join_from(wanted, latest, true())


def last_activity(conn: Connection, customer_keys: Sequence[str]) -> pd.Series:
    """Return each customer's last active day (from the monthly activity rows)."""
    keys = list(dict.fromkeys(customer_keys))
    frames = [
        read_frame(conn, _last_active_of(conn, keys[i : i + 20000])) for i in range(0, len(keys), 20000)
    ]
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({"customer_key": [], "last_active": []})
    )
    return frame.set_index("customer_key")["last_active"]


def customers_contacted_on(
    conn: Connection, day: date, markets: Sequence[str], shard: Shard | None = None
) -> pd.DataFrame:
    """Return (customer, playbook) pairs with a message of a cycle for `day`, not blocked or dropped."""
    m, cyc = s.messages, s.cycles
    # The cycle's day, not the clock's: a cycle for the 22nd may run after midnight UTC, or be rerun later.
    of_day = select(cyc.c.cycle_id).where(cyc.c.as_of == day)
    return read_frame(
        conn,
        select(m.c.customer_key, m.c.playbook)
        .where(
            m.c.cycle_id.in_(of_day),
            m.c.market.in_(list(markets)),
            m.c.status.not_in(["blocked", "expired", "cancelled", "standby"]),
            ~m.c.message_key.startswith("dry:"),
            in_shard(m.c.customer_key, shard),
        )
        .distinct(),
    )


def existing_message_keys(conn: Connection, keys: Iterable[str]) -> set[str]:
    """Return which of `keys` already have a message row (planned by an earlier run)."""
    wanted = list(keys)
    found: set[str] = set()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        rows = conn.execute(select(s.messages.c.message_key).where(s.messages.c.message_key.in_(chunk)))
        found.update(r[0] for r in rows)
    return found


def insert_holdouts(conn: Connection, cycle_id: int, frame: pd.DataFrame, playbook: str) -> int:
    """Record the control-group contracts that would have got a step today; return how many were new."""
    if frame.empty:
        return 0
    df = frame[["contract_key", "customer_key", "step", "anchor_date"]].assign(
        cycle_id=cycle_id, playbook=playbook
    )
    return insert_frame(conn, s.holdouts, df)


def insert_messages(conn: Connection, frame: pd.DataFrame) -> int:
    """Insert planned messages; rows whose idempotency key exists already are skipped."""
    return insert_new(conn, s.messages, frame, ["message_key"])


def insert_decisions(conn: Connection, frame: pd.DataFrame) -> int:
    """Append gate decisions."""
    return insert_frame(conn, s.decisions, frame)


def pii_hash(key: bytes, kind: str, value: str) -> str:
    """Return the keyed hash of a normalised identifier (email lower-cased, phone E.164)."""
    norm = value.strip().lower() if kind == "email" else value.strip()
    return hmac.new(key, f"{kind}:{norm}".encode(), hashlib.sha256).hexdigest()


def read_contacts(conn: Connection, customer_keys: Sequence[str], hash_key: bytes) -> pd.DataFrame:
    """Return, per customer, whether an email and phone exist and whether they are erased or suppressed."""
    cust = s.customers
    frames = []
    keys = list(dict.fromkeys(customer_keys))
    for start in range(0, len(keys), 20000):
        chunk = keys[start : start + 20000]
        frames.append(
            read_frame(
                conn,
                select(cust.c.customer_key, cust.c.email, cust.c.phone_e164, cust.c.erased_at).where(
                    cust.c.customer_key.in_(chunk)
                ),
            )
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        return pd.DataFrame(columns=["customer_key", "has_email", "has_phone", "erased", "suppressed"])
    suppressed_hashes = set(
        read_frame(conn, select(s.suppressions.c.identifier_hash).where(s.suppressions.c.scope == "all"))[
            "identifier_hash"
        ]
    )
    email_hit = df["email"].map(
        lambda v: v is not None and pii_hash(hash_key, "email", v) in suppressed_hashes
    )
    phone_hit = df["phone_e164"].map(
        lambda v: v is not None and pii_hash(hash_key, "phone", v) in suppressed_hashes
    )
    return pd.DataFrame(
        {
            "customer_key": df["customer_key"],
            "has_email": df["email"].notna(),
            "has_phone": df["phone_e164"].notna(),
            "erased": df["erased_at"].notna(),
            "suppressed": (email_hit | phone_hit).astype(bool),
        }
    )


def read_consents(conn: Connection, customer_keys: Sequence[str]) -> pd.DataFrame:
    """Return every consent record of the given customers (history included)."""
    c = s.consents
    keys = list(dict.fromkeys(customer_keys))
    frames = []
    for start in range(0, len(keys), 20000):
        chunk = keys[start : start + 20000]
        frames.append(
            read_frame(
                conn,
                select(
                    c.c.consent_id,
                    c.c.customer_key,
                    c.c.channel,
                    c.c.purpose,
                    c.c.status,
                    c.c.lawful_basis,
                    c.c.captured_at,
                    c.c.withdrawn_at,
                ).where(c.c.customer_key.in_(chunk)),
            )
        )
    if not frames:
        return pd.DataFrame(
            columns=[
                "consent_id",
                "customer_key",
                "channel",
                "purpose",
                "status",
                "captured_at",
                "withdrawn_at",
            ]
        )
    return pd.concat(frames, ignore_index=True)


def read_messages(conn: Connection, cycle_id: int, statuses: Sequence[str]) -> pd.DataFrame:
    """Return the cycle's messages in the given statuses."""
    m = s.messages
    stmt = select(
        m.c.message_key,
        m.c.customer_key,
        m.c.contract_key,
        m.c.market,
        m.c.step,
        m.c.channel,
        m.c.rank,
        m.c.send_rule,
        m.c.template,
        m.c.purpose,
        m.c.anchor_date,
        m.c.status,
    ).where(m.c.cycle_id == cycle_id, m.c.status.in_(list(statuses)))
    return read_frame(conn, stmt)


def set_status(conn: Connection, frame: pd.DataFrame, now: datetime) -> int:
    """Set message status (and any other given columns) from a frame keyed by message_key."""
    if frame.empty:
        return 0
    return update_frame(conn, s.messages, frame.assign(updated_at=now), ["message_key"])


# --- render ---------------------------------------------------------------------------------------


def read_instalment_amounts(conn: Connection, keys: Sequence[str]) -> pd.DataFrame:
    """Return amount and currency of the given instalments."""
    inst = s.instalments
    frames = [
        read_frame(
            conn,
            select(inst.c.instalment_key, inst.c.amount, inst.c.currency).where(
                inst.c.instalment_key.in_(list(keys[i : i + 20000]))
            ),
        )
        for i in range(0, len(keys), 20000)
    ]
    if not frames:
        return pd.DataFrame({"instalment_key": [], "amount": [], "currency": []})
    return pd.concat(frames, ignore_index=True)


def read_render_context(conn: Connection, cycle_id: int, shard: Shard | None = None) -> pd.DataFrame:
    """Return the queued messages of a cycle with the customer and contract fields templates use."""
    m, cust, ct = s.messages, s.customers, s.contracts
    stmt = (
        select(
            m.c.message_key,
            m.c.playbook,
            m.c.step,
            m.c.market,
            m.c.channel,
            m.c.template,
            m.c.purpose,
            m.c.has_offer,
            m.c.offer_removed,
            m.c.anchor_date,
            cust.c.locale,
            cust.c.first_name,
            cust.c.last_name,
            ct.c.contract_key,
            ct.c.product,
            ct.c.term_end,
            ct.c.price,
            ct.c.currency,
        )
        .join(cust, cust.c.customer_key == m.c.customer_key)
        .join(ct, ct.c.contract_key == m.c.contract_key)
        .where(m.c.cycle_id == cycle_id, m.c.status == "queued", in_shard(m.c.customer_key, shard))
    )
    return read_frame(conn, stmt)


# --- dispatch -------------------------------------------------------------------------------------


CLAIM_COLUMNS = (
    "message_key",
    "customer_key",
    "contract_key",
    "market",
    "channel",
    "rank",
    "send_rule",
    "purpose",
    "has_offer",
    "offer_removed",
    "recipient",
    "step",
    "playbook",
    "template",
    "locale",
    "subject",
    "body",
    "body_html",
    "segments",
    "template_variables",
)
CLAIM_CUSTOMER_COLUMNS = ("email", "phone_e164", "erased_at")


def claim_batch(
    conn: Connection,
    cycle_id: int,
    limit: int,
    now: datetime,
    owner: int | None = None,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """Move about `limit` rendered messages to `sending`, whole customers at a time, and return them.

    Customers are taken in key order and the last one's other messages come along, so a customer's
    messages fall in one batch: one unsettled while the next was re-checked would make dispatch wait
    for its settle and re-check the customer again (frequency caps count sent messages).
    On PostgreSQL this is one statement: the rows are locked with SKIP LOCKED, so concurrent
    dispatchers never claim the same message, and the claimed rows come back through RETURNING.
    Call it in a transaction of its own: it turns off bitmap scans and sorts until that ends.
    """
    m, cust = s.messages, s.customers
    waiting = and_(m.c.cycle_id == cycle_id, m.c.status == "rendered", in_shard(m.c.customer_key, shard))
    first = select(m.c.message_key, m.c.customer_key).where(waiting).order_by(m.c.customer_key).limit(limit)
    claim = {
        "status": "sending",
        "claimed_at": now,
        "claimed_by": owner,
        "updated_at": now,
        "attempts": m.c.attempts + 1,
    }
    names = [*CLAIM_COLUMNS, *CLAIM_CUSTOMER_COLUMNS]
    if conn.dialect.name == "postgresql":
        # The statistics of messages trail the cycle's own writes (taken before the plan inserted them,
        # or by autovacuum at any moment since), so the planner may think few messages are rendered and
        # collect and sort all of them for every batch (55-100 ms a claim for a 1M shard). Without
        # bitmap scans and sorts to pick, the one plan left walks ix_messages_claim: 1-2 ms a batch.
        # Set for the rest of the transaction (is_local): the caller gives the claim one of its own.
        conn.execute(
            select(
                func.set_config("enable_bitmapscan", "off", True), func.set_config("enable_sort", "off", True)
            )
        )
        # MATERIALIZED: each locking pick runs once, never re-evaluated inside the UPDATE's join.
        head = first.with_for_update(skip_locked=True).cte("head").prefix_with("MATERIALIZED")
        last = select(func.max(head.c.customer_key)).scalar_subquery()
        tail = (
            select(m.c.message_key)
            .where(waiting, m.c.customer_key == last)
            .with_for_update(skip_locked=True)
            .cte("tail")
            .prefix_with("MATERIALIZED")
        )
        picked = union(select(head.c.message_key), select(tail.c.message_key)).cte("picked")
        claimed = (
            update(m)
            .where(m.c.message_key == picked.c.message_key)
            .values(claim)
            .returning(*(m.c[c] for c in CLAIM_COLUMNS))
            .cte("claimed")
        )
        stmt = select(
            *(claimed.c[c] for c in CLAIM_COLUMNS), *(cust.c[c] for c in CLAIM_CUSTOMER_COLUMNS)
        ).join_from(claimed, cust, cust.c.customer_key == claimed.c.customer_key)
        return _claimed_frame(conn.execute(stmt).all(), names)
    rows = conn.execute(first).all()
    if not rows:
        return pd.DataFrame(columns=names)
    keys = [r[0] for r in rows]
    if len(rows) == limit:
        taken = set(keys)
        rest = conn.execute(select(m.c.message_key).where(waiting, m.c.customer_key == rows[-1][1]))
        keys += [k for (k,) in rest if k not in taken]
    conn.execute(update(m).where(m.c.message_key.in_(keys), m.c.status == "rendered").values(claim))
    stmt = (
        select(*(m.c[c] for c in CLAIM_COLUMNS), *(cust.c[c] for c in CLAIM_CUSTOMER_COLUMNS))
        .join(cust, cust.c.customer_key == m.c.customer_key)
        .where(m.c.message_key.in_(keys))
    )
    return _claimed_frame(conn.execute(stmt).all(), names)


def _claimed_frame(rows: Sequence[Row[Any]], names: list[str]) -> pd.DataFrame:
    """Return claimed rows as a frame with the columns `names`."""
    # Plain tuples, built by unpacking: given Row objects, from_records probes each for attributes it
    # lacks (an AttributeError raised per row) and copies it with tuple(), which is slow for a Row;
    # 6 ms against 2-3 ms per 1,000 claimed messages.
    return pd.DataFrame.from_records([(*row,) for row in rows], columns=names)


def release_claims(conn: Connection, keys: Sequence[str], owner: int | None, now: datetime) -> int:
    """Give back claimed messages that never reached a provider: `rendered` again, for any dispatcher."""
    if not keys:
        return 0
    m = s.messages
    result = conn.execute(
        update(m)
        .where(m.c.message_key.in_(list(keys)), m.c.status == "sending", m.c.claimed_by == owner)
        .values(
            status="rendered", claimed_at=None, claimed_by=None, updated_at=now, attempts=m.c.attempts - 1
        )
    )
    return int(result.rowcount)


SETTLE_COLUMNS = (
    "message_key",
    "status",
    "provider",
    "provider_message_id",
    "error_code",
    "error_class",
    "error_detail",
    "cost",
    "cost_currency",
    "sent_at",
)
_SETTLE_TYPES = ("text", "text", "text", "text", "text", "text", "text", "numeric", "text", "timestamptz")


def settle_messages(conn: Connection, rows: Sequence[tuple[Any, ...]], now: datetime) -> int:
    """Store send outcomes (tuples in SETTLE_COLUMNS order) in one statement; return the rows touched.

    The outcome details are always stored; the status and sent_at only replace `sending`, so a webhook
    callback that arrived first is never undone.
    """
    if not rows:
        return 0
    m = s.messages
    if conn.dialect.name == "postgresql":
        # One UPDATE joined to the outcomes passed as one array per column: a single plan and round trip.
        arrays = ", ".join(f"CAST(%s AS {t}[])" for t in _SETTLE_TYPES)
        details = ", ".join(f"{c} = v.{c}" for c in SETTLE_COLUMNS[2:-1])
        sql = (
            f"UPDATE messages AS t SET {details}, updated_at = %s, "
            "status = CASE WHEN t.status = 'sending' THEN v.status ELSE t.status END, "
            "sent_at = CASE WHEN t.status = 'sending' THEN v.sent_at ELSE t.sent_at END "
            f"FROM unnest({arrays}) AS v({', '.join(SETTLE_COLUMNS)}) "
            "WHERE t.message_key = v.message_key"
        )
        columns = [list(c) for c in zip(*rows, strict=True)]
        result = conn.exec_driver_sql(sql, (now, *columns))
        return int(result.rowcount)
    sending = m.c.status == "sending"
    # Typed: a value bound inside CASE takes no type from the column, so sqlite3 stored the timestamp in
    # its own text form (with an offset) beside every other one, and SQLite compares them as text.
    sent_at = bindparam("v_sent_at", type_=m.c.sent_at.type)
    stmt = (
        update(m)
        .where(m.c.message_key == bindparam("k"))
        .values(
            {c: bindparam(f"v_{c}") for c in SETTLE_COLUMNS[2:-1]}
            | {
                "updated_at": now,
                "status": case((sending, bindparam("v_status", type_=m.c.status.type)), else_=m.c.status),
                "sent_at": case((sending, sent_at), else_=m.c.sent_at),
            }
        )
    )
    names = ["k", *(f"v_{c}" for c in SETTLE_COLUMNS[1:])]
    return executemany(conn, stmt, dict(zip(names, zip(*rows, strict=True), strict=True)))


def pending_messages(conn: Connection, keys: Sequence[str]) -> pd.DataFrame:
    """Return address, body and claim time of messages whose send outcome was lost (for reconciliation)."""
    m, cust = s.messages, s.customers
    frame = read_frame(
        conn,
        select(m.c.message_key, m.c.channel, m.c.body, m.c.claimed_at, cust.c.email, cust.c.phone_e164)
        .join(cust, cust.c.customer_key == m.c.customer_key)
        .where(m.c.message_key.in_(list(keys))),
    )
    frame["to"] = frame["email"].where(frame["channel"] == "email", frame["phone_e164"])
    return frame[["message_key", "to", "body", "claimed_at"]]


def stuck_sending(conn: Connection, cycle_id: int) -> pd.DataFrame:
    """Return messages left in `sending` by a dispatch that died part way."""
    m = s.messages
    return read_frame(
        conn, select(m.c.message_key, m.c.channel).where(m.c.cycle_id == cycle_id, m.c.status == "sending")
    )


# --- summary --------------------------------------------------------------------------------------


def count_by(
    conn: Connection, table_name: str, cycle_id: int, columns: Sequence[str]
) -> list[dict[str, Any]]:
    """Return row counts of a cycle's rows grouped by `columns`."""
    table = s.metadata.tables[table_name]
    cols = [table.c[c] for c in columns]
    stmt = (
        select(*cols, func.count().label("n"))
        .where(table.c.cycle_id == cycle_id)
        .group_by(*cols)
        .order_by(*cols)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def count_status(conn: Connection, cycle_id: int, status: str, shard: Shard | None = None) -> int:
    """Return how many of the cycle's messages (of one shard, when given) are in `status`."""
    m = s.messages
    stmt = select(func.count()).where(
        m.c.cycle_id == cycle_id, m.c.status == status, in_shard(m.c.customer_key, shard)
    )
    return int(conn.execute(stmt).scalar_one())


def count_rows(conn: Connection, table_name: str, cycle_id: int | None = None) -> int:
    """Return the number of rows in a table (of one cycle when given)."""
    table = s.metadata.tables[table_name]
    stmt = select(func.count()).select_from(table)
    if cycle_id is not None:
        stmt = stmt.where(table.c.cycle_id == cycle_id)
    return int(conn.execute(stmt).scalar_one())


def previous_cycles_today(conn: Connection, as_of: date, playbook: str, markets: Sequence[str]) -> int:
    """Return how many earlier non-dry cycles ran for the same day, playbook and markets."""
    stmt = select(func.count()).where(
        and_(
            s.cycles.c.as_of == as_of,
            s.cycles.c.playbook == playbook,
            s.cycles.c.markets == ",".join(markets),
            s.cycles.c.dry_run.is_(False),
            s.cycles.c.status == "completed",
        )
    )
    return int(conn.execute(stmt).scalar_one())


# --- risk models ----------------------------------------------------------------------------------

MODEL_SUMMARY_COLUMNS = [c for c in s.model_versions.columns if c.name not in ("artifact", "report_md")]


def store_model_version(conn: Connection, row: dict[str, Any]) -> str:
    """Store a trained model as a candidate and return its status; an active version is left as it is."""
    # Versions name the training windows and day, so a rerun the same day trains the same version again.
    mv = s.model_versions
    status = conn.execute(select(mv.c.status).where(mv.c.version == row["version"])).scalar_one_or_none()
    if status == "active":
        return "active"
    values = {**row, "status": "candidate", "activated_at": None, "retired_at": None}
    if status is None:
        conn.execute(insert(mv).values(**values))
    else:
        conn.execute(update(mv).where(mv.c.version == row["version"]).values(**values))
    return "candidate"


def active_model_artifact(conn: Connection, kind: str) -> tuple[str, bytes, str] | None:
    """Return (version, artifact, stored sha256) of the active model of `kind`, or None."""
    mv = s.model_versions
    row = conn.execute(
        select(mv.c.version, mv.c.artifact, mv.c.artifact_sha256).where(
            mv.c.kind == kind, mv.c.status == "active"
        )
    ).one_or_none()
    return None if row is None else (str(row.version), bytes(row.artifact), str(row.artifact_sha256))


def activate_model(conn: Connection, kind: str, version: str, replaces: str | None, now: datetime) -> bool:
    """Make `version` the active model of `kind` and retire `replaces`; False if the active one changed."""
    # Checked and switched in the caller's transaction: the row lock (PostgreSQL) and the partial unique
    # index keep a second active model of a kind out even when two trainings finish together.
    mv = s.model_versions
    current = select(mv.c.version).where(mv.c.kind == kind, mv.c.status == "active")
    if conn.dialect.name == "postgresql":
        current = current.with_for_update()
    if conn.execute(current).scalar_one_or_none() != replaces:
        return False
    if replaces is not None:
        conn.execute(update(mv).where(mv.c.version == replaces).values(status="retired", retired_at=now))
    conn.execute(
        update(mv)
        .where(mv.c.version == version, mv.c.kind == kind)
        .values(status="active", activated_at=now, retired_at=None)
    )
    return True


def set_model_report(conn: Connection, version: str, report: str) -> None:
    """Replace the stored Markdown report of a model version."""
    mv = s.model_versions
    conn.execute(update(mv).where(mv.c.version == version).values(report_md=report))


def model_versions_of(conn: Connection, kind: str | None = None) -> pd.DataFrame:
    """Return the stored models (without artifacts and reports), newest first."""
    mv = s.model_versions
    stmt = select(*MODEL_SUMMARY_COLUMNS).order_by(mv.c.trained_at.desc(), mv.c.version)
    if kind is not None:
        stmt = stmt.where(mv.c.kind == kind)
    return read_frame(conn, stmt)
