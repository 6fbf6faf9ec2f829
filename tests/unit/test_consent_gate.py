"""Consent gate v1: a basis per purpose and channel, erasure and suppression, and channel fallback."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.domain.consent import Reason, choose_channels, decide, latest_consents


def _candidates(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "message_key": [f"m{i}" for i in range(len(rows))],
            "customer_key": [r[0] for r in rows],
            "channel": [r[1] for r in rows],
            "purpose": [r[2] for r in rows],
        }
    )


def _contacts(**flags: bool) -> pd.DataFrame:
    base = {"has_email": True, "has_phone": True, "erased": False, "suppressed": False}
    base.update(flags)
    return pd.DataFrame([{"customer_key": "C1", **base}])


def _consents(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"customer_key": "C1", "channel": c, "purpose": p, "status": s, "consent_id": i + 1}
            for i, (c, p, s) in enumerate(rows)
        ],
        columns=["customer_key", "channel", "purpose", "status", "consent_id"],
    )


def _decide(channel: str, purpose: str, consents: pd.DataFrame | None = None, **flags: bool) -> pd.Series:
    cands = _candidates(("C1", channel, purpose))
    return decide(cands, _contacts(**flags), consents if consents is not None else _consents()).iloc[0]


def test_service_message_rests_on_the_contract() -> None:
    row = _decide("email", "service")
    assert (row["outcome"], row["reason"], row["rule_ids"]) == ("allowed", "CONTRACT_BASIS", "EU-01")


def test_marketing_without_consent_on_the_channel_is_blocked() -> None:
    row = _decide("sms", "marketing", _consents(("email", "marketing", "granted")))
    assert (row["outcome"], row["reason"]) == ("blocked", Reason.NO_CHANNEL_CONSENT.value)


def test_marketing_with_channel_consent_is_allowed_and_cites_the_record() -> None:
    row = _decide("email", "marketing", _consents(("email", "marketing", "granted")))
    assert (row["outcome"], row["reason"], row["consent_id"]) == ("allowed", "CONSENT", 1)


def test_withdrawn_marketing_consent_blocks() -> None:
    row = _decide("email", "marketing", _consents(("email", "marketing", "withdrawn")))
    assert row["reason"] == Reason.CONSENT_WITHDRAWN.value


def test_objection_to_service_sms_blocks_service_sms_only() -> None:
    consents = _consents(("sms", "service", "withdrawn"))
    assert _decide("sms", "service", consents)["reason"] == "CONSENT_WITHDRAWN"
    assert _decide("email", "service", consents)["reason"] == "CONTRACT_BASIS"


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"erased": True}, "ERASED"),
        ({"suppressed": True}, "SUPPRESSED"),
        ({"has_email": False}, "NO_ADDRESS"),
    ],
)
def test_erasure_suppression_and_missing_address_block(flags: dict[str, bool], reason: str) -> None:
    assert _decide("email", "service", **flags)["reason"] == reason


def test_erasure_outranks_consent() -> None:
    assert (
        _decide("email", "marketing", _consents(("email", "marketing", "granted")), erased=True)["reason"]
        == "ERASED"
    )


def test_whatsapp_needs_an_opt_in_even_for_service() -> None:
    assert _decide("whatsapp", "service")["reason"] == "NO_WHATSAPP_OPT_IN"
    assert (
        _decide("whatsapp", "service", _consents(("whatsapp", "marketing", "granted")))["reason"]
        == "CONTRACT_BASIS"
    )


def test_unknown_customer_is_blocked_for_lack_of_address() -> None:
    cands = _candidates(("C404", "email", "service"))
    assert decide(cands, _contacts(), _consents()).iloc[0]["reason"] == "NO_ADDRESS"


def test_latest_record_wins() -> None:
    records = pd.DataFrame(
        {
            "consent_id": [1, 2],
            "customer_key": ["C1", "C1"],
            "channel": ["email", "email"],
            "purpose": ["marketing", "marketing"],
            "status": ["granted", "withdrawn"],
            "captured_at": pd.to_datetime(["2024-01-01", "2024-01-01"], utc=True),
            "withdrawn_at": pd.to_datetime([None, "2025-06-01"], utc=True),
        }
    )
    assert latest_consents(records)["status"].tolist() == ["withdrawn"]


def test_regranted_consent_after_withdrawal_is_current() -> None:
    records = pd.DataFrame(
        {
            "consent_id": [1, 2],
            "customer_key": ["C1", "C1"],
            "channel": ["email", "email"],
            "purpose": ["marketing", "marketing"],
            "status": ["withdrawn", "granted"],
            "captured_at": pd.to_datetime(["2024-01-01", "2025-09-01"], utc=True),
            "withdrawn_at": pd.to_datetime(["2025-06-01", None], utc=True),
        }
    )
    assert latest_consents(records)["consent_id"].tolist() == [2]


class TestChooseChannels:
    def _plan(self, rule: str, outcomes: list[str]) -> pd.Series:
        cands = pd.DataFrame(
            {
                "message_key": [f"k{i}" for i in range(len(outcomes))],
                "contract_key": ["K1"] * len(outcomes),
                "step": ["T-30"] * len(outcomes),
                "rank": list(range(len(outcomes))),
                "send_rule": [rule] * len(outcomes),
            }
        )
        decisions = pd.DataFrame({"message_key": cands["message_key"], "outcome": outcomes})
        return choose_channels(cands, decisions)

    def test_first_allowed_channel_is_queued_and_later_ones_wait(self) -> None:
        assert self._plan("first", ["allowed", "allowed", "allowed"]).tolist() == [
            "queued",
            "standby",
            "standby",
        ]

    def test_blocked_first_channel_falls_back_to_the_next(self) -> None:
        assert self._plan("first", ["blocked", "allowed"]).tolist() == ["blocked", "queued"]

    def test_send_all_queues_every_allowed_channel(self) -> None:
        assert self._plan("all", ["allowed", "blocked", "allowed"]).tolist() == [
            "queued",
            "blocked",
            "queued",
        ]
