"""Consent gate: one decision per planned message, with its rule ids, policy version and consent record."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import holidays as holidays_lib
import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import Connection, Select, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from tasks._prefect import STEP
from tasks.domain.consent import (
    GATE_VERSION,
    ConsentRecord,
    Decision,
    Request,
    Subject,
    choose_channels,
    decide_all,
    decisions_frame,
    seed_counter,
)
from tasks.domain.markets import Market
from tasks.domain.rules import MarketRules
from tasks.domain.shards import Shard
from tasks.domain.summary import counts
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.repository import insert_decisions, insert_ignore, pii_hash, set_status, utcnow
from tasks.store.sharding import in_shard

PURPOSE_ORDER = {"service": 0, "dunning": 1, "marketing": 2}


def policy_version(markets: Mapping[str, Market]) -> tuple[str, dict[str, Any]]:
    """Return the version id of the gate rules in force and the rules it stands for."""
    rules = {code: _jsonable(asdict(m.rules)) for code, m in sorted(markets.items())}
    blob = json.dumps({"gate": GATE_VERSION, "rules": rules}, sort_keys=True, default=str)
    return f"{GATE_VERSION}+{hashlib.sha256(blob.encode()).hexdigest()[:12]}", rules


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def record_policy(conn: Connection, markets: Mapping[str, Market]) -> str:
    """Store the rules behind the current policy version once, and return the version."""
    version, rules = policy_version(markets)
    exists = conn.execute(
        select(s.policy_versions.c.policy_version).where(s.policy_versions.c.policy_version == version)
    ).first()
    if exists is None:
        insert_ignore(
            conn,
            s.policy_versions,
            {
                "policy_version": version,
                "gate_version": GATE_VERSION,
                "rules": rules,
                "first_used_at": utcnow(),
            },
        )
    return version


@lru_cache(maxsize=256)
def _holiday_calendar(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    try:
        calendar = holidays_lib.country_holidays(country, subdiv=subdivision, years=year)
    except NotImplementedError:
        calendar = holidays_lib.country_holidays(country, years=year)
    return frozenset(calendar.keys())


def holiday_checker(rules: MarketRules) -> Callable[[date], bool]:
    """Return a function telling whether a local date is a public holiday in the market."""
    country = rules.holidays_country
    if not country:
        return lambda _day: False
    return lambda day: day in _holiday_calendar(country, None, day.year)


def _chunks(values: Sequence[str], size: int = 20000) -> list[list[str]]:
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def _utc(moment: datetime | None) -> datetime | None:
    """Return a stored moment in UTC; SQLite gives it back naive, and naive means UTC in the store."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def consent_columns() -> list[Any]:
    """Return the consent columns the gate's rule reads, in the order consent_record takes them."""
    cons = s.consents
    return [
        cons.c.consent_id,
        cons.c.channel,
        cons.c.purpose,
        cons.c.status,
        cons.c.lawful_basis,
        cons.c.captured_at,
        cons.c.withdrawn_at,
        cons.c.doi_confirmed_at,
        cons.c.expires_at,
        cons.c.sale_reference,
        cons.c.notice_version,
        cons.c.bundled,
        cons.c.written,
    ]


def consent_record(values: Sequence[Any]) -> ConsentRecord:
    """Return the consent record of one row of consent_columns()."""
    cid, channel, purpose, status, basis, cap, wdr, doi, exp, sale, notice, bundled, written = values
    return ConsentRecord(
        consent_id=int(cid),
        channel=str(channel),
        purpose=str(purpose),
        status=str(status),
        lawful_basis=str(basis),
        captured_at=_utc(cap),
        withdrawn_at=_utc(wdr),
        doi_confirmed_at=_utc(doi),
        expires_at=_utc(exp),
        sale_reference=sale,
        notice_version=notice,
        bundled=bool(bundled),
        written=bool(written),
    )


def _rows(conn: Connection, stmt: Select[Any], column: Any, keys: Sequence[str]) -> list[Any]:
    """Return the rows of `stmt` for the keys in `column`, read in chunks."""
    # Plain rows, not frames: the send-time re-check reads these for every batch of about 1,000
    # messages, where building typed frames cost more than the rule itself. On PostgreSQL the keys
    # travel as one array, not one parameter each (half the time of a 1,000-key IN list).
    if conn.dialect.name == "postgresql":
        picked: list[Any] = [
            stmt.where(column == any_(bindparam("subject_keys", chunk, type_=ARRAY(String))))
            for chunk in _chunks(keys)
        ]
    else:
        picked = [stmt.where(column.in_(chunk)) for chunk in _chunks(keys)]
    # fetchall: one driver call per chunk, not one per row. The rows unpack as tuples do; copying each
    # with tuple(row) cost more than the unpacking (a 1M shard's gate reads ~0.7M of them).
    return [row for query in picked for row in conn.execute(query).all()]


def load_subjects(
    conn: Connection, customer_keys: Sequence[str], hash_key: bytes, today: date
) -> dict[str, Subject]:
    """Return the gate's view of each customer: reachability, erasure, suppression, relationship, consents."""
    keys = list(dict.fromkeys(customer_keys))
    if not keys:
        return {}
    cust, ct, cons = s.customers, s.contracts, s.consents
    people = _rows(
        conn,
        select(
            cust.c.customer_key,
            cust.c.market,
            cust.c.timezone,
            cust.c.region,
            cust.c.email,
            cust.c.phone_e164,
            cust.c.erased_at,
        ),
        cust.c.customer_key,
        keys,
    )
    contract_rows = _rows(
        conn,
        select(ct.c.customer_key, ct.c.contract_key, ct.c.status, ct.c.term_end),
        ct.c.customer_key,
        keys,
    )
    consent_rows = _rows(
        conn,
        select(cons.c.customer_key, *consent_columns()),
        cons.c.customer_key,
        keys,
    )
    scopes: dict[str, set[str]] = defaultdict(set)
    for digest, scope in conn.execute(select(s.suppressions.c.identifier_hash, s.suppressions.c.scope)):
        scopes[str(digest)].add(str(scope))

    contracts_of: dict[str, set[str]] = defaultdict(set)
    ongoing: set[str] = set()
    last_end: dict[str, date] = {}
    for key, contract, status, end in contract_rows:
        contracts_of[key].add(contract)
        if status == "active":
            ongoing.add(key)
        last_end[key] = max(last_end.get(key, end), end)

    records: dict[str, list[ConsentRecord]] = defaultdict(list)
    for key, *values in consent_rows:
        records[str(key)].append(consent_record(values))

    subjects: dict[str, Subject] = {}
    for key, market, timezone, region, email, phone, erased_at in people:
        key = str(key)
        hit: set[str] = set()
        # No suppressions (the usual case) means no hit: the HMAC per address is then skipped.
        for kind, value in (("email", email), ("phone", phone)) if scopes else ():
            if value is not None:
                hit |= scopes.get(pii_hash(hash_key, kind, str(value)), set())
        subjects[key] = Subject(
            customer_key=key,
            market=str(market),
            timezone=str(timezone),
            region=region,
            has_email=email is not None,
            has_phone=phone is not None,
            erased=erased_at is not None,
            suppressed=frozenset(hit),
            contract_keys=frozenset(contracts_of.get(key, set())),
            relationship_end=today if key in ongoing else last_end.get(key),
            consents=tuple(records.get(key, [])),
        )
    return subjects


def sent_history(conn: Connection, customer_keys: Sequence[str], since: datetime) -> pd.DataFrame:
    """Return messages sent to these customers since `since` (for frequency caps)."""
    m = s.messages
    keys = list(dict.fromkeys(customer_keys))
    stmt = select(m.c.customer_key, m.c.channel, m.c.purpose, m.c.sent_at).where(m.c.sent_at >= since)
    rows = [
        (key, channel, purpose, _utc(at))
        for key, channel, purpose, at in _rows(conn, stmt, m.c.customer_key, keys)
    ]
    return pd.DataFrame.from_records(rows, columns=["customer_key", "channel", "purpose", "sent_at"])


def requests_of(messages: pd.DataFrame) -> list[Request]:
    """Return gate requests in decision order: per customer, service before dunning before marketing."""
    ordered = messages.assign(_p=messages["purpose"].map(PURPOSE_ORDER).fillna(3)).sort_values(
        ["customer_key", "_p", "contract_key", "step", "rank"], kind="stable"
    )
    n = len(ordered)
    offers = ordered["has_offer"].tolist() if "has_offer" in ordered else [False] * n
    recipients = ordered["recipient"].tolist() if "recipient" in ordered else [None] * n
    return [
        Request(
            message_key=str(key),
            channel=str(channel),
            purpose=str(purpose),
            has_offer=bool(offer),
            recipient=str(recipient or "customer"),
            group=f"{contract}|{step}",
            send_rule=str(rule),
        )
        for key, channel, purpose, offer, recipient, contract, step, rule in zip(
            ordered["message_key"].tolist(),
            ordered["channel"].tolist(),
            ordered["purpose"].tolist(),
            offers,
            recipients,
            ordered["contract_key"].tolist(),
            ordered["step"].tolist(),
            ordered["send_rule"].tolist(),
            strict=True,
        )
    ]


def decide_for(
    conn: Connection,
    messages: pd.DataFrame,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
    version: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """Return the gate's decisions for `messages` at `now` and the policy version (recorded unless given)."""
    if version is None:
        version = record_policy(conn, markets)
    customers = messages["customer_key"].astype(str).tolist()
    subjects = load_subjects(conn, customers, hash_key, now.date())
    rules = {code: m.rules for code, m in markets.items()}
    counter = seed_counter(sent_history(conn, customers, now - timedelta(days=8)), subjects, rules)
    decisions: list[Decision] = decide_all(
        requests_of(messages),
        subjects,
        dict(zip(messages["message_key"].astype(str), customers, strict=True)),
        rules,
        now,
        counter,
        {code: holiday_checker(r) for code, r in rules.items()},
    )
    return decisions_frame(decisions, version), version


def decision_rows(
    messages: pd.DataFrame, decisions: pd.DataFrame, cycle_id: int, stage: str, decided_at: datetime
) -> pd.DataFrame:
    """Return decision rows ready to store, stamped with the time the rules were judged at."""
    df = decisions.merge(messages[["message_key", "customer_key", "channel", "purpose"]], on="message_key")
    return df.assign(cycle_id=cycle_id, stage=stage, decided_at=decided_at)


def gate_messages(
    conn: Connection,
    messages: pd.DataFrame,
    cycle_id: int,
    stage: str,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
) -> dict[str, Any]:
    """Decide `messages`, store one decision each, and move them to queued, deferred, standby or blocked."""
    if messages.empty:
        return {"decided": 0, "by_outcome": {}, "by_reason": {}, "by_status": {}, "policy_version": ""}
    decisions, version = decide_for(conn, messages, markets, hash_key, now)
    insert_decisions(conn, decision_rows(messages, decisions, cycle_id, stage, now))
    ordered = messages.set_index("message_key").loc[decisions["message_key"]].reset_index()
    status = choose_channels(ordered, decisions)
    set_status(
        conn,
        pd.DataFrame(
            {
                "message_key": ordered["message_key"],
                "status": status,
                "cycle_id": cycle_id,
                "deferred_until": decisions["deferred_until"].where(status == "deferred"),
                "offer_removed": decisions["offer_removed"].astype(bool),
            }
        ),
        utcnow(),
    )
    return {
        "decided": len(decisions),
        "by_outcome": counts(decisions["outcome"]),
        "by_reason": counts(decisions["outcome"] + ":" + decisions["reason"]),
        "by_status": counts(status),
        "offers_removed": int(decisions["offer_removed"].sum()),
        "policy_version": version,
    }


def released_deferred(
    conn: Connection,
    now: datetime,
    markets: Sequence[str] | None,
    playbook: str | None,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """Return deferred messages whose slot has come (all playbooks and markets when not given)."""
    m = s.messages
    stmt = select(
        m.c.message_key,
        m.c.customer_key,
        m.c.contract_key,
        m.c.step,
        m.c.channel,
        m.c.rank,
        m.c.send_rule,
        m.c.purpose,
        m.c.has_offer,
        m.c.recipient,
    ).where(m.c.status == "deferred", m.c.deferred_until <= now, in_shard(m.c.customer_key, shard))
    if markets:
        stmt = stmt.where(m.c.market.in_(list(markets)))
    if playbook:
        stmt = stmt.where(m.c.playbook == playbook)
    return read_frame(conn, stmt)


def gate_cycle(
    conn: Connection,
    cycle_id: int,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
    cycle_markets: Sequence[str] | None = None,
    playbook: str | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Decide the cycle's planned messages, and release deferred ones whose allowed slot has come."""
    m = s.messages
    planned = read_frame(
        conn,
        select(
            m.c.message_key,
            m.c.customer_key,
            m.c.contract_key,
            m.c.step,
            m.c.channel,
            m.c.rank,
            m.c.send_rule,
            m.c.purpose,
            m.c.has_offer,
            m.c.recipient,
        ).where(m.c.cycle_id == cycle_id, m.c.status == "planned", in_shard(m.c.customer_key, shard)),
    )
    stats = gate_messages(conn, planned, cycle_id, "plan", markets, hash_key, now)
    released = released_deferred(conn, now, cycle_markets, playbook, shard)
    stats["released"] = gate_messages(conn, released, cycle_id, "release", markets, hash_key, now)
    return stats


@task(name="consent-gate", **STEP)
def gate(
    cycle_id: int, markets: list[str] | None = None, playbook: str | None = None, shard: Shard | None = None
) -> dict[str, Any]:
    """Run the consent gate over the cycle's planned messages and release due deferred ones."""
    rt = get_runtime()
    with rt.engine.begin() as conn:
        stats = gate_cycle(
            conn,
            cycle_id,
            rt.markets,
            rt.settings.pii_hash_key.get_secret_value().encode(),
            utcnow(),
            markets,
            playbook,
            shard,
        )
    get_run_logger().info(
        "gate (%s): %s; released %s deferred",
        stats["policy_version"],
        stats["by_reason"],
        stats["released"]["decided"],
    )
    return stats


@task(name="release-deferred", **STEP)
def release(cycle_id: int, markets: list[str] | None = None) -> dict[str, Any]:
    """Re-check consent for deferred messages whose slot has come; allowed ones are queued to send."""
    rt = get_runtime()
    now = utcnow()
    with rt.engine.begin() as conn:
        due = released_deferred(conn, now, markets, None)
        stats = gate_messages(
            conn,
            due,
            cycle_id,
            "release",
            rt.markets,
            rt.settings.pii_hash_key.get_secret_value().encode(),
            now,
        )
    get_run_logger().info("released %s deferred messages: %s", stats["decided"], stats["by_status"])
    return stats
