"""Planning: which playbook steps are due today, who is held out, and the candidate messages."""

from __future__ import annotations

import hashlib
from datetime import date

import numpy as np
import pandas as pd

from tasks.domain.playbook import Playbook


def holdout_bucket(salt: str, key: str) -> float:
    """Return a stable number in [0, 1) for `key`, independent of run, process and machine."""
    digest = hashlib.blake2b(f"{salt}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(keys: pd.Series, salt: str, share: float) -> pd.Series:
    """Return True for the keys that fall in the control group of size `share`."""
    if share <= 0:
        return pd.Series(False, index=keys.index)
    buckets = np.fromiter((holdout_bucket(salt, k) for k in keys), dtype="float64", count=len(keys))
    return pd.Series(buckets < share, index=keys.index)


def message_key(playbook_id: str, target_key: str, anchor: date, step_id: str, channel: str) -> str:
    """Return the idempotency key of a message: one per target, period, step and channel."""
    return f"{playbook_id}:{target_key}:{anchor:%Y%m%d}:{step_id}:{channel}"


TARGET_COLUMNS = (
    "target_key",
    "contract_key",
    "customer_key",
    "market",
    "product",
    "status",
    "anchor_date",
    "auto_renew",
    "risk_band",
    "segment",
    "profiling_objection",
)


def renewal_targets(segments: pd.DataFrame) -> pd.DataFrame:
    """Return renewal targets: each segmented contract, anchored on its term end."""
    out = segments.assign(target_key=segments["contract_key"], anchor_date=segments["term_end"])
    return _targets(out)


def _targets(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column, default in (
        ("risk_band", "low"),
        ("segment", ""),
        ("profiling_objection", False),
        ("auto_renew", False),
    ):
        if column not in out:
            out[column] = default
    return out[list(TARGET_COLUMNS)].reset_index(drop=True)


def repayment_targets(instalments: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """Return repayment targets: each unpaid instalment of a segmented contract, anchored on its due date."""
    unpaid = instalments.loc[instalments["paid_date"].isna(), ["instalment_key", "contract_key", "due_date"]]
    out = unpaid.merge(segments.drop(columns=["term_end"], errors="ignore"), on="contract_key", how="inner")
    return _targets(out.rename(columns={"instalment_key": "target_key", "due_date": "anchor_date"}))


def activity_targets(segments: pd.DataFrame, last_active: pd.Series) -> pd.DataFrame:
    """Return reactivation targets: contracts of inactive customers, anchored on their last activity."""
    inactive = (
        segments.loc[segments["inactive"].astype(bool)] if "inactive" in segments else segments.iloc[0:0]
    )
    # Looked up by index, not through a dict: that made a Python Timestamp of every customer's day
    # (0.26 s of the plan per 125k customers). `reindex`, not `map`: pandas casts an empty datetime
    # mapper to float and raises.
    latest = last_active[~last_active.index.duplicated(keep="last")]
    anchors = pd.Series(
        pd.to_datetime(latest.reindex(inactive["customer_key"]).to_numpy()), index=inactive.index
    )
    out = inactive.assign(target_key=inactive["contract_key"], anchor_date=anchors).dropna(
        subset=["anchor_date"]
    )
    return _targets(out)


def due_steps(targets: pd.DataFrame, playbook: Playbook, as_of: date) -> pd.DataFrame:
    """Return the one step due today per eligible target, with its anchor date.

    A step is due from its offset for `catch_up_days` days, so a missed run still sends it; when
    a later step is also due, the later one wins, so customers never get a stale reminder.
    """
    anchor = pd.to_datetime(targets["anchor_date"])
    elapsed = (pd.Timestamp(as_of) - anchor).dt.days
    eligible = targets["product"].isin([p.value for p in playbook.products]) & targets["status"].isin(
        [s.value for s in playbook.statuses]
    )
    if playbook.markets:
        eligible &= targets["market"].isin(playbook.markets)
    chosen = pd.Series(pd.NA, index=targets.index, dtype="object")
    for step in playbook.ordered_steps:
        hit = eligible & (elapsed >= step.offset_days) & (elapsed < step.offset_days + playbook.catch_up_days)
        if step.auto_renew is not None:
            hit &= targets["auto_renew"].astype(bool) == step.auto_renew
        if step.risk_bands:
            hit &= targets["risk_band"].isin(step.risk_bands)
            if step.purpose.value == "marketing" or step.offer is not None:
                # EU-06: an Art. 21 objection also covers profiling for marketing, so objectors are
                # never selected for an offer by their risk score.
                hit &= ~targets["profiling_objection"].astype(bool)
        chosen = chosen.mask(hit, step.id)
    mask = chosen.notna()
    due = targets.loc[
        mask, ["target_key", "contract_key", "customer_key", "market", "segment", "risk_band"]
    ].copy()
    due["step"] = chosen[mask].astype(str)
    due["anchor_date"] = anchor[mask].dt.date
    due["days_from_anchor"] = elapsed[mask].astype("int64")
    return due.reset_index(drop=True)


def coordinate(due: pd.DataFrame, busy_customers: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split due steps into (kept, superseded): a customer already contacted today by a higher-priority
    playbook gets nothing more from this one today (its step stays due for its catch-up days)."""
    clash = due["customer_key"].isin(busy_customers)
    return due.loc[~clash].reset_index(drop=True), due.loc[clash].reset_index(drop=True)


def split_holdout(due: pd.DataFrame, playbook: Playbook) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split due steps into (treated, control) by a stable per-customer hash salted with the playbook."""
    control = in_holdout(due["customer_key"], f"holdout:{playbook.id}", playbook.holdout_share)
    return due.loc[~control].reset_index(drop=True), due.loc[control].reset_index(drop=True)


CANDIDATE_COLUMNS = (
    "message_key",
    "playbook",
    "contract_key",
    "customer_key",
    "market",
    "step",
    "channel",
    "rank",
    "send_rule",
    "template",
    "purpose",
    "anchor_date",
    "has_offer",
    "recipient",
)


def candidate_messages(treated: pd.DataFrame, playbook: Playbook) -> pd.DataFrame:
    """Return one candidate row per (due step, channel), ranked in the step's channel order."""
    frames = []
    for step in playbook.steps:
        rows = treated.loc[treated["step"] == step.id]
        if rows.empty:
            continue
        for rank, channel in enumerate(step.channels):
            part = rows[
                ["target_key", "contract_key", "customer_key", "market", "step", "anchor_date"]
            ].copy()
            part["channel"] = channel.value
            part["rank"] = rank
            part["send_rule"] = step.send.value
            part["template"] = step.template
            part["purpose"] = step.purpose.value
            part["has_offer"] = step.offer is not None
            part["recipient"] = step.recipient
            frames.append(part)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in CANDIDATE_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["playbook"] = playbook.id
    anchors = pd.to_datetime(out["anchor_date"]).dt.strftime("%Y%m%d")
    out["message_key"] = (
        playbook.id + ":" + out["target_key"] + ":" + anchors + ":" + out["step"] + ":" + out["channel"]
    )
    return out[list(CANDIDATE_COLUMNS)]
