"""From what the store recorded to the KPI input frames: who was treated or held out, and what came of it.

The kpi-report flow reads raw rows (messages, holdouts, contracts, instalments, activity, segments,
rewards) of the cycles in a period; these pure functions turn them into the frames `tasks.domain.kpis`
documents. The attribution rules are written down in docs/kpis.md ("Where the inputs come from").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.domain import kpis
from tasks.domain.playbook import Playbook, PlaybookKind

# A term's renewal is credited to the reminders about it when it falls within this many days of the
# term end on either side: wide enough for the earliest step (T-30) and late renewals, narrow enough
# that the previous or next year's renewal of an annual contract never counts.
RENEWAL_WINDOW_DAYS = 180
TERM_KEYS = ["playbook", "contract_key", "anchor_date"]

MESSAGE_COLUMNS = (
    "message_key",
    "cycle_id",
    "playbook",
    "contract_key",
    "customer_key",
    "market",
    "step",
    "channel",
    "anchor_date",
    "status",
    "error_code",
    "cost",
    "cost_currency",
    "sent_at",
)
HOLDOUT_COLUMNS = ("cycle_id", "playbook", "contract_key", "customer_key", "market", "step", "anchor_date")
CONTRACT_COLUMNS = ("contract_key", "customer_key", "term_end", "renewed_at", "price", "currency")
INSTALMENT_COLUMNS = ("instalment_key", "contract_key", "due_date", "amount", "currency", "paid_date")
ACTIVITY_COLUMNS = ("customer_key", "month", "transactions", "last_active")
SEGMENT_COLUMNS = ("cycle_id", "contract_key", "segment")
REWARD_COLUMNS = (
    "reward_key",
    "customer_key",
    "market",
    "contract_key",
    "rule",
    "status",
    "cost_eur",
    "granted_at",
)


class MissingRate(ValueError):
    """A currency in the data has no reporting rate."""


@dataclass(frozen=True, eq=False)
class StoreRows:
    """The raw rows of one reporting period, as read from the store."""

    messages: pd.DataFrame
    holdouts: pd.DataFrame
    contracts: pd.DataFrame
    instalments: pd.DataFrame
    activity: pd.DataFrame
    segments: pd.DataFrame
    rewards: pd.DataFrame


def empty_rows() -> StoreRows:
    """Return a period with nothing in it."""

    def frame(columns: tuple[str, ...]) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})

    return StoreRows(
        messages=frame(MESSAGE_COLUMNS),
        holdouts=frame(HOLDOUT_COLUMNS),
        contracts=frame(CONTRACT_COLUMNS),
        instalments=frame(INSTALMENT_COLUMNS),
        activity=frame(ACTIVITY_COLUMNS),
        segments=frame(SEGMENT_COLUMNS),
        rewards=frame(REWARD_COLUMNS),
    )


def to_eur(amount: pd.Series, currency: pd.Series, eur_per_unit: Mapping[str, object]) -> pd.Series:
    """Return amounts in EUR at the fixed reporting rates; a currency without a rate is an error."""
    code = currency.fillna("").astype(str).str.upper()
    present = amount.notna() & code.ne("")
    unknown = sorted(set(code[present]) - set(eur_per_unit) - {"EUR"})
    if unknown:
        raise MissingRate(
            f"no reporting rate for {', '.join(unknown)}: add it to eur_per_unit in config/rewards/_fx.yaml"
        )
    rates = {"EUR": 1.0, **{k: float(str(v)) for k, v in eur_per_unit.items()}}
    rate = code.map(rates).astype("float64")
    return pd.to_numeric(amount, errors="coerce").astype("float64") * rate


def _day(values: pd.Series) -> pd.Series:
    out = pd.to_datetime(values, errors="coerce", utc=True)
    return out.dt.tz_convert(None).dt.normalize().astype("datetime64[ns]")


def _of_kind(frame: pd.DataFrame, kinds: Mapping[str, PlaybookKind], *wanted: PlaybookKind) -> pd.DataFrame:
    return frame.loc[frame["playbook"].map(dict(kinds)).isin(list(wanted))].copy()


def _terms(
    messages: pd.DataFrame, holdouts: pd.DataFrame, eur_per_unit: Mapping[str, object]
) -> pd.DataFrame:
    """Return one row per (playbook, contract, anchor): its group, first cycle, contacts and their cost."""
    m = messages.copy()
    m["anchor_date"] = _day(m["anchor_date"])
    m["sent_day"] = _day(m["sent_at"])
    m["cost_eur"] = to_eur(m["cost"], m["cost_currency"], eur_per_unit).fillna(0.0)
    m["was_sent"] = m["sent_at"].notna()
    treated = (
        m.groupby(TERM_KEYS, sort=True)
        .agg(
            customer_key=("customer_key", "first"),
            market=("market", "first"),
            cycle_id=("cycle_id", "min"),
            first_contact_at=("sent_day", "min"),
            messages_sent=("was_sent", "sum"),
            messaging_cost_eur=("cost_eur", "sum"),
        )
        .reset_index()
        .assign(group=kpis.TREATED)
    )
    h = holdouts.copy()
    h["anchor_date"] = _day(h["anchor_date"])
    control = (
        h.groupby(TERM_KEYS, sort=True)
        .agg(customer_key=("customer_key", "first"), market=("market", "first"), cycle_id=("cycle_id", "min"))
        .reset_index()
    )
    # A term held out of one step but reminded at another (the holdout share changed mid-term) is neither
    # control nor cleanly treated, so it counts in neither group.
    mixed = pd.MultiIndex.from_frame(treated[TERM_KEYS]).intersection(
        pd.MultiIndex.from_frame(control[TERM_KEYS])
    )
    treated = treated.loc[~pd.MultiIndex.from_frame(treated[TERM_KEYS]).isin(mixed)]
    control = control.loc[~pd.MultiIndex.from_frame(control[TERM_KEYS]).isin(mixed)]
    control = control.assign(
        group=kpis.CONTROL,
        first_contact_at=pd.Series(pd.NaT, index=control.index),
        messages_sent=0,
        messaging_cost_eur=0.0,
    )
    out = pd.concat([treated, control], ignore_index=True)
    out["first_contact_at"] = out["first_contact_at"].astype("datetime64[ns]")
    out["messages_sent"] = out["messages_sent"].astype("int64")
    out["cycle_id"] = out["cycle_id"].astype("int64")
    return out.sort_values(TERM_KEYS, kind="stable").reset_index(drop=True)


def _renewal_for_term(terms: pd.DataFrame, contracts: pd.DataFrame) -> pd.Series:
    c = contracts.drop_duplicates("contract_key").set_index("contract_key")
    renewed = _day(terms["contract_key"].map(c["renewed_at"]))
    near = (renewed - terms["anchor_date"]).abs() <= pd.Timedelta(days=RENEWAL_WINDOW_DAYS)
    return renewed.where(near)


def _reward_cost_per_term(terms: pd.DataFrame, rewards: pd.DataFrame) -> pd.Series:
    """Return each treated term's reward cost: rewards on its contract, or the customer's nearest term."""
    out = pd.Series(0.0, index=terms.index)
    r = rewards.loc[rewards["status"].astype(str).str.lower().isin(kpis.REWARD_STATUSES)].copy()
    treated = terms.loc[terms["group"].eq(kpis.TREATED)]
    if r.empty or treated.empty:
        return out
    r["granted_day"] = _day(r["granted_at"])
    r["cost_eur"] = pd.to_numeric(r["cost_eur"], errors="coerce").fillna(0.0)
    r["_reward"] = np.arange(len(r))
    candidates = treated.reset_index(names="_term")[["_term", "contract_key", "customer_key", "anchor_date"]]
    by_contract = r.loc[r["contract_key"].notna()].merge(
        candidates.drop(columns="customer_key"), on="contract_key", how="inner"
    )
    by_customer = r.loc[r["contract_key"].isna()].merge(
        candidates.drop(columns="contract_key"), on="customer_key", how="inner"
    )
    pairs = pd.concat([by_contract, by_customer], ignore_index=True)
    pairs["distance"] = (pairs["anchor_date"] - pairs["granted_day"]).abs()
    pairs = pairs.loc[pairs["distance"] <= pd.Timedelta(days=RENEWAL_WINDOW_DAYS)]
    best = pairs.sort_values(["distance", "_term"], kind="stable").drop_duplicates("_reward")
    return out.add(best.groupby("_term")["cost_eur"].sum(), fill_value=0.0)


def exposures(
    rows: StoreRows, kinds: Mapping[str, PlaybookKind], eur_per_unit: Mapping[str, object]
) -> pd.DataFrame:
    """Return the renewal exposures: one row per renewal-playbook term, treated or held out."""
    msgs = _of_kind(rows.messages, kinds, PlaybookKind.RENEWAL)
    holds = _of_kind(rows.holdouts, kinds, PlaybookKind.RENEWAL)
    if msgs.empty and holds.empty:
        return kpis.empty_frame(kpis.EXPOSURES)
    terms = _terms(msgs, holds, eur_per_unit)
    contracts = rows.contracts.drop_duplicates("contract_key").set_index("contract_key")
    price = terms["contract_key"].map(contracts["price"])
    currency = terms["contract_key"].map(contracts["currency"])
    segments = rows.segments[list(SEGMENT_COLUMNS)].drop_duplicates(["cycle_id", "contract_key"])
    segment = terms[["cycle_id", "contract_key"]].merge(
        segments.astype({"cycle_id": "int64"}), on=["cycle_id", "contract_key"], how="left"
    )["segment"]
    out = pd.DataFrame(
        {
            "contract_key": terms["contract_key"],
            "customer_key": terms["customer_key"],
            "market": terms["market"],
            "playbook": terms["playbook"],
            "segment": segment.fillna("").astype(str).to_numpy(),
            "group": terms["group"],
            "term_end": terms["anchor_date"],
            "renewed_at": _renewal_for_term(terms, rows.contracts),
            "price_eur": to_eur(price, currency, eur_per_unit),
            "first_contact_at": terms["first_contact_at"],
            "messages_sent": terms["messages_sent"],
            "messaging_cost_eur": terms["messaging_cost_eur"],
            "reward_cost_eur": _reward_cost_per_term(terms, rows.rewards),
        }
    )
    return out[[c.name for c in kpis.EXPOSURES]]


def _offset_of(playbooks: Mapping[str, Playbook]) -> dict[tuple[str, str], int]:
    return {(p.id, s.id): s.offset_days for p in playbooks.values() for s in p.steps}


def _step_offsets(frame: pd.DataFrame, playbooks: Mapping[str, Playbook]) -> pd.Series:
    known = _offset_of(playbooks)
    return pd.Series(
        [
            known.get((str(p), str(s)), _parsed_offset(str(s)))
            for p, s in zip(frame["playbook"], frame["step"], strict=True)
        ],
        index=frame.index,
        dtype="float64",
    )


def _parsed_offset(step: str) -> float:
    try:
        return float(kpis.step_offset(step))
    except ValueError:
        return math.nan


def instalment_exposures(
    rows: StoreRows, playbooks: Mapping[str, Playbook], eur_per_unit: Mapping[str, object]
) -> pd.DataFrame:
    """Return the repayment exposures: one row per instalment a repayment playbook acted on or held out."""
    kinds = {k: p.kind for k, p in playbooks.items()}
    msgs = _of_kind(rows.messages, kinds, PlaybookKind.REPAYMENT)
    holds = _of_kind(rows.holdouts, kinds, PlaybookKind.REPAYMENT)
    if msgs.empty and holds.empty:
        return kpis.empty_frame(kpis.INSTALMENT_EXPOSURES)
    terms = _terms(msgs, holds, eur_per_unit)
    sent = msgs.loc[msgs["sent_at"].notna()].copy()
    sent["anchor_date"] = _day(sent["anchor_date"])
    sent["offset"] = _step_offsets(sent, playbooks)
    latest = (
        sent.sort_values(["offset", "step"], kind="stable")
        .drop_duplicates(TERM_KEYS, keep="last")[[*TERM_KEYS, "step"]]
        .rename(columns={"step": "max_step"})
    )
    terms = terms.merge(latest, on=TERM_KEYS, how="left")
    inst = rows.instalments.copy()
    inst["due_date"] = _day(inst["due_date"])
    # One instalment per contract and due date; a duplicate in the source would double-count a payment.
    inst = inst.sort_values("instalment_key", kind="stable").drop_duplicates(["contract_key", "due_date"])
    joined = terms.merge(
        inst, left_on=["contract_key", "anchor_date"], right_on=["contract_key", "due_date"], how="inner"
    )
    out = pd.DataFrame(
        {
            "instalment_key": joined["instalment_key"],
            "contract_key": joined["contract_key"],
            "customer_key": joined["customer_key"],
            "market": joined["market"],
            "playbook": joined["playbook"],
            "group": joined["group"],
            "due_date": joined["due_date"],
            "paid_date": _day(joined["paid_date"]),
            "amount_eur": to_eur(joined["amount"], joined["currency"], eur_per_unit),
            "max_step": joined["max_step"].fillna("").astype(str),
        }
    )
    return out[[c.name for c in kpis.INSTALMENT_EXPOSURES]].reset_index(drop=True)


def _first_activity_after(anchors: pd.DataFrame, activity: pd.DataFrame) -> pd.Series:
    """Return per anchor row the first day after it with activity, at month resolution.

    Activity is monthly: a month with transactions after the anchor counts from its first day (or the
    day after the anchor, if later), never earlier than its recorded last-active day allows.
    """
    out = pd.Series(pd.NaT, index=anchors.index, dtype="datetime64[ns]")
    a = activity.loc[pd.to_numeric(activity["transactions"], errors="coerce").fillna(0) > 0].copy()
    if a.empty or anchors.empty:
        return out
    a["month"] = _day(a["month"])
    a["last_active"] = _day(a["last_active"])
    month_end = a["month"] + pd.offsets.MonthEnd(0)
    a["until"] = a["last_active"].fillna(month_end)
    pairs = anchors[["customer_key", "anchor_date"]].reset_index(names="_row").merge(a, on="customer_key")
    pairs = pairs.loc[pairs["until"] > pairs["anchor_date"]]
    start = pairs["anchor_date"] + pd.Timedelta(days=1)
    pairs["first"] = pairs["month"].where(pairs["month"] > start, start)
    first = pairs.groupby("_row")["first"].min()
    return out.fillna(first.reindex(out.index)).astype("datetime64[ns]")


def reactivation(
    rows: StoreRows, kinds: Mapping[str, PlaybookKind], eur_per_unit: Mapping[str, object]
) -> pd.DataFrame:
    """Return reactivation and win-back exposures: one row per customer a retention playbook acted on."""
    msgs = _of_kind(rows.messages, kinds, PlaybookKind.REACTIVATION, PlaybookKind.WINBACK)
    holds = _of_kind(rows.holdouts, kinds, PlaybookKind.REACTIVATION, PlaybookKind.WINBACK)
    if msgs.empty and holds.empty:
        return kpis.empty_frame(kpis.REACTIVATION)
    terms = _terms(msgs, holds, eur_per_unit)
    # Several contracts of one inactive customer share one anchor: the customer is the unit.
    terms = terms.sort_values(["group", "contract_key"], ascending=[False, True], kind="stable")
    terms = terms.drop_duplicates(["playbook", "customer_key", "anchor_date"]).sort_index()
    kind = terms["playbook"].map(dict(kinds))
    back = _first_activity_after(terms, rows.activity)
    renewed = _renewal_for_term(terms, rows.contracts)
    won_back = renewed.where(renewed > terms["anchor_date"])
    out = pd.DataFrame(
        {
            "customer_key": terms["customer_key"],
            "market": terms["market"],
            "playbook": terms["playbook"],
            "group": terms["group"],
            "became_inactive": terms["anchor_date"],
            "reactivated_at": back.where(kind.eq(PlaybookKind.REACTIVATION), won_back),
        }
    )
    return out[[c.name for c in kpis.REACTIVATION]].reset_index(drop=True)


def deliveries(rows: StoreRows, eur_per_unit: Mapping[str, object]) -> pd.DataFrame:
    """Return one row per message with its last status, error code and cost in EUR."""
    m = rows.messages
    if m.empty:
        return kpis.empty_frame(kpis.DELIVERIES)
    out = pd.DataFrame(
        {
            "message_key": m["message_key"],
            "market": m["market"],
            "channel": m["channel"],
            "status": m["status"],
            "error_code": m["error_code"].fillna("").astype(str),
            "cost_eur": to_eur(m["cost"], m["cost_currency"], eur_per_unit).fillna(0.0),
        }
    )
    return out[[c.name for c in kpis.DELIVERIES]].reset_index(drop=True)


def rewards(rows: StoreRows) -> pd.DataFrame:
    """Return one row per reward in the period."""
    r = rows.rewards
    if r.empty:
        return kpis.empty_frame(kpis.REWARDS)
    out = r.assign(
        granted_at=_day(r["granted_at"]), cost_eur=pd.to_numeric(r["cost_eur"], errors="coerce").fillna(0.0)
    )
    return out[[c.name for c in kpis.REWARDS]].reset_index(drop=True)


def funnel(rows: StoreRows, playbooks: Mapping[str, Playbook]) -> pd.DataFrame:
    """Return one row per renewal step sent for a term, with the step's offset and the term's renewal."""
    kinds = {k: p.kind for k, p in playbooks.items()}
    sent = _of_kind(rows.messages, kinds, PlaybookKind.RENEWAL)
    sent = sent.loc[sent["sent_at"].notna()].copy()
    if sent.empty:
        return kpis.empty_frame(kpis.FUNNEL)
    sent["anchor_date"] = _day(sent["anchor_date"])
    sent["sent_day"] = _day(sent["sent_at"])
    steps = (
        sent.sort_values("sent_day", kind="stable")
        .drop_duplicates([*TERM_KEYS, "step"])
        .reset_index(drop=True)
    )
    out = pd.DataFrame(
        {
            "contract_key": steps["contract_key"],
            "term_end": steps["anchor_date"],
            "step": steps["step"],
            "offset_days": _step_offsets(steps, playbooks).fillna(0).astype("int64"),
            "sent_at": steps["sent_day"],
            "renewed_at": _renewal_for_term(steps, rows.contracts),
        }
    )
    return out[[c.name for c in kpis.FUNNEL]]


def kpi_inputs(
    rows: StoreRows, playbooks: Mapping[str, Playbook], eur_per_unit: Mapping[str, object]
) -> dict[str, pd.DataFrame]:
    """Return every KPI input frame of a period, keyed as in `kpis.SCHEMAS`."""
    kinds = {k: p.kind for k, p in playbooks.items()}
    return {
        "exposures": exposures(rows, kinds, eur_per_unit),
        "instalment_exposures": instalment_exposures(rows, playbooks, eur_per_unit),
        "reactivation": reactivation(rows, kinds, eur_per_unit),
        "deliveries": deliveries(rows, eur_per_unit),
        "rewards": rewards(rows),
        "funnel": funnel(rows, playbooks),
    }
