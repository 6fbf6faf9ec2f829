"""Render: each queued message in the customer's language, with dates and money formatted by Babel."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import TemplateError
from prefect import get_run_logger, task
from sqlalchemy import Connection

from tasks._prefect import STEP
from tasks.channels.rendering import (
    Renderer,
    TemplateMissing,
    format_long_date,
    format_money,
    format_share,
    label,
)
from tasks.channels.whatsapp_registry import WhatsAppRegistry
from tasks.domain.consent import required_label
from tasks.domain.markets import Market
from tasks.domain.playbook import Playbook, PlaybookKind
from tasks.domain.shards import Shard
from tasks.runtime import get_runtime
from tasks.sources.overlap import BackgroundWrites
from tasks.store.repository import read_instalment_amounts, read_render_context, set_status, utcnow

# An HTML email body is 10-20 KB: a 125k-customer shard's 20k bodies at once held ~300 MB.
RENDER_CHUNK = 2_000


@lru_cache(maxsize=100_000)
def _money(amount: float, currency: str, locale: str) -> str:
    return format_money(amount, currency, locale)


@lru_cache(maxsize=100_000)
def _day(day: date, locale: str) -> str:
    return format_long_date(day, locale)


@lru_cache(maxsize=1_000)
def _share(value: float, locale: str) -> str:
    return format_share(value, locale)


def _date(value: Any) -> date:
    # The loop passes dates already converted for the whole frame; other callers may pass timestamps.
    return value if type(value) is date else pd.Timestamp(value).date()


def link_token(secret: bytes, message_key: str) -> str:
    """Return an opaque per-message token for links, so no customer data appears in URLs."""
    return hmac.new(secret, message_key.encode(), hashlib.sha256).hexdigest()[:20]


def message_context(
    row: dict[str, Any],
    playbook: Playbook,
    step_id: str,
    as_of: date,
    *,
    company: str,
    templates_dir: Path,
    link_secret: bytes,
    link_base: str,
    unsubscribe_base: str,
) -> dict[str, Any]:
    """Return the template context of one message (instalment fields filled for repayment messages)."""
    locale = row["locale"]
    term_end = _date(row["term_end"])
    anchor = _date(row["anchor_date"])
    step = playbook.step(step_id)
    offer = step.offer
    token = link_token(link_secret, row["message_key"])
    days = (term_end - as_of).days
    base = link_base.rstrip("/")
    dunning = playbook.kind is PlaybookKind.REPAYMENT
    amount = row.get("amount")
    if dunning and (amount is None or pd.isna(amount)):
        # A payment reminder without the amount is worse than none: fail the render, keep it unsent.
        raise ValueError(f"no instalment found for {row['message_key']}")
    return {
        "first_name": row["first_name"] or "",
        "last_name": row["last_name"] or "",
        "company": company,
        "product_name": label(templates_dir, f"product.{row['product']}", locale),
        "contract_ref": row["contract_key"],
        "term_end": _day(term_end, locale),
        "days_left": max(days, 0),
        "days_overdue": max(-days, 0),
        "price": _money(float(row["price"]), row["currency"], locale),
        "renew_url": f"{base}/{token}",
        "unsubscribe_url": f"{unsubscribe_base.rstrip('/')}/{token}",
        "is_marketing": is_marketing(row),
        "offer_discount": _share(offer.discount, locale) if offer else "",
        "offer_deadline": _day(anchor - timedelta(days=offer.deadline_days), locale) if offer else "",
        "amount_due": _money(float(amount), row["instalment_currency"], locale)
        if dunning and amount is not None
        else "",
        "due_date": _day(anchor, locale) if dunning else "",
        "days_past_due": max((as_of - anchor).days, 0) if dunning else 0,
        "days_to_due": max((anchor - as_of).days, 0) if dunning else 0,
        "pay_url": f"{base.rsplit('/', 1)[0]}/pay/{token}",
    }


# Every name a template or a WhatsApp registry entry may use (message_context builds exactly these).
CONTEXT_KEYS = frozenset(
    {
        "first_name",
        "last_name",
        "company",
        "product_name",
        "contract_ref",
        "term_end",
        "days_left",
        "days_overdue",
        "price",
        "renew_url",
        "unsubscribe_url",
        "is_marketing",
        "offer_discount",
        "offer_deadline",
        "amount_due",
        "due_date",
        "days_past_due",
        "days_to_due",
        "pay_url",
    }
)


def check_whatsapp_steps(playbook: Playbook, markets: Iterable[Market], registry: WhatsAppRegistry) -> None:
    """Raise ValueError naming the step, template and locale when a WhatsApp step has no approved template.

    Checked when the cycle starts, so a missing ContentSid or variable stops the plan, not the send.
    """
    problems = []
    for step in playbook.steps:
        if "whatsapp" not in [c.value for c in step.channels]:
            continue
        for market in markets:
            for locale in dict.fromkeys((market.default_locale, *market.locales)):
                try:
                    _, names = registry.lookup(step.template, locale)
                except LookupError as exc:
                    problems.append(f"step {step.id}: {exc}")
                    continue
                unknown = sorted(set(names) - CONTEXT_KEYS)
                if unknown:
                    problems.append(
                        f"step {step.id}: {step.template}/{locale} uses unknown variables {unknown}"
                    )
    if problems:
        raise ValueError("WhatsApp templates not ready: " + "; ".join(dict.fromkeys(problems)))


def whatsapp_variables(
    registry: WhatsAppRegistry | None, row: dict[str, Any], ctx: Mapping[str, Any]
) -> dict[str, str] | None:
    """Return the named values an approved WhatsApp template needs (a gap fails the render, not the send)."""
    if registry is None:
        return None
    registry.content_variables(row["template"], row["locale"], ctx)
    _, names = registry.lookup(row["template"], row["locale"])
    return {name: str(ctx[name]) for name in names}


def with_instalments(conn: Connection, rows: pd.DataFrame) -> pd.DataFrame:
    """Add the instalment amount and currency to repayment messages (their key names the instalment)."""
    target = rows["message_key"].str.split(":").str[-4]
    found = read_instalment_amounts(conn, target.unique().tolist())
    amounts = found.set_index("instalment_key")
    return rows.assign(
        amount=target.map(amounts["amount"]).astype("object"),
        instalment_currency=target.map(amounts["currency"]),
    )


def is_marketing(row: dict[str, Any]) -> bool:
    """Return whether the message's content is marketing: its purpose, or a kept reward offer block."""
    return row["purpose"] == "marketing" or (bool(row["has_offer"]) and not bool(row["offer_removed"]))


def render_cycle(
    conn: Connection,
    cycle_id: int,
    renderer: Renderer,
    playbook_of: Callable[[str], Playbook],
    as_of: date,
    *,
    markets: Mapping[str, Market],
    whatsapp: WhatsAppRegistry | None = None,
    company: str,
    link_secret: bytes,
    link_base: str,
    unsubscribe_base: str,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Render every queued message of the cycle (of one shard) and store the result; failures are kept."""
    rows = read_render_context(conn, cycle_id, shard)
    # Reward notices carry their own context (value, expiry, voucher code): tasks.rewards renders them.
    rows = with_instalments(conn, rows.loc[rows["playbook"] != "rewards"].reset_index(drop=True))
    now = utcnow()
    fallback, failures = 0, 0

    def one(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal fallback, failures
        try:
            ctx = message_context(
                row,
                playbook_of(str(row["playbook"])),
                row["step"],
                as_of,
                company=company,
                templates_dir=renderer.templates_dir,
                link_secret=link_secret,
                link_base=link_base,
                unsubscribe_base=unsubscribe_base,
            )
            market = markets.get(str(row["market"]))
            label = (
                required_label(market.rules, str(row["channel"]), is_marketing(row))
                if market is not None
                else None
            )
            offer = (
                bool(row["has_offer"]) and not bool(row["offer_removed"]) and row["purpose"] != "marketing"
            )
            done = renderer.render(
                row["channel"], row["template"], row["locale"], ctx, offer=offer, label=label
            )
            variables = whatsapp_variables(whatsapp, row, ctx) if row["channel"] == "whatsapp" else None
        except (TemplateMissing, TemplateError, KeyError, ValueError, LookupError) as exc:
            failures += 1
            return {
                "message_key": row["message_key"],
                "status": "render_failed",
                "error_code": "RENDER",
                "error_detail": f"{type(exc).__name__}: {str(exc)[:300]}",
            }
        if done.locale.split("-")[0] != str(row["locale"]).split("-")[0]:
            fallback += 1
        return {
            "message_key": row["message_key"],
            "status": "rendered",
            **done.columns(),
            "template_variables": variables,
            "rendered_at": now,
        }

    def store(ok: pd.DataFrame, failed: pd.DataFrame) -> None:
        set_status(conn, ok.drop(columns=[c for c in ("error_code", "error_detail") if c in ok.columns]), now)
        if len(failed):
            set_status(conn, failed[["message_key", "status", "error_code", "error_detail"]], now)

    rendered, segments = 0, 0
    locales: Counter[str] = Counter()
    encodings: Counter[str] = Counter()
    # The database stores one chunk (an UPDATE of 2,000 bodies: PostgreSQL's work, GIL released) while
    # this thread renders the next; only one thread uses the connection at a time.
    writes = BackgroundWrites()
    try:
        for first in range(0, len(rows), RENDER_CHUNK):
            chunk = rows.iloc[first : first + RENDER_CHUNK]
            dates = {c: pd.to_datetime(chunk[c]).dt.date for c in ("term_end", "anchor_date")}
            records: list[dict[str, Any]] = chunk.assign(**dates).to_dict("records")  # type: ignore[assignment]
            frame = pd.DataFrame([one(row) for row in records])
            ok = frame.loc[frame["status"] == "rendered"]
            failed = frame.loc[frame["status"] == "render_failed"]
            writes.submit(partial(store, ok, failed))
            if len(ok):
                rendered += len(ok)
                locales.update(ok["locale"].astype(str))
                sms = ok.loc[ok["encoding"].notna()]
                segments += int(sms["segments"].sum())
                encodings.update(sms["encoding"].astype(str))
    finally:
        writes.close()
    by_channel = rows["channel"].value_counts().sort_index() if len(rows) else pd.Series(dtype="int64")
    return {
        "rendered": rendered,
        "failed": failures,
        "by_channel": {str(k): int(v) for k, v in by_channel.items()},
        "by_locale": dict(sorted(locales.items())),
        "language_fallbacks": fallback,
        "sms_segments": segments,
        "sms_by_encoding": dict(encodings.most_common()),
    }


def render_queued(cycle_id: int, as_of: date | None, shard: Shard | None = None) -> dict[str, Any]:
    """Render the cycle's queued messages with the process runtime (used by the task and by dispatch)."""
    rt = get_runtime()
    settings = rt.settings
    day = as_of or utcnow().date()
    with rt.engine.begin() as conn:
        stats = render_cycle(
            conn,
            cycle_id,
            rt.renderer,
            rt.playbook,
            day,
            markets=rt.markets,
            whatsapp=rt.whatsapp_registry,
            company=settings.company_name,
            link_secret=settings.pii_hash_key.get_secret_value().encode(),
            link_base=str(settings.renew_base_url),
            unsubscribe_base=str(settings.unsubscribe_base_url),
            shard=shard,
        )
        # Imported here: tasks.rewards renders through this module, so a top-level import would be circular.
        from tasks.rewards import render_notifications

        stats["reward_notices"] = render_notifications(
            conn,
            cycle_id,
            rt.renderer,
            company=settings.company_name,
            link_secret=settings.pii_hash_key.get_secret_value().encode(),
            link_base=str(settings.renew_base_url),
            unsubscribe_base=str(settings.unsubscribe_base_url),
            shard=shard,
        )
    return stats


@task(name="render", **STEP)
def render(cycle_id: int, as_of: date, shard: Shard | None = None) -> dict[str, Any]:
    """Render the cycle's queued messages."""
    stats = render_queued(cycle_id, as_of, shard)
    get_run_logger().info("rendered %s messages (%s failed)", stats["rendered"], stats["failed"])
    return stats
