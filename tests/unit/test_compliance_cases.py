"""The compliance officer's test cases (../shared/reference/compliance.md §3), one named test each.

Every test runs the real gate against the real market files in config/markets, so removing or
weakening a rule there makes its test fail.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from tasks.domain.consent import (
    ConsentRecord,
    Counter,
    Decision,
    Outcome,
    Reason,
    Request,
    Subject,
    decide_all,
    decide_message,
    labelled,
    required_label,
)
from tasks.gate import holiday_checker
from tests.support.factories import markets

MARKETS = markets()
CAPTURED = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
_ids = iter(range(1, 10_000))


def consent(channel: str, purpose: str = "marketing", status: str = "granted", **kw: object) -> ConsentRecord:
    """Return a consent record; DOI confirmed and not bundled unless told otherwise."""
    base: dict[str, object] = {"captured_at": CAPTURED, "doi_confirmed_at": CAPTURED}
    if status == "withdrawn":
        base["withdrawn_at"] = datetime(2026, 1, 2, 9, 0, tzinfo=UTC)
    base.update(kw)
    return ConsentRecord(next(_ids), channel, purpose, status, **base)  # type: ignore[arg-type]


def person(market: str, *records: ConsentRecord, **kw: object) -> Subject:
    """Return a reachable customer of `market` with the given consent records."""
    base: dict[str, object] = {
        "customer_key": "C1",
        "market": market,
        "timezone": MARKETS[market].timezone,
        "has_email": True,
        "has_phone": True,
        "contract_keys": frozenset({"K1"}),
        "relationship_end": date(2026, 11, 22),
        "consents": records,
    }
    base.update(kw)
    return Subject(**base)  # type: ignore[arg-type]


def local(market: str, text: str) -> datetime:
    """Return a UTC instant given as local wall-clock time in the market's zone."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(MARKETS[market].timezone)).astimezone(UTC)


TUESDAY_NOON = "2026-11-24T12:00"


def decide(
    who: Subject,
    channel: str,
    purpose: str,
    at: str = TUESDAY_NOON,
    counter: Counter | None = None,
    **req: object,
) -> Decision:
    """Decide one message for `who` at local time `at`."""
    rules = MARKETS[who.market].rules
    return decide_message(
        Request("m1", channel, purpose, **req),  # type: ignore[arg-type]
        who,
        rules,
        local(who.market, at),
        counter if counter is not None else Counter(),
        holiday_checker(rules),
    )


def test_case01_de_marketing_email_without_double_opt_in_is_blocked() -> None:
    record = consent("email", doi_confirmed_at=None)
    d = decide(person("DE", record), "email", "marketing")
    assert (d.outcome, d.reason, d.consent_id) == (
        Outcome.BLOCKED,
        Reason.DOI_NOT_CONFIRMED,
        record.consent_id,
    )
    assert "DE-01" in d.rule_ids


def test_case01_de_confirmed_double_opt_in_allows_the_reward_email() -> None:
    assert decide(person("DE", consent("email")), "email", "marketing").reason is Reason.CONSENT


def test_case02_de_soft_opt_in_with_notice_evidence_allows_the_reward_email() -> None:
    record = consent("email", lawful_basis="soft_opt_in", sale_reference="K1", notice_version="notice-v2")
    d = decide(person("DE", record), "email", "marketing")
    assert (d.outcome, d.reason, d.consent_id) == (Outcome.ALLOWED, Reason.SOFT_OPT_IN, record.consent_id)


def test_case02_de_soft_opt_in_without_notice_evidence_is_blocked() -> None:
    record = consent("email", lawful_basis="soft_opt_in", sale_reference="K1", notice_version=None)
    d = decide(person("DE", record), "email", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.NO_OPT_OUT_NOTICE)
    assert "DE-02" in d.rule_ids


def test_case03_fr_consent_only_by_accepting_the_terms_blocks_the_reward_sms() -> None:
    d = decide(person("FR", consent("sms", bundled=True)), "sms", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.CONSENT_BUNDLED)
    assert "FR-01" in d.rule_ids


@pytest.mark.parametrize(
    ("at", "released_at"),
    [("2026-11-22T11:00", "2026-11-23T08:00"), ("2026-11-24T21:45", "2026-11-25T08:00")],
    ids=["sunday-1100", "tuesday-2145"],
)
def test_case04_fr_reward_sms_outside_the_af2m_window_is_deferred_not_dropped(
    at: str, released_at: str
) -> None:
    d = decide(person("FR", consent("sms")), "sms", "marketing", at=at)
    assert (d.outcome, d.reason) == (Outcome.DEFERRED, Reason.OUTSIDE_WINDOW)
    assert d.deferred_until == local("FR", released_at)
    assert "FR-02" in d.rule_ids


@pytest.mark.parametrize("at", ["2026-11-22T11:00", "2026-11-24T21:45"], ids=["sunday-1100", "tuesday-2145"])
def test_case04_fr_service_sms_at_the_same_time_is_released(at: str) -> None:
    d = decide(person("FR"), "sms", "service", at=at)
    assert (d.outcome, d.reason) == (Outcome.ALLOWED, Reason.CONTRACT_BASIS)


def test_case04_fr_reward_sms_on_a_public_holiday_waits_for_the_next_working_day() -> None:
    d = decide(person("FR", consent("sms")), "sms", "marketing", at="2026-12-25T10:00")
    assert d.deferred_until == local("FR", "2026-12-26T08:00")


def test_case05_es_account_without_a_contract_has_no_soft_opt_in() -> None:
    record = consent("email", lawful_basis="soft_opt_in", sale_reference="ACCOUNT-1", notice_version="n1")
    d = decide(person("ES", record, contract_keys=frozenset()), "email", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.NO_SALE)
    assert "ES-01" in d.rule_ids


def test_case06_uk_reminder_with_a_cashback_block_goes_without_it_when_there_is_no_marketing_basis() -> None:
    d = decide(person("GB"), "email", "service", has_offer=True)
    assert (d.outcome, d.reason, d.offer_removed, d.effective_purpose) == (
        Outcome.ALLOWED,
        Reason.CONTRACT_BASIS,
        True,
        "service",
    )
    assert "EU-05" in d.rule_ids
    assert any("offer block removed" in n for n in d.notes)


def test_case06_uk_reminder_keeps_the_block_and_counts_as_marketing_with_consent() -> None:
    d = decide(person("GB", consent("email")), "email", "service", has_offer=True)
    assert (d.reason, d.offer_removed, d.effective_purpose) == (Reason.CONSENT, False, "marketing")
    assert "EU-05" in d.rule_ids


def test_case07_email_unsubscribe_is_channel_scoped_so_whatsapp_consent_still_counts() -> None:
    who = person("GB", consent("email", status="withdrawn"), consent("whatsapp"))
    assert decide(who, "whatsapp", "marketing").reason is Reason.CONSENT
    d = decide(who, "email", "marketing")
    assert (d.reason, d.notes) == (Reason.CONSENT_WITHDRAWN, ("email marketing withdrawn (channel scope)",))


def test_case07_general_art21_objection_blocks_marketing_on_every_channel() -> None:
    who = person("GB", consent("whatsapp"), consent("all", status="withdrawn"))
    d = decide(who, "whatsapp", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.OBJECTION)
    assert "EU-06" in d.rule_ids
    assert decide(who, "email", "service").reason is Reason.CONTRACT_BASIS


def test_case08_a_texted_revocation_stops_every_consent_based_text() -> None:
    who = person("US", consent("sms", written=True), consent("sms", status="withdrawn"))
    assert decide(who, "sms", "marketing", at="2026-11-24T12:00").reason is Reason.CONSENT_WITHDRAWN


def test_case12_reward_whatsapp_with_only_email_consent_is_blocked() -> None:
    d = decide(person("DE", consent("email")), "whatsapp", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.NO_CHANNEL_CONSENT)
    assert {"EU-02", "WA-01"} <= set(d.rule_ids)


def test_case13_ca_winback_after_implied_consent_expired_is_blocked_with_its_expiry_date() -> None:
    record = consent("email", lawful_basis="implied")
    who = person("CA", record, relationship_end=date(2024, 10, 22))
    d = decide(who, "email", "marketing", at="2026-11-24T12:00")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.EBR_EXPIRED)
    assert d.notes == ("implied consent expired on 2026-10-22",)
    assert "CA-01" in d.rule_ids


def test_case13_ca_implied_consent_within_two_years_is_a_basis() -> None:
    who = person("CA", consent("email", lawful_basis="implied"), relationship_end=date(2025, 6, 1))
    assert decide(who, "email", "marketing").reason is Reason.IMPLIED_CONSENT


def test_case14_us_marketing_sms_without_written_consent_is_blocked() -> None:
    d = decide(person("US", consent("sms")), "sms", "marketing")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.NO_WRITTEN_CONSENT)
    assert "US-01" in d.rule_ids


def test_case14_us_florida_marketing_sms_at_2045_is_deferred() -> None:
    who = person("US", consent("sms", written=True), region="US-FL")
    d = decide(who, "sms", "marketing", at="2026-11-24T20:45")
    assert (d.outcome, d.deferred_until) == (Outcome.DEFERRED, local("US", "2026-11-25T08:00"))
    assert "US-06" in d.rule_ids
    assert decide(
        person("US", consent("sms", written=True)), "sms", "marketing", at="2026-11-24T20:45"
    ).outcome is (Outcome.ALLOWED)


def test_case16_id_dunning_whatsapp_at_2030_is_deferred() -> None:
    who = person("ID", consent("whatsapp", purpose="service"))
    d = decide(who, "whatsapp", "dunning", at="2026-11-24T20:30")
    assert (d.outcome, d.deferred_until) == (Outcome.DEFERRED, local("ID", "2026-11-25T08:00"))
    assert "ID-01" in d.rule_ids


def test_case16_id_dunning_on_a_national_holiday_is_deferred() -> None:
    who = person("ID", consent("whatsapp", purpose="service"))
    d = decide(who, "whatsapp", "dunning", at="2026-08-17T10:00")
    assert (d.outcome, d.deferred_until) == (Outcome.DEFERRED, local("ID", "2026-08-18T08:00"))


def test_case17_th_second_dunning_contact_the_same_day_is_blocked() -> None:
    counter = Counter()
    who = person("TH")
    first = decide(who, "sms", "dunning", counter=counter)
    second = decide(who, "email", "dunning", counter=counter)
    assert first.outcome is Outcome.ALLOWED
    assert (second.outcome, second.reason) == (Outcome.BLOCKED, Reason.FREQUENCY_CAP)
    assert "TH-01" in second.rule_ids


def test_case17_th_dunning_on_saturday_evening_waits_for_holiday_hours() -> None:
    d = decide(person("TH"), "sms", "dunning", at="2026-11-28T18:30")
    assert d.deferred_until == local("TH", "2026-11-29T08:00")


def test_case18_vn_fourth_ad_sms_in_a_day_is_blocked() -> None:
    counter = Counter()
    who = person("VN", consent("sms"))
    outcomes = [decide(who, "sms", "marketing", counter=counter).outcome for _ in range(4)]
    assert outcomes == [Outcome.ALLOWED] * 3 + [Outcome.BLOCKED]


def test_case18_vn_ad_sms_at_2215_is_held_back() -> None:
    d = decide(person("VN", consent("sms")), "sms", "marketing", at="2026-11-24T22:15")
    assert (d.outcome, d.deferred_until) == (Outcome.DEFERRED, local("VN", "2026-11-25T07:00"))
    assert "VN-01" in d.rule_ids


def test_case18_vn_ad_sms_needs_the_qc_label() -> None:
    label = required_label(MARKETS["VN"].rules, "sms", marketing=True)
    assert label == "[QC]"
    assert not labelled("Ưu đãi: gia hạn sớm", label)
    assert labelled("[QC] Ưu đãi: gia hạn sớm", label)
    assert required_label(MARKETS["VN"].rules, "sms", marketing=False) is None


@pytest.mark.parametrize("market", ["KE", "NG"])
def test_case20_dunning_a_reference_contact_is_refused(market: str) -> None:
    d = decide(person(market), "sms", "dunning", recipient="reference_contact")
    assert (d.outcome, d.reason) == (Outcome.BLOCKED, Reason.THIRD_PARTY_CONTACT_FORBIDDEN)
    assert f"{market}-02" in d.rule_ids


class TestGateBasics:
    def test_erasure_outranks_consent(self) -> None:
        assert (
            decide(person("GB", consent("email"), erased=True), "email", "marketing").reason is Reason.ERASED
        )

    def test_suppressed_address_is_never_contacted(self) -> None:
        assert (
            decide(person("GB", suppressed=frozenset({"all"})), "email", "service").reason
            is Reason.SUPPRESSED
        )

    def test_marketing_suppression_leaves_service_messages_alone(self) -> None:
        who = person("GB", consent("email"), suppressed=frozenset({"marketing"}))
        assert decide(who, "email", "marketing").reason is Reason.SUPPRESSED
        assert decide(who, "email", "service").reason is Reason.CONTRACT_BASIS

    def test_missing_address_blocks(self) -> None:
        assert decide(person("GB", has_email=False), "email", "service").reason is Reason.NO_ADDRESS

    def test_service_whatsapp_needs_a_whatsapp_opt_in(self) -> None:
        assert decide(person("GB"), "whatsapp", "service").reason is Reason.NO_WHATSAPP_OPT_IN

    def test_objection_to_service_sms_blocks_service_sms_only(self) -> None:
        who = person("GB", consent("sms", purpose="service", status="withdrawn"))
        assert decide(who, "sms", "service").reason is Reason.CONSENT_WITHDRAWN
        assert decide(who, "email", "service").reason is Reason.CONTRACT_BASIS

    def test_regranted_consent_after_withdrawal_counts(self) -> None:
        later = datetime(2026, 6, 1, tzinfo=UTC)
        who = person("GB", consent("email", status="withdrawn"), consent("email", captured_at=later))
        assert decide(who, "email", "marketing").reason is Reason.CONSENT

    def test_expired_consent_is_no_basis(self) -> None:
        record = consent("email", expires_at=datetime(2026, 1, 1, tzinfo=UTC))
        assert decide(person("GB", record), "email", "marketing").reason is Reason.CONSENT_EXPIRED

    def test_fallback_channels_do_not_use_up_the_daily_cap(self) -> None:
        who = person("TH")
        reqs = [
            Request("a", "sms", "dunning", group="K1|D+1", send_rule="first"),
            Request("b", "email", "dunning", group="K1|D+1", send_rule="first"),
            Request("c", "sms", "dunning", group="K2|D+1", send_rule="first"),
        ]
        rules = {"TH": MARKETS["TH"].rules}
        out = decide_all(
            reqs,
            {"C1": who},
            {"a": "C1", "b": "C1", "c": "C1"},
            rules,
            local("TH", TUESDAY_NOON),
            Counter(),
            {"TH": holiday_checker(rules["TH"])},
        )
        assert [d.outcome for d in out] == [Outcome.ALLOWED, Outcome.ALLOWED, Outcome.BLOCKED]


def test_case21_art21_objector_is_not_selected_for_an_offer_by_risk_score() -> None:
    from datetime import timedelta

    import pandas as pd

    from config.loader import load_playbook
    from tasks.domain.planning import due_steps, renewal_targets
    from tests.support.factories import ROOT

    book = load_playbook(ROOT / "config", "renewal-standard")
    as_of = date(2026, 11, 22)
    segments = pd.DataFrame(
        {
            "contract_key": ["K1", "K2"],
            "customer_key": ["C1", "C2"],
            "market": ["DE", "DE"],
            "product": ["loan", "loan"],
            "status": ["active", "active"],
            "segment": ["renewal_due_high_risk"] * 2,
            "risk_band": ["high", "high"],
            "auto_renew": [False, False],
            "term_end": [pd.Timestamp(as_of + timedelta(days=6))] * 2,
            "profiling_objection": [True, False],
        }
    )
    due = due_steps(renewal_targets(segments), book, as_of).set_index("customer_key")["step"]
    assert due.to_dict() == {"C1": "T-7", "C2": "T-7-offer"}
