"""Webhook signatures: Twilio HMAC over the public URL, SendGrid ECDSA over timestamp + raw body."""

from __future__ import annotations

import base64
import json

import pytest

from tasks.channels.signatures import (
    SendGridWebhookVerifier,
    TwilioWebhookVerifier,
    public_url,
    sendgrid_keypair,
    sendgrid_sign,
    twilio_signature,
    verify_sendgrid,
    verify_twilio,
)

TOKEN = "12345abcdef"
URL = "https://hooks.example.com/renewals/twilio/status?key=pb%3AK1%3AT-1%3Asms"
PARAMS = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "To": "+4915112345678"}
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def keys() -> tuple[object, str]:
    return sendgrid_keypair()


class TestTwilio:
    def test_a_valid_signature_verifies(self) -> None:
        assert verify_twilio(TOKEN, URL, PARAMS, twilio_signature(TOKEN, URL, PARAMS))

    def test_the_sdk_default_port_variant_verifies_too(self) -> None:
        signature = twilio_signature(TOKEN, URL.replace(".com/", ".com:443/"), PARAMS)
        assert verify_twilio(TOKEN, URL, PARAMS, signature)

    def test_a_tampered_param_fails(self) -> None:
        signature = twilio_signature(TOKEN, URL, PARAMS)
        assert not verify_twilio(TOKEN, URL, PARAMS | {"MessageStatus": "failed"}, signature)
        assert not verify_twilio(TOKEN, URL, PARAMS | {"ErrorCode": "30003"}, signature)

    def test_a_wrong_url_fails(self) -> None:
        signature = twilio_signature(TOKEN, URL, PARAMS)
        assert not verify_twilio(TOKEN, URL.replace("T-1", "T-7"), PARAMS, signature)
        assert not verify_twilio(TOKEN, URL.replace("https://", "http://"), PARAMS, signature)

    def test_a_wrong_token_fails(self) -> None:
        assert not verify_twilio("other", URL, PARAMS, twilio_signature(TOKEN, URL, PARAMS))

    def test_behind_a_proxy_the_public_url_is_rebuilt_from_the_configured_base(self) -> None:
        signature = twilio_signature(TOKEN, URL, PARAMS)
        # The app sees http://10.0.0.5:8000/twilio/status?... after TLS termination and prefix stripping.
        verifier = TwilioWebhookVerifier(TOKEN, "https://hooks.example.com/renewals/")
        assert verifier.verify("/twilio/status", "key=pb%3AK1%3AT-1%3Asms", PARAMS, signature)
        assert not TwilioWebhookVerifier(TOKEN, "http://10.0.0.5:8000").verify(
            "/twilio/status", "key=pb%3AK1%3AT-1%3Asms", PARAMS, signature
        )

    def test_public_url_joins_prefix_path_and_query(self) -> None:
        assert public_url("https://h.example/p/", "/a/b", "x=1") == "https://h.example/p/a/b?x=1"
        assert public_url("https://h.example", "a") == "https://h.example/a"

    def test_repeated_form_keys_are_signed_like_twilio(self) -> None:
        pairs = [("MediaUrl", "https://m.example/1"), ("MediaUrl", "https://m.example/2"), ("To", "+1")]
        signature = twilio_signature(TOKEN, URL, pairs)
        assert verify_twilio(TOKEN, URL, pairs, signature)
        assert not verify_twilio(TOKEN, URL, pairs[:1] + pairs[2:], signature)

    def test_hmac_sha256_signatures_are_honoured_when_announced(self) -> None:
        from twilio.request_validator import HMAC_SHA256, RequestValidator

        signature = RequestValidator(TOKEN).compute_signature(URL, PARAMS, HMAC_SHA256)
        settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
        assert verify_twilio(TOKEN, URL, PARAMS, signature, settings)
        assert not verify_twilio(TOKEN, URL, PARAMS, signature)

    @pytest.mark.parametrize("signature", [None, "", "not base64 at all", "\x00\xff"])
    def test_missing_or_malformed_signatures_fail_without_raising(self, signature: str | None) -> None:
        assert not verify_twilio(TOKEN, URL, PARAMS, signature)
        assert not verify_twilio("", URL, PARAMS, signature)


class TestSendGrid:
    def body(self) -> str:
        events = [{"email": "a@example.com", "event": "delivered", "sg_event_id": "e1", "message_key": "k1"}]
        return json.dumps(events) + "\r\n"

    def test_a_valid_batch_verifies(self, keys: tuple[object, str]) -> None:
        private, public = keys
        body = self.body()
        signature = sendgrid_sign(private, body, NOW)  # type: ignore[arg-type]
        assert verify_sendgrid(public, body.encode(), signature, str(NOW), now=NOW + 10)
        assert SendGridWebhookVerifier(public, clock=lambda: NOW).verify(body, signature, str(NOW))

    def test_a_tampered_body_fails(self, keys: tuple[object, str]) -> None:
        private, public = keys
        body = self.body()
        signature = sendgrid_sign(private, body, NOW)  # type: ignore[arg-type]
        assert not verify_sendgrid(public, body.replace("delivered", "bounce"), signature, str(NOW), now=NOW)
        # Re-serialising changes bytes (here the trailing CRLF): the raw body must be verified as received.
        assert not verify_sendgrid(public, body.rstrip(), signature, str(NOW), now=NOW)

    def test_a_changed_timestamp_fails(self, keys: tuple[object, str]) -> None:
        private, public = keys
        signature = sendgrid_sign(private, self.body(), NOW)  # type: ignore[arg-type]
        assert not verify_sendgrid(public, self.body(), signature, str(NOW + 1), now=NOW)

    def test_an_old_or_future_timestamp_fails_even_when_signed(self, keys: tuple[object, str]) -> None:
        private, public = keys
        body = self.body()
        signature = sendgrid_sign(private, body, NOW)  # type: ignore[arg-type]
        assert verify_sendgrid(public, body, signature, str(NOW), now=NOW + 300)
        assert not verify_sendgrid(public, body, signature, str(NOW), now=NOW + 301)
        assert not verify_sendgrid(public, body, signature, str(NOW), now=NOW - 301)
        assert verify_sendgrid(public, body, signature, str(NOW), max_age=3600, now=NOW + 3000)

    def test_another_key_fails(self, keys: tuple[object, str]) -> None:
        private, _ = keys
        _, other_public = sendgrid_keypair()
        signature = sendgrid_sign(private, self.body(), NOW)  # type: ignore[arg-type]
        assert not verify_sendgrid(other_public, self.body(), signature, str(NOW), now=NOW)

    @pytest.mark.parametrize(
        ("signature", "timestamp"),
        [
            ("%%% not base64 %%%", str(NOW)),
            ("YWJj", str(NOW)),
            (base64.b64encode(b"\x30\x03\x02\x01").decode(), str(NOW)),
            ("", str(NOW)),
            (None, str(NOW)),
            ("YWJj", "yesterday"),
            ("YWJj", None),
        ],
        ids=["not-base64", "not-der", "truncated-der", "empty", "missing", "bad-timestamp", "no-timestamp"],
    )
    def test_malformed_input_fails_without_raising(
        self, keys: tuple[object, str], signature: str | None, timestamp: str | None
    ) -> None:
        _, public = keys
        assert not verify_sendgrid(public, self.body(), signature, timestamp, now=NOW)

    def test_a_malformed_public_key_fails_without_raising(self) -> None:
        assert not verify_sendgrid("not-a-key", self.body(), "YWJj", str(NOW), now=NOW)
        assert not verify_sendgrid("", self.body(), "YWJj", str(NOW), now=NOW)

    def test_a_body_that_is_not_utf8_fails_without_raising(self, keys: tuple[object, str]) -> None:
        private, public = keys
        signature = sendgrid_sign(private, b"\xff\xfe", NOW)  # type: ignore[arg-type]
        assert not verify_sendgrid(public, b"\xff\xfe", signature, str(NOW), now=NOW)
