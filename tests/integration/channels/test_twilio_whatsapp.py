"""WhatsApp: the template registry, and the sender against the fake Twilio through the real SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.channels.base import Outbound, SendStatus
from tasks.channels.errors import ErrorClass
from tasks.channels.results import ChannelResult, PendingMessage, TemplatedOutbound
from tasks.channels.retry import Jitter, RetryPolicy
from tasks.channels.twilio_whatsapp import TwilioWhatsAppSender
from tasks.channels.whatsapp_registry import (
    WhatsAppRegistry,
    WhatsAppTemplateMissing,
    WhatsAppVariablesInvalid,
    load_whatsapp_registry,
)
from tests.fakes.twilio_fake import FakeTwilio, Reply
from tests.support.factories import ROOT

SERVICE = "MG" + "2" * 32
REGISTRY_FILE = ROOT / "config" / "whatsapp_templates.yaml"
KEYS = ["early_renewal_offer", "renewal_grace", "renewal_last_call", "renewal_notice", "renewal_reminder"]
LANGUAGES = ["de", "en", "es", "fr", "id", "vi"]
CONTEXT = {
    "product_name": "Hausratversicherung",
    "contract_ref": "K-0001",
    "term_end": "22. Dezember 2026",
    "price": "129,00 €",
    "renew_url": "https://x.example/r/abc",
    "days_left": "14",
}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def registry() -> WhatsAppRegistry:
    return load_whatsapp_registry(REGISTRY_FILE)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def sender(fake: FakeTwilio, registry: WhatsAppRegistry, **overrides: Any) -> TwilioWhatsAppSender:
    sleeps: list[float] = []
    options: dict[str, Any] = {
        "registry": registry,
        "base_url": fake.base_url,
        "messaging_service_sid": SERVICE,
        "status_callback_base": "https://hooks.example.com",
        "retry": RetryPolicy(max_attempts=3, base_delay=0.1, jitter=Jitter.NONE, sleep=sleeps.append),
        "timeout": 2.0,
    }
    options.update(overrides)
    return TwilioWhatsAppSender(fake.account_sid, fake.auth_token, **options)


def wa(
    n: int, template: str | None = "renewal_reminder", locale: str = "de-AT", **variables: str
) -> Outbound:
    return TemplatedOutbound(
        f"renewal-standard:K{n:07d}:20261222:T-1:whatsapp",
        "whatsapp",
        f"+4915100{n:06d}",
        "Preview text of the approved template",
        "service",
        "renewal-standard:T-1",
        template=template,
        locale=locale,
        variables=CONTEXT | variables,
    )


class TestRegistry:
    def test_every_template_key_is_registered_in_every_language(self, registry: WhatsAppRegistry) -> None:
        assert registry.keys() == KEYS
        for key in KEYS:
            assert registry.locales(key) == LANGUAGES

    def test_every_whatsapp_template_preview_has_a_registry_entry(self, registry: WhatsAppRegistry) -> None:
        previews = {
            (p.parent.name, p.name.split(".")[0])
            for p in (ROOT / "templates" / "whatsapp").glob("*/*.txt.j2")
        }
        for key, locale in previews:
            registry.lookup(key, locale)

    def test_lookup_follows_the_locale_chain(self, registry: WhatsAppRegistry) -> None:
        assert registry.lookup("renewal_notice", "de-AT") == registry.lookup("renewal_notice", "de")
        assert registry.lookup("renewal_notice", "pt-BR") == registry.lookup("renewal_notice", "en")
        sid, names = registry.lookup("renewal_reminder", "vi-VN")
        assert sid.startswith("HX") and names[0] == "product_name"

    def test_a_missing_template_names_what_is_registered(self, registry: WhatsAppRegistry) -> None:
        with pytest.raises(WhatsAppTemplateMissing, match="renewal_notice"):
            registry.lookup("no_such_template", "de")

    def test_a_missing_locale_lists_the_chain_tried_and_the_locales_there_are(self) -> None:
        empty = WhatsAppRegistry({"x": {}})
        with pytest.raises(WhatsAppTemplateMissing, match=r"de-AT -> de -> en \(registered locales: none\)"):
            empty.lookup("x", "de-AT")

    def test_content_variables_are_numbered_in_registry_order(self, registry: WhatsAppRegistry) -> None:
        assert registry.content_variables("renewal_reminder", "de", CONTEXT) == {
            "1": "Hausratversicherung",
            "2": "K-0001",
            "3": "14",
            "4": "22. Dezember 2026",
            "5": "129,00 €",
            "6": "https://x.example/r/abc",
        }

    def test_missing_variables_are_listed_by_name_before_sending(self, registry: WhatsAppRegistry) -> None:
        with pytest.raises(WhatsAppVariablesInvalid, match="days_overdue") as caught:
            registry.content_variables("renewal_grace", "en", CONTEXT)
        assert "Hausrat" not in str(caught.value)

    @pytest.mark.parametrize("value", ["", "   ", "two\nlines", "tab\there", "five     spaces"])
    def test_values_whatsapp_refuses_are_caught_before_sending(
        self, registry: WhatsAppRegistry, value: str
    ) -> None:
        with pytest.raises(WhatsAppVariablesInvalid, match="price"):
            registry.content_variables("renewal_notice", "en", CONTEXT | {"price": value})

    @pytest.mark.parametrize(
        "entry",
        [
            "{content_sid: HX123, variables: [price]}",
            "{content_sid: HXAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA, variables: [price]}",
            "{content_sid: HX00000000000000000000000000000001, variables: [price, price]}",
            "{content_sid: HX00000000000000000000000000000001, variables: [iban]}",
            "{variables: [price]}",
        ],
        ids=["short-sid", "upper-hex", "repeated", "not-in-context", "no-sid"],
    )
    def test_an_invalid_registry_file_is_refused(self, tmp_path: Path, entry: str) -> None:
        path = tmp_path / "wa.yaml"
        path.write_text(f"version: 1\ntemplates:\n  renewal_notice:\n    en: {entry}\n")
        with pytest.raises(ValidationError):
            load_whatsapp_registry(path)


class TestSender:
    def test_a_template_message_goes_out_as_content_sid_and_json_variables(
        self, fake: FakeTwilio, registry: WhatsAppRegistry
    ) -> None:
        with sender(fake, registry) as s:
            result = s.send([wa(1)])[0]
        assert result.status is SendStatus.SENT
        params = fake.messages[0].params
        sid, _ = registry.lookup("renewal_reminder", "de")
        assert params["To"] == "whatsapp:+4915100000001"
        assert (params["ContentSid"], params["MessagingServiceSid"]) == (sid, SERVICE)
        assert "Body" not in params and "From" not in params
        assert json.loads(params["ContentVariables"]) == registry.content_variables(
            "renewal_reminder", "de", CONTEXT
        )
        assert params["ValidityPeriod"] == "14400"
        assert params["StatusCallback"].startswith(
            "https://hooks.example.com/twilio/status?key=renewal-standard%3A"
        )
        assert result.provider_message_id == fake.messages[0].sid

    def test_a_whatsapp_from_sender_gets_the_channel_prefix(
        self, fake: FakeTwilio, registry: WhatsAppRegistry
    ) -> None:
        with sender(fake, registry, from_="+15005550006") as s:
            s.send([wa(1)])
        assert fake.messages[0].params["From"] == "whatsapp:+15005550006"

    @pytest.mark.parametrize("code", [63016, 63024])
    def test_no_whatsapp_for_the_recipient_fails_with_fallback(
        self, fake: FakeTwilio, registry: WhatsAppRegistry, code: int
    ) -> None:
        fake.script("+4915100000001", Reply.error(400, code, "Failed to send"))
        with sender(fake, registry) as s:
            result = s.send([wa(1)])[0]
        assert isinstance(result, ChannelResult)
        assert (result.status, result.error_code, result.fallback) == (SendStatus.FAILED, str(code), True)
        assert len(fake.requests) == 1

    def test_a_tier_limit_is_retried(self, fake: FakeTwilio, registry: WhatsAppRegistry) -> None:
        fake.script("+4915100000001", Reply.error(429, 63018, "rate limit"), Reply.accept())
        with sender(fake, registry) as s:
            result = s.send([wa(1)])[0]
        assert (result.status, result.attempts) == (SendStatus.SENT, 2)  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("message", "code"),
        [
            (
                Outbound("k", "whatsapp", "+4915100000001", "free text", "service", "pb:T-1"),
                "TEMPLATE_REQUIRED",
            ),
            (wa(1, template="no_such_template"), "TEMPLATE_NOT_REGISTERED"),
            (wa(1, template="renewal_grace"), "TEMPLATE_VARIABLES"),
            (wa(1, price="line\nbreak"), "TEMPLATE_VARIABLES"),
        ],
        ids=["no-template", "unregistered", "missing-variable", "bad-value"],
    )
    def test_a_message_without_a_usable_template_fails_before_calling_twilio(
        self, fake: FakeTwilio, registry: WhatsAppRegistry, message: Outbound, code: str
    ) -> None:
        with sender(fake, registry) as s:
            result = s.send([message])[0]
        assert isinstance(result, ChannelResult)
        assert (result.status, result.error_code, result.error_class, result.fallback) == (
            SendStatus.FAILED,
            code,
            ErrorClass.PERMANENT,
            True,
        )
        assert fake.requests == []

    def test_a_session_message_as_plain_body_is_what_twilio_refuses(self, fake: FakeTwilio) -> None:
        # Why templates: the fake, like Twilio since 2025-04-01, refuses a business-initiated Body.
        from tasks.channels.twilio_sms import TwilioSmsSender

        with TwilioSmsSender(
            fake.account_sid, fake.auth_token, base_url=fake.base_url, messaging_service_sid=SERVICE
        ) as s:
            result = s.send([Outbound("k", "sms", "whatsapp:+4915100000001", "hi", "service", "pb:T-1")])[0]
        assert (result.status, result.error_code) == (SendStatus.FAILED, "63016")

    def test_an_in_doubt_message_is_found_by_reconcile(
        self, fake: FakeTwilio, registry: WhatsAppRegistry
    ) -> None:
        fake.script("+4915100000001", Reply.drop(accepted=True))
        with sender(fake, registry) as s:
            result = s.send([wa(1)])[0]
            assert result.status is SendStatus.IN_DOUBT
            found = s.reconcile([result.message_key])
        assert found[result.message_key].provider_message_id == fake.messages[0].sid

    def test_reconcile_keeps_doubt_when_several_messages_could_match(
        self, fake: FakeTwilio, registry: WhatsAppRegistry
    ) -> None:
        claimed = datetime.now(UTC) - timedelta(seconds=5)
        fake.add_message("whatsapp:+4915100000001", "[HX1] a")
        fake.add_message("whatsapp:+4915100000001", "[HX2] b")
        pending = {"k": PendingMessage("k", "+4915100000001", "preview", claimed)}
        with sender(fake, registry, pending_lookup=lambda keys: pending) as s:
            found = s.reconcile(["k"])
        assert (found["k"].status, found["k"].error_code) == (SendStatus.IN_DOUBT, "RECONCILE_AMBIGUOUS")

    def test_a_messaging_service_is_required(self, fake: FakeTwilio, registry: WhatsAppRegistry) -> None:
        with pytest.raises(ValueError):
            sender(fake, registry, messaging_service_sid="")
