"""Consent gate v1: a lawful basis for the message's purpose on its channel, and no erasure or suppression."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pandas as pd

POLICY_VERSION = "gate-v1.0"


class Outcome(StrEnum):
    """What the gate decided for one planned message."""

    ALLOWED = "allowed"
    BLOCKED = "blocked"


class Reason(StrEnum):
    """Why the gate decided as it did; each code names the rule that fired."""

    CONTRACT_BASIS = "CONTRACT_BASIS"
    CONSENT = "CONSENT"
    ERASED = "ERASED"
    SUPPRESSED = "SUPPRESSED"
    NO_ADDRESS = "NO_ADDRESS"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    NO_CHANNEL_CONSENT = "NO_CHANNEL_CONSENT"
    NO_WHATSAPP_OPT_IN = "NO_WHATSAPP_OPT_IN"


RULE_IDS: dict[Reason, str] = {
    Reason.CONTRACT_BASIS: "EU-01",
    Reason.CONSENT: "EU-02,EU-08",
    Reason.ERASED: "EU-10",
    Reason.SUPPRESSED: "EU-07",
    Reason.NO_ADDRESS: "ADDR-01",
    Reason.CONSENT_WITHDRAWN: "EU-08",
    Reason.NO_CHANNEL_CONSENT: "EU-02",
    Reason.NO_WHATSAPP_OPT_IN: "WA-01",
}

EXPLANATIONS: dict[Reason, str] = {
    Reason.CONTRACT_BASIS: "allowed: a service or dunning message rests on the contract (GDPR Art. 6(1)(b))",
    Reason.CONSENT: "allowed: a granted consent for marketing on this channel is on record",
    Reason.ERASED: "blocked: the customer's personal data was erased",
    Reason.SUPPRESSED: "blocked: the customer's address is on the suppression list",
    Reason.NO_ADDRESS: "blocked: no valid address for this channel",
    Reason.CONSENT_WITHDRAWN: "blocked: the customer withdrew consent or objected (this channel and purpose)",
    Reason.NO_CHANNEL_CONSENT: "blocked: marketing needs consent for this very channel; none is on record",
    Reason.NO_WHATSAPP_OPT_IN: "blocked: business-initiated WhatsApp needs the customer's WhatsApp opt-in",
}


def latest_consents(records: pd.DataFrame) -> pd.DataFrame:
    """Return the current record per (customer, channel, purpose): the latest captured or withdrawn."""
    if records.empty:
        return records.assign(effective_at=pd.Series(dtype="datetime64[ns, UTC]"))
    effective = pd.to_datetime(records["withdrawn_at"], utc=True).fillna(
        pd.to_datetime(records["captured_at"], utc=True)
    )
    ordered = records.assign(effective_at=effective).sort_values(["effective_at", "consent_id"])
    return ordered.drop_duplicates(["customer_key", "channel", "purpose"], keep="last")


def decide(candidates: pd.DataFrame, contacts: pd.DataFrame, consents: pd.DataFrame) -> pd.DataFrame:
    """Return one decision per candidate: outcome, reason, rule ids and the consent record used.

    `contacts` has customer_key, has_email, has_phone, erased, suppressed; `consents` holds the
    current record per (customer_key, channel, purpose) with status and consent_id.
    """
    df = candidates[["message_key", "customer_key", "channel", "purpose"]].merge(
        contacts, on="customer_key", how="left"
    )
    current = consents[["customer_key", "channel", "purpose", "status", "consent_id"]]
    df = df.merge(current, on=["customer_key", "channel", "purpose"], how="left")
    wa_opt_in = (
        consents.loc[
            (consents["channel"] == "whatsapp") & (consents["status"] == "granted"), ["customer_key"]
        ]
        .drop_duplicates()
        .assign(whatsapp_opt_in=True)
    )
    df = df.merge(wa_opt_in, on="customer_key", how="left")
    df["whatsapp_opt_in"] = df["whatsapp_opt_in"].fillna(False).astype(bool)
    for flag in ("erased", "suppressed", "has_email", "has_phone"):
        df[flag] = df[flag].fillna(False).astype(bool)

    channel = df["channel"]
    has_address = np.where(channel == "email", df["has_email"], df["has_phone"])
    marketing = df["purpose"] == "marketing"
    granted = df["status"] == "granted"
    withdrawn = df["status"] == "withdrawn"
    rules = [
        (df["erased"], Reason.ERASED),
        (df["suppressed"], Reason.SUPPRESSED),
        (pd.Series(~has_address, index=df.index), Reason.NO_ADDRESS),
        (withdrawn, Reason.CONSENT_WITHDRAWN),
        (marketing & ~granted, Reason.NO_CHANNEL_CONSENT),
        ((channel == "whatsapp") & ~df["whatsapp_opt_in"], Reason.NO_WHATSAPP_OPT_IN),
        (marketing, Reason.CONSENT),
    ]
    reason = np.select(
        [cond.fillna(False).to_numpy(dtype=bool) for cond, _ in rules],
        [r.value for _, r in rules],
        default=Reason.CONTRACT_BASIS.value,
    )
    allowed = np.isin(reason, [Reason.CONTRACT_BASIS.value, Reason.CONSENT.value])
    out = pd.DataFrame(
        {
            "message_key": df["message_key"],
            "outcome": np.where(allowed, Outcome.ALLOWED.value, Outcome.BLOCKED.value),
            "reason": reason,
            "rule_ids": pd.Series(reason).map({r.value: RULE_IDS[r] for r in Reason}).to_numpy(),
            "consent_id": df["consent_id"].where(df["status"].notna()),
            "policy_version": POLICY_VERSION,
        }
    )
    return out


def choose_channels(candidates: pd.DataFrame, decisions: pd.DataFrame) -> pd.Series:
    """Return each candidate's status: queued to send, standby (an unused fallback) or blocked.

    For `send: first` the lowest-ranked allowed channel of a step is queued and the other allowed
    ones wait as standby, so a permanent failure on the first can fall back to the next.
    """
    df = candidates[["message_key", "contract_key", "step", "rank", "send_rule"]].merge(
        decisions[["message_key", "outcome"]], on="message_key", how="left"
    )
    allowed = df["outcome"] == Outcome.ALLOWED.value
    best_rank = df.loc[allowed].groupby(["contract_key", "step"])["rank"].min().rename("best_rank")
    df = df.join(best_rank, on=["contract_key", "step"])
    queued = allowed & ((df["send_rule"] == "all") | (df["rank"] == df["best_rank"]))
    status = np.select([queued.to_numpy(), allowed.to_numpy()], ["queued", "standby"], default="blocked")
    return pd.Series(status, index=candidates.index)
