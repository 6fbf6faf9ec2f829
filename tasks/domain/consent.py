"""The consent gate: one explainable decision per message, from the consent ledger and the market's rules.

Rule ids refer to the rules table in ../shared/reference/compliance.md. The gate answers, for one
message at one moment: may it go now, later (deferred to the next allowed slot), or never (blocked) —
and on what basis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from tasks.domain.rules import MarketRules, Window, next_allowed

GATE_VERSION = "gate-v2.0"


class Outcome(StrEnum):
    """What the gate decided for one planned message."""

    ALLOWED = "allowed"
    DEFERRED = "deferred"
    BLOCKED = "blocked"


class Reason(StrEnum):
    """Why the gate decided as it did."""

    CONTRACT_BASIS = "CONTRACT_BASIS"
    CONSENT = "CONSENT"
    SOFT_OPT_IN = "SOFT_OPT_IN"
    IMPLIED_CONSENT = "IMPLIED_CONSENT"
    OUTSIDE_WINDOW = "OUTSIDE_WINDOW"
    ERASED = "ERASED"
    SUPPRESSED = "SUPPRESSED"
    THIRD_PARTY_CONTACT_FORBIDDEN = "THIRD_PARTY_CONTACT_FORBIDDEN"
    NO_ADDRESS = "NO_ADDRESS"
    NO_WHATSAPP_OPT_IN = "NO_WHATSAPP_OPT_IN"
    OBJECTION = "OBJECTION"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    NO_CHANNEL_CONSENT = "NO_CHANNEL_CONSENT"
    CONSENT_BUNDLED = "CONSENT_BUNDLED"
    DOI_NOT_CONFIRMED = "DOI_NOT_CONFIRMED"
    NO_WRITTEN_CONSENT = "NO_WRITTEN_CONSENT"
    CONSENT_EXPIRED = "CONSENT_EXPIRED"
    SOFT_OPT_IN_NOT_ALLOWED = "SOFT_OPT_IN_NOT_ALLOWED"
    NO_SALE = "NO_SALE"
    NO_OPT_OUT_NOTICE = "NO_OPT_OUT_NOTICE"
    EBR_EXPIRED = "EBR_EXPIRED"
    FREQUENCY_CAP = "FREQUENCY_CAP"
    NO_SLOT = "NO_SLOT"
    MISSING_LABEL = "MISSING_LABEL"


ALLOWING = frozenset({Reason.CONTRACT_BASIS, Reason.CONSENT, Reason.SOFT_OPT_IN, Reason.IMPLIED_CONSENT})

EXPLANATIONS: dict[Reason, str] = {
    Reason.CONTRACT_BASIS: "a service or dunning message rests on the contract (GDPR Art. 6(1)(b))",
    Reason.CONSENT: "the customer gave consent for marketing on this channel, and it is on record",
    Reason.SOFT_OPT_IN: "soft opt-in: address obtained in a sale, own similar product, opt-out offered",
    Reason.IMPLIED_CONSENT: "implied consent from an existing business relationship, not yet expired",
    Reason.OUTSIDE_WINDOW: "outside the allowed contact hours or days in the customer's time zone",
    Reason.ERASED: "the customer's personal data was erased",
    Reason.SUPPRESSED: "the address is on the suppression list",
    Reason.THIRD_PARTY_CONTACT_FORBIDDEN: "collections must not contact anyone but the customer here",
    Reason.NO_ADDRESS: "there is no valid address for this channel",
    Reason.NO_WHATSAPP_OPT_IN: "business-initiated WhatsApp needs the customer's WhatsApp opt-in",
    Reason.OBJECTION: "the customer objected to direct marketing (GDPR Art. 21), on every channel",
    Reason.CONSENT_WITHDRAWN: "the customer withdrew consent or opted out for this channel and purpose",
    Reason.NO_CHANNEL_CONSENT: "marketing needs consent for this very channel, and none is on record",
    Reason.CONSENT_BUNDLED: "the only consent came bundled with accepting the terms: not valid",
    Reason.DOI_NOT_CONFIRMED: "the consent was never confirmed by double opt-in",
    Reason.NO_WRITTEN_CONSENT: "marketing texts need prior express written consent here",
    Reason.CONSENT_EXPIRED: "the consent has expired",
    Reason.SOFT_OPT_IN_NOT_ALLOWED: "this market does not allow the soft opt-in on this channel",
    Reason.NO_SALE: "the soft opt-in needs an actual sale to this customer, and none is on record",
    Reason.NO_OPT_OUT_NOTICE: "the soft opt-in needs proof the customer was offered an opt-out at collection",
    Reason.EBR_EXPIRED: "the implied consent from the business relationship has expired",
    Reason.FREQUENCY_CAP: "the customer already got the most messages of this kind allowed in the period",
    Reason.NO_SLOT: "no allowed contact slot in the next two weeks",
    Reason.MISSING_LABEL: "a marketing message lacks the advertising label this market requires",
}


@cache
def zone(key: str) -> ZoneInfo:
    """Return the time zone `key`, loaded once per process."""
    # ZoneInfo keeps only its 8 latest zones alive, so with more markets it re-read the tz files.
    return ZoneInfo(key)


def required_label(rules: MarketRules, channel: str, marketing: bool) -> str | None:
    """Return the advertising label a marketing message must start with (VN [QC], SG <ADV>), if any."""
    return rules.consent.marketing_labels.get(channel) if marketing else None


def labelled(text: str | None, label: str | None) -> bool:
    """Return whether `text` (SMS body or email subject) starts with the required label."""
    return label is None or (text or "").lstrip().startswith(label)


@dataclass(frozen=True)
class ConsentRecord:
    """One consent or objection with its evidence."""

    consent_id: int
    channel: str
    purpose: str
    status: str
    lawful_basis: str = "consent"
    captured_at: datetime | None = None
    withdrawn_at: datetime | None = None
    doi_confirmed_at: datetime | None = None
    expires_at: datetime | None = None
    sale_reference: str | None = None
    notice_version: str | None = None
    bundled: bool = False
    written: bool = False

    @property
    def effective_at(self) -> datetime:
        """Return when the record took effect (its withdrawal, else its capture)."""
        moment = self.withdrawn_at or self.captured_at
        return moment or datetime.min.replace(tzinfo=ZoneInfo("UTC"))


@dataclass(frozen=True)
class Subject:
    """The customer as the gate sees them: reachability, erasure, suppression and relationship."""

    customer_key: str
    market: str
    timezone: str
    region: str | None = None
    has_email: bool = False
    has_phone: bool = False
    erased: bool = False
    suppressed: frozenset[str] = frozenset()
    contract_keys: frozenset[str] = frozenset()
    relationship_end: date | None = None
    consents: tuple[ConsentRecord, ...] = ()

    def current(self, channel: str, purpose: str) -> ConsentRecord | None:
        """Return the latest effective record for (channel, purpose), or None."""
        matches = [c for c in self.consents if c.channel == channel and c.purpose == purpose]
        return max(matches, key=lambda c: (c.effective_at, c.consent_id)) if matches else None


@dataclass(frozen=True)
class Request:
    """One message the gate is asked about."""

    message_key: str
    channel: str
    purpose: str
    has_offer: bool = False
    recipient: str = "customer"
    group: str = ""
    send_rule: str = "all"


@dataclass(frozen=True)
class Decision:
    """The gate's answer with everything an auditor needs to replay it."""

    message_key: str
    outcome: Outcome
    reason: Reason
    rule_ids: tuple[str, ...]
    consent_id: int | None = None
    deferred_until: datetime | None = None
    offer_removed: bool = False
    effective_purpose: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Counter:
    """Messages already sent or allowed per (customer, channel, purpose, local period)."""

    counts: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def get(self, key: tuple[str, str, str, str]) -> int:
        """Return the count for a key."""
        return self.counts.get(key, 0)

    def add(self, key: tuple[str, str, str, str], n: int = 1) -> None:
        """Add `n` to a key."""
        self.counts[key] = self.counts.get(key, 0) + n


def period_key(local: datetime, per: str) -> str:
    """Return the local calendar day (2026-11-22) or ISO week (2026-W47) of a moment."""
    if per == "day":
        return local.date().isoformat()
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def _blocked(req: Request, reason: Reason, rules: tuple[str, ...], **kw: object) -> Decision:
    return Decision(req.message_key, Outcome.BLOCKED, reason, rules, **kw)  # type: ignore[arg-type]


def _months_after(moment: date, months: int) -> date:
    month = moment.month - 1 + months
    year = moment.year + month // 12
    month = month % 12 + 1
    for day in (moment.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def marketing_basis(
    channel: str, subject: Subject, rules: MarketRules, now: datetime
) -> tuple[Reason, tuple[str, ...], ConsentRecord | None, str]:
    """Return (reason, rule ids, record, note) for a marketing message on `channel` to `subject`."""
    policy = rules.consent
    objection = subject.current("all", "marketing")
    if objection is not None and objection.status == "withdrawn":
        return Reason.OBJECTION, ("EU-06",), objection, "general objection to direct marketing (Art. 21)"
    record = subject.current(channel, "marketing")
    if record is None:
        ids = ("EU-02", "WA-01") if channel == "whatsapp" else ("EU-02",)
        return Reason.NO_CHANNEL_CONSENT, ids, None, ""
    if record.status == "withdrawn":
        return Reason.CONSENT_WITHDRAWN, ("EU-08",), record, f"{channel} marketing withdrawn (channel scope)"
    if record.expires_at is not None and record.expires_at <= now:
        return Reason.CONSENT_EXPIRED, ("EU-08",), record, f"expired {record.expires_at:%Y-%m-%d}"
    if record.lawful_basis == "soft_opt_in":
        if channel not in policy.soft_opt_in_channels:
            return Reason.SOFT_OPT_IN_NOT_ALLOWED, ("EU-03",), record, ""
        if not record.sale_reference or record.sale_reference not in subject.contract_keys:
            return Reason.NO_SALE, ("EU-03", "ES-01"), record, "no sale to this customer is on record"
        if policy.soft_opt_in_requires_notice and not record.notice_version:
            return Reason.NO_OPT_OUT_NOTICE, ("EU-03", "DE-02"), record, ""
        if policy.soft_opt_in_max_months is not None and record.captured_at is not None:
            until = _months_after(record.captured_at.date(), policy.soft_opt_in_max_months)
            if now.date() > until:
                return Reason.CONSENT_EXPIRED, ("EU-03",), record, f"soft opt-in window ended {until}"
        return Reason.SOFT_OPT_IN, ("EU-03",), record, ""
    if record.lawful_basis == "implied":
        end = record.expires_at.date() if record.expires_at is not None else None
        if end is None and policy.implied_consent_months is not None and subject.relationship_end is not None:
            end = _months_after(subject.relationship_end, policy.implied_consent_months)
        if end is None or now.date() > end:
            shown = end.isoformat() if end else "unknown"
            return Reason.EBR_EXPIRED, ("CA-01",), record, f"implied consent expired on {shown}"
        return Reason.IMPLIED_CONSENT, ("CA-01",), record, f"implied consent valid until {end}"
    if record.bundled and policy.bundled_consent_invalid:
        return Reason.CONSENT_BUNDLED, ("FR-01", "EU-08"), record, "captured only by accepting the terms"
    if channel in policy.double_opt_in_channels and record.doi_confirmed_at is None:
        return Reason.DOI_NOT_CONFIRMED, ("DE-01",) if channel == "email" else ("DE-03",), record, ""
    if channel in policy.written_consent_channels and not record.written:
        return Reason.NO_WRITTEN_CONSENT, ("US-01",), record, ""
    return Reason.CONSENT, ("EU-02", "EU-08"), record, ""


def decide_message(
    req: Request,
    subject: Subject | None,
    rules: MarketRules,
    now: datetime,
    counter: Counter,
    is_holiday: Callable[[date], bool],
    count: bool = True,
) -> Decision:
    """Decide one message at `now` (UTC); allowed ones count in `counter` for the caps when `count`."""
    if subject is None:
        return _blocked(req, Reason.NO_ADDRESS, ("ADDR-01",))
    if subject.erased:
        return _blocked(req, Reason.ERASED, ("EU-10",))
    if "all" in subject.suppressed or (req.purpose == "marketing" and "marketing" in subject.suppressed):
        return _blocked(req, Reason.SUPPRESSED, ("EU-07",))
    if req.recipient != "customer" and rules.consent.third_party_contact_forbidden:
        return _blocked(req, Reason.THIRD_PARTY_CONTACT_FORBIDDEN, _third_party_rules(subject.market))
    has_address = subject.has_email if req.channel == "email" else subject.has_phone
    if not has_address or req.recipient != "customer":
        return _blocked(req, Reason.NO_ADDRESS, ("ADDR-01",))
    if req.channel == "whatsapp" and req.purpose != "marketing":
        # WA-01: WhatsApp's business policy needs an opt-in naming us before any business-initiated
        # message; a marketing message is checked below against WhatsApp marketing consent itself.
        current = [subject.current("whatsapp", p) for p in ("service", "dunning", "marketing")]
        if not any(c is not None and c.status == "granted" for c in current):
            return _blocked(req, Reason.NO_WHATSAPP_OPT_IN, ("WA-01",))

    purpose, offer_removed = req.purpose, False
    rule_ids: list[str] = []
    notes: list[str] = []
    record: ConsentRecord | None = None
    if req.purpose == "marketing":
        reason, ids, record, note = marketing_basis(req.channel, subject, rules, now)
        rule_ids += ids
        if note:
            notes.append(note)
        if reason not in ALLOWING:
            return _blocked(req, reason, tuple(rule_ids), consent_id=_id(record), notes=tuple(notes))
    else:
        objection = subject.current(req.channel, req.purpose) or subject.current("all", req.purpose)
        if objection is not None and objection.status == "withdrawn":
            return _blocked(req, Reason.CONSENT_WITHDRAWN, ("EU-08",), consent_id=objection.consent_id)
        reason = Reason.CONTRACT_BASIS
        rule_ids.append("EU-01")
        if req.has_offer:
            mkt, ids, mkt_record, note = marketing_basis(req.channel, subject, rules, now)
            if mkt in ALLOWING:
                purpose, reason, record = "marketing", mkt, mkt_record
                rule_ids += ["EU-05", *ids]
                notes.append("offer block kept: the message counts as marketing")
            else:
                offer_removed = True
                rule_ids.append("EU-05")
                notes.append(f"offer block removed ({mkt.value}); sent as a {req.purpose} message")

    local_now = _local(now, subject.timezone)
    # A standby fallback is capped when it is actually used (the send-time check sees the failed
    # primary was never sent), not now, where it would count the primary twice.
    for cap in rules.caps if count else ():
        if purpose not in cap.purposes or req.channel not in cap.channels:
            continue
        key = _cap_key(
            subject.customer_key, req.channel if cap.per_channel else "*", purpose, cap.per, local_now
        )
        if counter.get(key) >= cap.max:
            return _blocked(
                req,
                Reason.FREQUENCY_CAP,
                (*rule_ids, cap.rule),
                consent_id=_id(record),
                notes=(*notes, f"at most {cap.max} per {cap.per}"),
            )

    windows = tuple(w for w in rules.windows if w.applies(purpose, req.channel, subject.region))
    outcome, why, ids, until, why_notes = Outcome.ALLOWED, reason, tuple(rule_ids), None, tuple(notes)
    if windows:
        slot = _slot(now, subject.timezone, windows, is_holiday)
        window_rules = tuple(w.rule for w in windows)
        if slot is None:
            outcome, why, ids = Outcome.BLOCKED, Reason.NO_SLOT, (*rule_ids, *window_rules)
        elif slot != local_now:
            outcome, why, ids = Outcome.DEFERRED, Reason.OUTSIDE_WINDOW, (*rule_ids, *window_rules)
            until = slot.astimezone(zone("UTC"))
            why_notes = (*notes, f"basis {reason.value}; next allowed {slot:%a %Y-%m-%d %H:%M} local")
    decision = Decision(
        req.message_key,
        outcome,
        why,
        ids,
        consent_id=_id(record),
        deferred_until=until,
        offer_removed=offer_removed,
        effective_purpose=purpose,
        notes=why_notes,
    )
    if outcome is not Outcome.ALLOWED:
        return decision
    if count:
        for cap in rules.caps:
            if purpose in cap.purposes and req.channel in cap.channels:
                channel = req.channel if cap.per_channel else "*"
                counter.add(_cap_key(subject.customer_key, channel, purpose, cap.per, local_now))
    return decision


@lru_cache(maxsize=1024)
def _local(now: datetime, timezone: str) -> datetime:
    """Return `now` in a time zone; a run decides thousands of messages at one moment in a few zones."""
    return now.astimezone(zone(timezone))


@lru_cache(maxsize=4096)
def _slot(
    now: datetime, timezone: str, windows: tuple[Window, ...], is_holiday: Callable[[date], bool]
) -> datetime | None:
    """Return the next allowed local moment from `now` in a zone (most messages of a run share one)."""
    return next_allowed(_local(now, timezone), list(windows), is_holiday)


def _cap_key(
    customer: str, channel: str, purpose: str, per: str, local: datetime
) -> tuple[str, str, str, str]:
    return (customer, channel, purpose, period_key(local, per))


def _id(record: ConsentRecord | None) -> int | None:
    return record.consent_id if record is not None else None


def _third_party_rules(market: str) -> tuple[str, ...]:
    return {"KE": ("KE-02",), "NG": ("NG-02",), "ID": ("ID-01",), "TH": ("TH-01",), "CA": ("CA-03",)}.get(
        market, ("THIRD-PARTY",)
    )


def seed_counter(
    sent: pd.DataFrame, subjects: Mapping[str, Subject], rules: Mapping[str, MarketRules]
) -> Counter:
    """Count already-sent messages per cap key, in each customer's local day and week."""
    counter = Counter()
    if sent.empty:
        return counter
    columns = zip(sent["customer_key"], sent["channel"], sent["purpose"], sent["sent_at"], strict=True)
    for customer, channel, purpose, sent_at in columns:
        subject = subjects.get(str(customer))
        if subject is None or subject.market not in rules:
            continue
        local = pd.Timestamp(sent_at).to_pydatetime().astimezone(zone(subject.timezone))
        for cap in rules[subject.market].caps:
            if purpose in cap.purposes and channel in cap.channels:
                scope = str(channel) if cap.per_channel else "*"
                counter.add(_cap_key(str(customer), scope, str(purpose), cap.per, local))
    return counter


def decide_all(
    requests: Iterable[Request],
    subjects: Mapping[str, Subject],
    customer_of: Mapping[str, str],
    rules: Mapping[str, MarketRules],
    now: datetime,
    counter: Counter,
    holidays: Mapping[str, Callable[[date], bool]],
) -> list[Decision]:
    """Decide requests in order; earlier allowed messages count against the caps of later ones.

    For a `send: first` step only the first usable channel counts; its fallbacks are decided too
    (so they can stand by) but do not use up the customer's allowance.
    """
    out = []
    satisfied: set[str] = set()
    no_rules = MarketRules()
    for req in requests:
        subject = subjects.get(customer_of.get(req.message_key, ""))
        market = subject.market if subject is not None else ""
        fallback = req.send_rule == "first" and req.group in satisfied
        decision = decide_message(
            req,
            subject,
            rules.get(market, no_rules),
            now,
            counter,
            holidays.get(market, _never),
            count=not fallback,
        )
        if req.send_rule == "first" and decision.outcome is not Outcome.BLOCKED:
            satisfied.add(req.group)
        out.append(decision)
    return out


def _never(_day: date) -> bool:
    return False


def decisions_frame(decisions: list[Decision], policy_version: str) -> pd.DataFrame:
    """Return decisions as rows for the store."""
    return pd.DataFrame(
        {
            "message_key": [d.message_key for d in decisions],
            "outcome": [d.outcome.value for d in decisions],
            "reason": [d.reason.value for d in decisions],
            "rule_ids": [",".join(dict.fromkeys(d.rule_ids)) for d in decisions],
            "consent_id": pd.array([d.consent_id for d in decisions], dtype="Int64"),
            "deferred_until": pd.to_datetime(
                pd.Series([d.deferred_until for d in decisions], dtype="object"), utc=True
            ),
            "offer_removed": [d.offer_removed for d in decisions],
            "effective_purpose": [d.effective_purpose or None for d in decisions],
            "notes": ["; ".join(d.notes) or None for d in decisions],
            "policy_version": policy_version,
        }
    )


def latest_consents(records: pd.DataFrame) -> pd.DataFrame:
    """Return the current record per (customer, channel, purpose): the latest captured or withdrawn."""
    if records.empty:
        return records.assign(effective_at=pd.Series(dtype="datetime64[ns, UTC]"))
    effective = pd.to_datetime(records["withdrawn_at"], utc=True).fillna(
        pd.to_datetime(records["captured_at"], utc=True)
    )
    ordered = records.assign(effective_at=effective).sort_values(["effective_at", "consent_id"])
    return ordered.drop_duplicates(["customer_key", "channel", "purpose"], keep="last")


def choose_channels(candidates: pd.DataFrame, decisions: pd.DataFrame) -> pd.Series:
    """Return each candidate's status: queued, deferred, standby (an unused fallback) or blocked.

    For `send: first` the lowest-ranked channel the gate allows (now or later) is used and the
    other allowed ones wait as standby, so a permanent failure on the first can fall back to the next.
    """
    df = candidates[["message_key", "contract_key", "step", "rank", "send_rule"]].merge(
        decisions[["message_key", "outcome"]], on="message_key", how="left"
    )
    usable = df["outcome"].isin([Outcome.ALLOWED.value, Outcome.DEFERRED.value])
    best_rank = df.loc[usable].groupby(["contract_key", "step"])["rank"].min().rename("best_rank")
    df = df.join(best_rank, on=["contract_key", "step"])
    chosen = usable & ((df["send_rule"] == "all") | (df["rank"] == df["best_rank"]))
    deferred = df["outcome"] == Outcome.DEFERRED.value
    status = np.select(
        [(chosen & ~deferred).to_numpy(), (chosen & deferred).to_numpy(), usable.to_numpy()],
        ["queued", "deferred", "standby"],
        default="blocked",
    )
    return pd.Series(status, index=candidates.index)
