"""Dispatch: claim, re-check consent, send through the channel, settle; at most once per message.

A message is claimed (`sending`, with the dispatcher's id) and committed before its provider call and
settled after it. A dispatcher that dies leaves its claims behind; they are only reconciled once the
owner is provably gone (on PostgreSQL it holds an advisory lock while alive), so two dispatchers can
drain one cycle side by side without ever sending a message twice.

Within one dispatcher the steps overlap: the next batch is claimed and re-checked while the current
one is sending, and outcomes are settled while the next batch sends, so the provider calls never wait
for the database. At most one batch is claimed ahead; if dispatch stops, it is given back unsent.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from sqlalchemy import Engine, select, text, update

from tasks._prefect import IO_RETRIES, STEP
from tasks.channels.base import Outbound, Sender, SendInterrupted, SendResult, SendStatus
from tasks.channels.results import ChannelResult
from tasks.domain.consent import Outcome, Reason, labelled, required_label
from tasks.domain.markets import Market
from tasks.domain.shards import Shard
from tasks.gate import decide_for, decision_rows, record_policy
from tasks.runtime import get_runtime
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.repository import (
    audit,
    claim_batch,
    count_status,
    insert_decisions,
    release_claims,
    set_status,
    settle_messages,
    utcnow,
)
from tasks.store.sharding import in_shard
from tasks.tracking import CONSENT_PURPOSES, activate_fallback, in_doubt_evidence, record_consent_change

log = logging.getLogger(__name__)


@contextmanager
def dispatcher_lease(engine: Engine) -> Iterator[int]:
    """Yield this dispatcher's id, held as a PostgreSQL advisory lock for as long as it runs."""
    owner = secrets.randbits(62) + 1
    if engine.dialect.name != "postgresql":
        yield owner
        return
    conn = engine.connect()
    try:
        conn.execute(text("SELECT pg_advisory_lock(:owner)"), {"owner": owner})
        conn.commit()
        yield owner
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:owner)"), {"owner": owner})
        conn.commit()
        conn.close()


def dead_owners(engine: Engine, owners: set[int], mine: int) -> set[int]:
    """Return the dispatcher ids among `owners` whose process is gone (their advisory lock is free)."""
    others = {o for o in owners if o != mine}
    if engine.dialect.name != "postgresql" or not others:
        return others
    dead = set()
    with engine.connect() as conn:
        for owner in others:
            if conn.execute(text("SELECT pg_try_advisory_lock(:o)"), {"o": owner}).scalar():
                conn.execute(text("SELECT pg_advisory_unlock(:o)"), {"o": owner})
                dead.add(owner)
        conn.commit()
    return dead


def _settled(result: SendResult, now: datetime) -> tuple[Any, ...]:
    rich = result if isinstance(result, ChannelResult) else None
    return (
        result.message_key,
        result.status.value,
        result.provider,
        result.provider_message_id,
        result.error_code,
        rich.error_class.value if rich is not None and rich.error_class is not None else None,
        result.error_detail,
        rich.cost if rich is not None else None,
        rich.currency if rich is not None else None,
        now if result.status is SendStatus.SENT else None,
    )


def settle(engine: Engine, results: Sequence[SendResult], now: datetime) -> dict[str, int]:
    """Store outcomes; the status only replaces `sending`, so a faster webhook callback is never undone."""
    if not results:
        return {}
    follow: Counter[str] = Counter()
    with engine.begin() as conn:
        settle_messages(conn, [_settled(r, now) for r in results], now)
        for result in results:
            if not isinstance(result, ChannelResult):
                continue
            if (
                result.status is SendStatus.FAILED
                and result.fallback
                and activate_fallback(conn, result.message_key, now)
            ):
                follow["fallback_queued"] += 1
            if result.opt_out:
                row = conn.execute(
                    select(s.messages.c.customer_key, s.messages.c.channel).where(
                        s.messages.c.message_key == result.message_key
                    )
                ).first()
                if row is not None:
                    record_consent_change(
                        conn,
                        row.customer_key,
                        row.channel,
                        CONSENT_PURPOSES,
                        "withdrawn",
                        origin="provider_optout",
                        method=f"opted out at the provider ({result.error_code})",
                        now=now,
                    )
                    follow["opt_outs_recorded"] += 1
    return dict(follow)


def reconcile(
    engine: Engine,
    cycle_id: int,
    senders: Mapping[str, Sender],
    owner: int,
    now: datetime,
    lease_seconds: float,
    grace_seconds: float,
    email_events: bool,
    shard: Shard | None = None,
) -> dict[str, int]:
    """Settle messages whose outcome was lost: a dead dispatcher's `sending` claims and `in_doubt` sends.

    Found at the provider: sent. Provably absent (a lookup found nothing, or no webhook event arrived
    within the grace period): queued again in this cycle. Otherwise it stays in doubt; nothing is
    resent blindly.
    """
    m = s.messages
    with engine.connect() as conn:
        rows = read_frame(
            conn,
            select(m.c.message_key, m.c.channel, m.c.status, m.c.claimed_at, m.c.claimed_by).where(
                m.c.status.in_(["sending", "in_doubt"]), in_shard(m.c.customer_key, shard)
            ),
        )
    if rows.empty:
        return {}
    owners = {int(o) for o in rows["claimed_by"].dropna()}
    dead = dead_owners(engine, owners, owner)
    lease_cut = pd.Timestamp(now - timedelta(seconds=lease_seconds))
    grace_cut = pd.Timestamp(now - timedelta(seconds=grace_seconds))
    claimed = pd.to_datetime(rows["claimed_at"], utc=True)
    orphaned = (rows["status"] == "sending") & (
        rows["claimed_by"].isna()
        | rows["claimed_by"].isin(list(dead))
        & ((engine.dialect.name == "postgresql") | (claimed < lease_cut))
    )
    work = rows.loc[orphaned | (rows["status"] == "in_doubt")]
    if work.empty:
        return {}
    tally: Counter[str] = Counter()
    found: list[SendResult] = []
    resend: list[str] = []
    doubt: list[str] = []
    for channel, group in work.groupby("channel"):
        keys = group["message_key"].astype(str).tolist()
        old = set(group.loc[claimed.loc[group.index] < grace_cut, "message_key"].astype(str))
        crashed = set(group.loc[group["status"] == "sending", "message_key"].astype(str))
        sender = senders[str(channel)]
        if getattr(sender, "reconciles_by_lookup", True):
            answers = sender.reconcile(keys)
            for key in keys:
                result = answers.get(key)
                if result is not None and result.status is SendStatus.SENT:
                    found.append(result)
                elif result is None and (key in crashed or key in old):
                    resend.append(key)
                else:
                    doubt.append(key)
        else:
            with engine.connect() as conn:
                evidence = set(in_doubt_evidence(conn, keys)["message_key"])
            for key in keys:
                if key in evidence:
                    found.append(SendResult(key, SendStatus.SENT, getattr(sender, "provider", str(channel))))
                elif email_events and key in old:
                    resend.append(key)
                else:
                    doubt.append(key)
    with engine.begin() as conn:
        for result in found:
            conn.execute(
                update(m)
                .where(m.c.message_key == result.message_key, m.c.status.in_(["sending", "in_doubt"]))
                .values(
                    status="sent",
                    provider=result.provider,
                    provider_message_id=result.provider_message_id,
                    sent_at=now,
                    updated_at=now,
                )
            )
        if resend:
            conn.execute(
                update(m)
                .where(m.c.message_key.in_(resend), m.c.status.in_(["sending", "in_doubt"]))
                .values(status="rendered", cycle_id=cycle_id, claimed_by=None, updated_at=now)
            )
        if doubt:
            conn.execute(
                update(m)
                .where(m.c.message_key.in_(doubt), m.c.status == "sending")
                .values(status="in_doubt", updated_at=now)
            )
        tally.update(confirmed_sent=len(found), sent_again=len(resend), still_in_doubt=len(doubt))
        audit(conn, "dispatch.reconciled", cycle_id=cycle_id, details=dict(tally))
    return dict(tally)


def _label_failures(batch: pd.DataFrame, markets: Mapping[str, Market]) -> list[str]:
    """Return the message keys whose marketing content lacks the market's advertising label."""
    bad = []
    columns = ("message_key", "purpose", "has_offer", "offer_removed", "market", "channel", "subject", "body")
    for key, purpose, has_offer, offer_removed, market_code, channel, subject, body in zip(
        *(batch[c].tolist() for c in columns), strict=True
    ):
        marketing = purpose == "marketing" or (bool(has_offer) and not bool(offer_removed))
        market = markets.get(str(market_code))
        label = required_label(market.rules, str(channel), marketing) if market else None
        if not labelled(subject if channel == "email" else body, label):
            bad.append(str(key))
    return bad


def _recheck(
    engine: Engine,
    batch: pd.DataFrame,
    cycle_id: int,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
    policy: str,
) -> tuple[set[str], Counter[str]]:
    """Run the gate again right before sending; return the keys that must not go now, and why."""
    tally: Counter[str] = Counter()
    with engine.begin() as conn:
        decisions, _ = decide_for(conn, batch, markets, hash_key, now, policy)
        shown = batch[["message_key", "has_offer", "offer_removed"]].rename(
            columns={"offer_removed": "shown_without"}
        )
        merged = decisions.merge(shown, on="message_key")
        # The gate may now strip an offer the rendered body still shows: render it again first.
        offer_dropped = (
            (merged["outcome"] == Outcome.ALLOWED.value)
            & merged["offer_removed"].astype(bool)
            & merged["has_offer"].astype(bool)
            & ~merged["shown_without"].astype(bool)
        )
        held = merged.loc[(merged["outcome"] != Outcome.ALLOWED.value) | offer_dropped]
        if not held.empty:
            insert_decisions(
                conn,
                decision_rows(
                    batch,
                    decisions.loc[decisions["message_key"].isin(held["message_key"])],
                    cycle_id,
                    "send",
                    now,
                ),
            )
            status = pd.Series("blocked", index=held.index)
            status[held["outcome"] == Outcome.DEFERRED.value] = "deferred"
            status[offer_dropped.loc[held.index]] = "queued"
            set_status(
                conn,
                pd.DataFrame(
                    {
                        "message_key": held["message_key"],
                        "status": status,
                        "deferred_until": held["deferred_until"].where(status == "deferred"),
                        "offer_removed": offer_dropped.loc[held.index] | False,
                        "claimed_by": None,
                    }
                ),
                now,
            )
            tally.update(
                blocked_at_send=int((status == "blocked").sum()),
                deferred_at_send=int((status == "deferred").sum()),
                rerender_without_offer=int((status == "queued").sum()),
            )
        unlabelled = _label_failures(batch.loc[~batch["message_key"].isin(held["message_key"])], markets)
        if unlabelled:
            labels = decisions.loc[decisions["message_key"].isin(unlabelled)].assign(
                outcome=Outcome.BLOCKED.value, reason=Reason.MISSING_LABEL.value, rule_ids="VN-01,SG-02"
            )
            insert_decisions(conn, decision_rows(batch, labels, cycle_id, "send", now))
            set_status(conn, pd.DataFrame({"message_key": unlabelled, "status": "blocked"}), now)
            tally["blocked_at_send"] += len(unlabelled)
    return set(held["message_key"]) | set(unlabelled), tally


_OUTBOUND_COLUMNS = (
    "message_key",
    "channel",
    "email",
    "phone_e164",
    "body",
    "purpose",
    "playbook",
    "step",
    "subject",
    "body_html",
    "template",
    "locale",
    "template_variables",
)


def _outbounds(frame: pd.DataFrame) -> list[Outbound]:
    """Return the claimed rows of `frame` as messages ready to leave, in claim order."""
    out = []
    for (
        key,
        channel,
        email,
        phone,
        body,
        purpose,
        playbook,
        step,
        subject,
        html,
        template,
        locale,
        values,
    ) in zip(*(frame[c].tolist() for c in _OUTBOUND_COLUMNS), strict=True):
        out.append(
            Outbound(
                message_key=key,
                channel=channel,
                to=str(email if channel == "email" else phone),
                body=body,
                purpose=purpose,
                category=f"{playbook}:{step}",
                subject=subject,
                html=html,
                template=template,
                locale=locale,
                variables={str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else None,
            )
        )
    return out


@dataclass
class _Claimed:
    """A claimed batch after the send-time re-check: the rows claimed and the messages that may go."""

    frame: pd.DataFrame
    outbound: list[Outbound]
    held: Counter[str]

    @property
    def customers(self) -> frozenset[str]:
        """Return the customers of the messages that may go."""
        return frozenset(
            self.frame.loc[
                self.frame["message_key"].isin([m.message_key for m in self.outbound]), "customer_key"
            ]
        )


def _claim(
    engine: Engine,
    cycle_id: int,
    owner: int,
    batch_size: int,
    markets: Mapping[str, Market],
    hash_key: bytes,
    clock: Callable[[], datetime],
    policy: str,
    shard: Shard | None = None,
) -> _Claimed | None:
    """Claim the next batch and re-check it; None when nothing is left to send."""
    now = clock()
    # The claim commits before any provider call, so a crash leaves `sending`, never a resend.
    with engine.begin() as conn:
        frame = claim_batch(conn, cycle_id, batch_size, now, owner, shard)
    if frame.empty:
        return None
    stopped, held = _recheck(engine, frame, cycle_id, markets, hash_key, now, policy)
    sendable = frame.loc[~frame["message_key"].isin(stopped)] if stopped else frame
    return _Claimed(frame, _outbounds(sendable), held)


def _send(
    senders: Mapping[str, Sender], batch: Sequence[Outbound], pool: ThreadPoolExecutor
) -> tuple[list[SendResult], BaseException | None, list[str]]:
    """Send a batch, channels side by side; return the results, the first failure, the unstarted keys."""
    groups: dict[str, list[Outbound]] = {}
    for msg in batch:
        groups.setdefault(msg.channel, []).append(msg)
    outcomes: dict[str, list[SendResult] | BaseException] = {}
    if len(groups) == 1:
        [(channel, messages)] = groups.items()
        try:
            outcomes[channel] = senders[channel].send(messages)
        except SendInterrupted as stop:
            outcomes[channel] = stop
    else:
        futures = {
            channel: pool.submit(senders[channel].send, messages) for channel, messages in groups.items()
        }
        wait(futures.values())
        for channel, future in futures.items():
            error = future.exception()
            outcomes[channel] = future.result() if error is None else error
    results: list[SendResult] = []
    failure: BaseException | None = None
    unstarted: list[str] = []
    for channel, outcome in outcomes.items():
        if not isinstance(outcome, BaseException):
            results.extend(outcome)
            continue
        if isinstance(outcome, SendInterrupted):
            results.extend(outcome.results)
            done = {r.message_key for r in outcome.results}
            unstarted.extend(m.message_key for m in groups[channel] if m.message_key not in done)
        if failure is None:
            failure = outcome
    return results, failure, unstarted


def dispatch_cycle(
    engine: Engine,
    cycle_id: int,
    senders: Mapping[str, Sender],
    markets: Mapping[str, Market],
    hash_key: bytes,
    batch_size: int,
    clock: Callable[[], datetime] = utcnow,
    *,
    lease_seconds: float = 600.0,
    grace_seconds: float = 900.0,
    email_events: bool = False,
    on_progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Send every rendered message of the cycle (of one shard), batch by batch, re-checking consent first.

    `on_progress` is told how many messages have been handled after each batch.
    """
    stats: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    handled = 0
    with (
        dispatcher_lease(engine) as owner,
        ThreadPoolExecutor(1, thread_name_prefix="dispatch-claim") as claimer,
        ThreadPoolExecutor(1, thread_name_prefix="dispatch-settle") as settler,
        ThreadPoolExecutor(max(len(senders), 1), thread_name_prefix="dispatch-send") as channels,
    ):
        reconciled = reconcile(
            engine, cycle_id, senders, owner, clock(), lease_seconds, grace_seconds, email_events, shard
        )
        # The rules cannot change during a run: hashing them for every batch cost ~4 ms a re-check.
        with engine.begin() as conn:
            policy = record_policy(conn, markets)

        def claim_next() -> _Claimed | None:
            return _claim(engine, cycle_id, owner, batch_size, markets, hash_key, clock, policy, shard)

        ahead: Future[_Claimed | None] | None = claimer.submit(claim_next)
        settling: deque[Future[dict[str, int]]] = deque()
        unstarted: list[str] = []
        # Customers of the two batches before: still unsettled while the next one was re-checked.
        recent: deque[frozenset[str]] = deque(maxlen=2)
        try:
            while ahead is not None:
                batch = ahead.result()
                ahead = None
                if batch is None:
                    break
                customers = batch.customers
                overlap = customers & frozenset().union(*recent)
                if overlap:
                    # Frequency caps count sent messages: a customer met in a batch still unsettled when
                    # this one was re-checked is re-checked once that batch is settled.
                    while settling:
                        stats.update(settling.popleft().result())
                    _recheck_late(engine, batch, overlap, cycle_id, markets, hash_key, clock(), policy)
                recent.append(customers)
                ahead = claimer.submit(claim_next)
                stats.update(batch.held)
                results, failure, unstarted = _send(senders, batch.outbound, channels)
                settling.append(settler.submit(settle, engine, results, clock()))
                channel_of = {m.message_key: m.channel for m in batch.outbound}
                for r in results:
                    stats[r.status.value] += 1
                    by_channel[f"{channel_of[r.message_key]}:{r.status.value}"] += 1
                if failure is not None:
                    raise failure
                handled += len(batch.frame)
                if on_progress is not None:
                    on_progress(handled)
                while settling and settling[0].done():
                    stats.update(settling.popleft().result())
            while settling:
                stats.update(settling.popleft().result())
        except BaseException:
            _wind_down(engine, ahead, settling, owner, clock(), unstarted)
            raise
    return {
        "sent": stats["sent"],
        "failed": stats["failed"],
        "in_doubt": stats["in_doubt"],
        "blocked_at_send": stats["blocked_at_send"],
        "deferred_at_send": stats["deferred_at_send"],
        "rerender_without_offer": stats["rerender_without_offer"],
        "fallback_queued": stats["fallback_queued"],
        "opt_outs_recorded": stats["opt_outs_recorded"],
        "by_channel": dict(sorted(by_channel.items())),
        "reconciled": reconciled,
    }


def _recheck_late(
    engine: Engine,
    batch: _Claimed,
    customers: frozenset[str],
    cycle_id: int,
    markets: Mapping[str, Market],
    hash_key: bytes,
    now: datetime,
    policy: str,
) -> None:
    """Re-check the batch's messages to `customers` again and drop the ones that must not go now."""
    going = {m.message_key for m in batch.outbound}
    frame = batch.frame
    subset = frame.loc[frame["customer_key"].isin(customers) & frame["message_key"].isin(going)]
    stopped, held = _recheck(engine, subset, cycle_id, markets, hash_key, now, policy)
    batch.held.update(held)
    if stopped:
        batch.outbound = [m for m in batch.outbound if m.message_key not in stopped]


def _wind_down(
    engine: Engine,
    ahead: Future[_Claimed | None] | None,
    settling: deque[Future[dict[str, int]]],
    owner: int,
    now: datetime,
    unstarted: Sequence[str] = (),
) -> None:
    """After a failure: store the outcomes known and give back every claim that never started."""
    for future in settling:
        if future.exception() is not None:
            log.error("settling a batch failed (%s)", type(future.exception()).__name__)
    keys = list(unstarted)
    if ahead is not None and ahead.exception() is None:
        unsent = ahead.result()
        if unsent is not None:
            keys.extend(m.message_key for m in unsent.outbound)
    if not keys:
        return
    try:
        with engine.begin() as conn:
            release_claims(conn, keys, owner, now)
    except Exception as exc:
        # Left as `sending`, the claims are reconciled by the next run like a crashed dispatcher's.
        log.error("giving back %s unsent claims failed (%s)", len(keys), type(exc).__name__)


def merge_stats(first: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Add the counts of a follow-up dispatch round to the first round's."""
    out = dict(first)
    for key, value in more.items():
        if isinstance(value, int):
            out[key] = out.get(key, 0) + value
        elif key == "by_channel":
            merged = Counter(out.get(key, {}))
            merged.update(value)
            out[key] = dict(sorted(merged.items()))
    return out


def throttled(
    every: float, clock: Callable[[], float] = time.monotonic
) -> Callable[[Callable[[int], None]], Callable[[int], None]]:
    """Wrap a callback so it runs at most once per `every` seconds; the first call always runs."""

    def wrap(callback: Callable[[int], None]) -> Callable[[int], None]:
        last = -math.inf

        def call(value: int) -> None:
            nonlocal last
            now = clock()
            if now - last >= every:
                last = now
                callback(value)

        return call

    return wrap


@task(name="dispatch", **STEP, **IO_RETRIES)
def dispatch(cycle_id: int, as_of: Any = None, shard: Shard | None = None) -> dict[str, Any]:
    """Send the cycle's rendered messages; fallbacks and offer-less re-renders get up to two more rounds."""
    from tasks.render import render_queued

    rt = get_runtime()
    senders = {c: rt.sender(c) for c in ("email", "sms", "whatsapp")}
    settings = rt.settings
    with rt.engine.connect() as conn:
        total = count_status(conn, cycle_id, "rendered", shard)
    progress = create_progress_artifact(
        progress=0.0, key="dispatch-progress", description=f"Cycle {cycle_id}: {total:,} messages to send"
    )
    assert isinstance(progress, UUID)  # the sync call in a sync task returns the id, not a coroutine

    # Each update is a round trip to the Prefect API on the send path (20-60 ms on a busy machine, one
    # per batch of 1,000); a progress bar needs no more than one a second.
    @throttled(every=1.0)
    def report(handled: int) -> None:
        update_progress_artifact(progress, min(100.0, 100.0 * handled / max(total, 1)))

    def run() -> dict[str, Any]:
        return dispatch_cycle(
            rt.engine,
            cycle_id,
            senders,
            rt.markets,
            settings.pii_hash_key.get_secret_value().encode(),
            settings.dispatch_batch_size,
            lease_seconds=settings.claim_lease_seconds,
            grace_seconds=settings.in_doubt_grace_seconds,
            email_events=bool(settings.sendgrid_webhook_public_key.get_secret_value()),
            on_progress=report,
            shard=shard,
        )

    stats = run()
    update_progress_artifact(progress, 100.0)
    for _ in range(2):
        if not (stats.get("fallback_queued") or stats.get("rerender_without_offer")):
            break
        render_queued(cycle_id, as_of, shard)
        stats = merge_stats(stats, run())
    get_run_logger().info(
        "dispatched: %s sent, %s failed, %s in doubt, %s blocked and %s deferred at send, %s fallbacks",
        stats["sent"],
        stats["failed"],
        stats["in_doubt"],
        stats["blocked_at_send"],
        stats["deferred_at_send"],
        stats["fallback_queued"],
    )
    return stats
