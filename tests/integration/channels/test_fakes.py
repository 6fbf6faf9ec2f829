"""The fake Twilio and SendGrid servers: auth, wire format, scripts, counting and signed callbacks."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client

from tasks.channels.signatures import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    TwilioWebhookVerifier,
    verify_sendgrid,
)
from tasks.channels.twilio_sms import RebasedHttpClient
from tests.fakes.sendgrid_fake import FakeSendGrid, sendgrid_error, sendgrid_rate_limited
from tests.fakes.twilio_fake import FakeServer, FakeTwilio, Reply, Request, Response

SERVICE = "MG" + "1" * 32
TO = "+4915112345678"


# One client for the module: building an httpx.Client (its TLS context) costs tens of milliseconds.
HTTP = httpx.Client(trust_env=False, timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as fake:
        yield fake


class Receiver(FakeServer):
    """A webhook endpoint that records what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Request] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        with self._lock:
            self.received.append(request)
        return Response(204)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def create_url(fake: FakeTwilio, sid: str | None = None) -> str:
    return f"{fake.base_url}/2010-04-01/Accounts/{sid or fake.account_sid}/Messages.json"


def twilio_post(fake: FakeTwilio, form: dict[str, str], **kwargs: object) -> httpx.Response:
    auth = basic(fake.account_sid, fake.auth_token)
    return HTTP.post(create_url(fake), data=form, headers=auth, **kwargs)  # type: ignore[arg-type]


def sdk(fake: FakeTwilio, token: str | None = None) -> Client:
    http = RebasedHttpClient(fake.base_url, timeout=5, pool_size=2)
    return Client(fake.account_sid, token or fake.auth_token, http_client=http, environment={"X": "1"})


class TestFakeTwilio:
    def test_a_created_message_has_the_real_resource_shape(self, twilio: FakeTwilio) -> None:
        response = twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": "Hello"})
        assert response.status_code == 201
        body = response.json()
        assert body["sid"].startswith("SM") and len(body["sid"]) == 34
        assert (body["status"], body["num_segments"], body["to"], body["date_sent"]) == (
            "queued",
            "1",
            TO,
            None,
        )
        assert body["date_created"].endswith("+0000")
        with_service = twilio_post(twilio, {"To": TO, "MessagingServiceSid": SERVICE, "Body": "Hi"}).json()
        assert (with_service["status"], with_service["num_segments"]) == ("accepted", "0")

    def test_wrong_credentials_or_account_get_401(self, twilio: FakeTwilio) -> None:
        form = {"To": TO, "From": "+15005550006", "Body": "x"}
        wrong = HTTP.post(create_url(twilio), data=form, headers=basic(twilio.account_sid, "nope"))
        other_account = HTTP.post(
            create_url(twilio, "AC" + "9" * 32),
            data=form,
            headers=basic(twilio.account_sid, twilio.auth_token),
        )
        missing = HTTP.post(create_url(twilio), data=form)
        assert [r.status_code for r in (wrong, other_account, missing)] == [401, 401, 401]
        assert wrong.json()["code"] == 20003
        assert twilio.count() == 0

    @pytest.mark.parametrize(
        ("form", "code"),
        [
            ({"From": "+15005550006", "Body": "x"}, 21604),
            ({"To": "12345", "From": "+15005550006", "Body": "x"}, 21211),
            ({"To": TO, "Body": "x"}, 21603),
            ({"To": TO, "From": "+15005550006"}, 21602),
            ({"To": TO, "MessagingServiceSid": "MGxyz", "Body": "x"}, 21701),
            (
                {
                    "To": TO,
                    "MessagingServiceSid": SERVICE,
                    "ContentSid": "HX" + "a" * 32,
                    "ContentVariables": "{1",
                },
                21656,
            ),
            ({"To": TO, "MessagingServiceSid": SERVICE, "Body": "x", "ContentVariables": "{}"}, 21654),
            ({"To": TO, "From": "+15005550006", "Body": "x" * 1601}, 21617),
            ({"To": TO, "From": "+15005550006", "Body": "x", "StatusCallback": "https://my_host/cb"}, 21609),
            ({"To": "whatsapp:" + TO, "MessagingServiceSid": SERVICE, "Body": "free form"}, 63016),
        ],
        ids=[
            "no-to",
            "bad-to",
            "no-from",
            "no-body",
            "bad-service",
            "bad-variables",
            "variables-no-sid",
            "too-long",
            "underscore-callback",
            "whatsapp-freeform",
        ],
    )
    def test_invalid_requests_get_twilio_error_bodies(
        self, twilio: FakeTwilio, form: dict[str, str], code: int
    ) -> None:
        response = twilio_post(twilio, form)
        assert response.status_code == 400
        assert response.json() == {
            "code": code,
            "message": response.json()["message"],
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": 400,
        }

    def test_a_whatsapp_session_allows_a_free_form_body(self, twilio: FakeTwilio) -> None:
        twilio.whatsapp_sessions.add(TO)
        assert (
            twilio_post(
                twilio, {"To": "whatsapp:" + TO, "MessagingServiceSid": SERVICE, "Body": "hi"}
            ).status_code
            == 201
        )

    def test_scripts_play_in_order_per_recipient_then_accept(self, twilio: FakeTwilio) -> None:
        twilio.script(TO, Reply.rate_limited("2"), Reply.error(400, 21610, "unsubscribed"))
        form = {"To": TO, "From": "+15005550006", "Body": "x"}
        first, second, third = (twilio_post(twilio, form) for _ in range(3))
        other = twilio_post(twilio, form | {"To": "+4915100000000"})
        assert (first.status_code, first.headers["Retry-After"], first.json()["code"]) == (429, "2", 20429)
        assert (second.status_code, second.json()["code"]) == (400, 21610)
        assert (third.status_code, other.status_code) == (201, 201)
        assert (twilio.count(TO), twilio.count(), len(twilio.requests)) == (1, 2, 4)

    def test_the_sdk_raises_rest_and_service_exceptions_for_the_two_error_formats(
        self, twilio: FakeTwilio
    ) -> None:
        twilio.script(TO, Reply.error(400, 21211, "bad"), Reply.problem(400, 21610, "Unsubscribed", "STOP"))
        client = sdk(twilio)
        with pytest.raises(TwilioRestException) as legacy:
            client.messages.create(to=TO, from_="+15005550006", body="x")
        with pytest.raises(TwilioServiceException) as problem:
            client.messages.create(to=TO, from_="+15005550006", body="x")
        assert (legacy.value.status, legacy.value.code) == (400, 21211)
        assert (problem.value.status, problem.value.code) == (400, 21610)
        assert not isinstance(problem.value, TwilioRestException)

    def test_problem_details_mode_answers_validation_errors_as_rfc9457(self) -> None:
        with FakeTwilio(problem_details=True) as fake, pytest.raises(TwilioServiceException) as caught:
            sdk(fake).messages.create(to="12345", from_="+15005550006", body="x")
        assert caught.value.code == 21211

    def test_a_text_429_and_a_proxy_502_are_raw_bodies(self, twilio: FakeTwilio) -> None:
        twilio.script(TO, Reply.raw(429, "Too Many Requests"), Reply.raw(502, "<html>bad gateway</html>"))
        client = sdk(twilio)
        codes = []
        for _ in range(2):
            with pytest.raises(TwilioRestException) as caught:
                client.messages.create(to=TO, from_="+15005550006", body="x")
            codes.append((caught.value.status, caught.value.code))
        assert codes == [(429, 429), (502, 502)]

    def test_a_slow_reply_times_the_client_out(self, twilio: FakeTwilio) -> None:
        twilio.script(TO, Reply.accept(delay=0.5))
        with pytest.raises(httpx.ReadTimeout):
            twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": "x"}, timeout=0.1)
        time.sleep(0.5)
        assert twilio.count(TO) == 1

    @pytest.mark.parametrize(
        ("reply", "taken"), [(Reply.drop(), 1), (Reply.drop(accepted=False), 0), (Reply.close(), 0)]
    )
    def test_dropped_and_reset_connections_get_no_answer(
        self, twilio: FakeTwilio, reply: Reply, taken: int
    ) -> None:
        twilio.script(TO, reply)
        with pytest.raises(httpx.TransportError):
            twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": "x"})
        assert twilio.count(TO) == taken
        assert twilio.requests[-1][3] == 0

    def test_list_filters_by_to_and_date_sent_and_pages_through_the_sdk(self, twilio: FakeTwilio) -> None:
        for i in range(7):
            twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": f"m{i}"})
        twilio_post(twilio, {"To": "+4915100000000", "From": "+15005550006", "Body": "other"})
        client = sdk(twilio)
        today = twilio.clock().date().isoformat()
        found = client.messages.list(to=TO, date_sent_after=today, page_size=3)
        assert sorted(m.body for m in found) == [f"m{i}" for i in range(7)]
        assert client.messages.list(to=TO, date_sent_after="2999-01-01") == []
        assert client.messages.list(to=TO, date_sent_before="2000-01-01") == []
        fetched = client.messages(found[0].sid).fetch()
        assert fetched.body == found[0].body

    def test_queued_messages_have_no_date_sent_and_escape_the_date_filter(self) -> None:
        with FakeTwilio(auto_send=False) as fake:
            twilio_post(fake, {"To": TO, "From": "+15005550006", "Body": "x"})
            client = sdk(fake)
            today = fake.clock().date().isoformat()
            assert client.messages.list(to=TO, date_sent_after=today) == []
            assert len(client.messages.list(to=TO)) == 1

    def test_signed_status_callbacks_verify_with_the_public_url(
        self, twilio: FakeTwilio, receiver: Receiver
    ) -> None:
        public = "https://hooks.example.com/renewals"
        for key in ("pb:K1:T-1:sms", "pb:K2:T-1:sms"):
            callback = f"{public}/twilio/status?" + urlencode({"key": key})
            twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": key, "StatusCallback": callback})
        responses = twilio.send_status_callbacks(
            ("sent", "delivered"), post_to=receiver.base_url + "/twilio/status", duplicate=True, shuffle=True
        )
        assert [r.status_code for r in responses] == [204] * 8
        verifier = TwilioWebhookVerifier(twilio.auth_token, public)
        seen = []
        for request in receiver.received:
            form = dict(parse_qsl(request.body.decode()))
            sid = form["MessageSid"]
            query = urlencode({"key": twilio.message(sid).body})
            assert verifier.verify(request.path, query, form, request.headers[TWILIO_SIGNATURE_HEADER])
            assert not verifier.verify(
                request.path,
                query,
                form | {"MessageStatus": "failed"},
                request.headers[TWILIO_SIGNATURE_HEADER],
            )
            seen.append((sid, form["MessageStatus"]))
        assert len(seen) == 8 and len(set(seen)) == 4
        assert seen != sorted(seen, key=lambda s: (s[0], s[1] != "sent"))

    def test_an_error_callback_carries_the_error_code(self, twilio: FakeTwilio, receiver: Receiver) -> None:
        sid = twilio_post(twilio, {"To": TO, "From": "+15005550006", "Body": "x"}).json()["sid"]
        twilio.send_status_callback(
            sid, "undelivered", 30003, url="https://hooks.example.com/cb", post_to=receiver.base_url + "/cb"
        )
        form = dict(parse_qsl(receiver.received[0].body.decode()))
        assert (form["MessageStatus"], form["ErrorCode"], form["AccountSid"]) == (
            "undelivered",
            "30003",
            twilio.account_sid,
        )

    def test_the_fake_serves_thousands_of_requests_and_counts_each_once(self, twilio: FakeTwilio) -> None:
        auth = basic(twilio.account_sid, twilio.auth_token)
        numbers = [f"+49151{i:08d}" for i in range(2000)]

        def post(client: httpx.Client, number: str) -> int:
            return client.post(
                create_url(twilio), data={"To": number, "From": "+15005550006", "Body": "x"}, headers=auth
            ).status_code

        local = threading.local()
        clients: list[httpx.Client] = []

        def work(number: str) -> int:
            if not hasattr(local, "client"):
                local.client = httpx.Client(trust_env=False)
                clients.append(local.client)
            return post(local.client, number)

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(work, numbers))
        for client in clients:
            client.close()
        assert statuses == [201] * 2000
        assert sorted(m.to for m in twilio.messages) == numbers
        assert twilio.peak_in_flight <= 8


class TestFakeSendGrid:
    def mail(self, *emails: str, **extra: object) -> dict[str, object]:
        body: dict[str, object] = {
            "personalizations": [
                {"to": [{"email": e}], "custom_args": {"message_key": f"k-{e}"}} for e in emails
            ],
            "from": {"email": "reminders@example.com"},
            "subject": "Your renewal",
            "content": [
                {"type": "text/plain", "value": "text"},
                {"type": "text/html", "value": "<p>html</p>"},
            ],
        }
        body.update(extra)
        return body

    def post(
        self, fake: FakeSendGrid, body: object, key: str | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or fake.api_key}"}
        return HTTP.post(f"{fake.base_url}/v3/mail/send", json=body, headers=headers, **kwargs)  # type: ignore[arg-type]

    def test_an_accepted_mail_gets_202_an_empty_body_and_an_x_message_id(
        self, sendgrid: FakeSendGrid
    ) -> None:
        response = self.post(sendgrid, self.mail("a@example.com", "b@example.com"))
        assert (response.status_code, response.content) == (202, b"")
        message_id = response.headers["X-Message-Id"]
        assert [(s.email, s.x_message_id, s.message_key) for s in sendgrid.sent] == [
            ("a@example.com", message_id, "k-a@example.com"),
            ("b@example.com", message_id, "k-b@example.com"),
        ]

    def test_a_wrong_key_gets_401(self, sendgrid: FakeSendGrid) -> None:
        response = self.post(sendgrid, self.mail("a@example.com"), key="SG.wrong")
        assert response.status_code == 401 and response.json()["errors"][0]["field"] is None
        assert sendgrid.count() == 0

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"personalizations": []}, "personalizations"),
            ({"from": {}}, "from.email"),
            ({"content": []}, "content"),
            (
                {"content": [{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]},
                "content",
            ),
            ({"subject": ""}, "subject"),
            ({"categories": [str(i) for i in range(11)]}, "categories"),
            ({"asm": {"group_id": "12"}}, "asm.group_id"),
        ],
        ids=[
            "no-personalizations",
            "no-from",
            "no-content",
            "html-first",
            "no-subject",
            "11-categories",
            "asm",
        ],
    )
    def test_invalid_mail_gets_sendgrid_errors(
        self, sendgrid: FakeSendGrid, change: dict[str, object], field: str
    ) -> None:
        response = self.post(sendgrid, self.mail("a@example.com", **change))
        assert response.status_code == 400
        assert field in [e["field"] for e in response.json()["errors"]]

    def test_a_template_replaces_content_and_subject(self, sendgrid: FakeSendGrid) -> None:
        body = self.mail("a@example.com", template_id="d-abc")
        del body["content"], body["subject"]
        assert self.post(sendgrid, body).status_code == 202

    def test_more_than_1000_personalizations_are_refused(self, sendgrid: FakeSendGrid) -> None:
        emails = [f"u{i}@example.com" for i in range(1001)]
        assert self.post(sendgrid, self.mail(*emails)).status_code == 400
        assert self.post(sendgrid, self.mail(*emails[:1000])).status_code == 202

    def test_a_bad_address_is_named_by_its_field(self, sendgrid: FakeSendGrid) -> None:
        errors = self.post(sendgrid, self.mail("a@example.com", "not-an-address")).json()["errors"]
        assert [e["field"] for e in errors] == ["personalizations.1.to.0.email"]

    def test_a_large_payload_gets_413(self) -> None:
        with FakeSendGrid(max_bytes=1000) as fake:
            assert self.post(fake, self.mail(*[f"u{i}@example.com" for i in range(50)])).status_code == 413

    def test_scripts_answer_429_with_rate_limit_headers_then_accept(self, sendgrid: FakeSendGrid) -> None:
        sendgrid.script("a@example.com", sendgrid_rate_limited(1_900_000_000), sendgrid_error(500, "oops"))
        first, second, third = (self.post(sendgrid, self.mail("a@example.com")) for _ in range(3))
        assert first.status_code == 429
        assert (first.headers["X-RateLimit-Reset"], first.headers["X-RateLimit-Remaining"]) == (
            "1900000000",
            "0",
        )
        assert (second.status_code, third.status_code) == (500, 202)
        assert sendgrid.count("a@example.com") == 1

    def test_sandbox_mode_answers_200_and_sends_nothing(self, sendgrid: FakeSendGrid) -> None:
        body = self.mail("a@example.com", mail_settings={"sandbox_mode": {"enable": True}})
        assert self.post(sendgrid, body).status_code == 200
        assert sendgrid.count() == 0

    def test_signed_event_batches_verify_duplicated_and_shuffled(
        self, sendgrid: FakeSendGrid, receiver: Receiver
    ) -> None:
        self.post(sendgrid, self.mail(*[f"u{i}@example.com" for i in range(5)], categories=["pb", "T-30"]))
        events = sendgrid.events(("processed", "delivered"))
        assert {e["message_key"] for e in events} == {f"k-u{i}@example.com" for i in range(5)}
        assert all(e["sg_message_id"].startswith(sendgrid.sent[0].x_message_id + ".") for e in events)
        responses = sendgrid.post_events(
            receiver.base_url + "/sendgrid/events", events, batch_size=4, duplicate=True, shuffle=True
        )
        assert [r.status_code for r in responses] == [204, 204, 204, 204, 204]
        received = []
        for request in receiver.received:
            signature = request.headers[SENDGRID_SIGNATURE_HEADER]
            stamp = request.headers[SENDGRID_TIMESTAMP_HEADER]
            assert request.body.endswith(b"\r\n")
            assert verify_sendgrid(sendgrid.public_key, request.body, signature, stamp)
            received.extend(json.loads(request.body))
        assert len(received) == 20 and len({e["sg_event_id"] for e in received}) == 10
        assert [e["sg_event_id"] for e in received] != [e["sg_event_id"] for e in events + events]

    def test_tampered_or_stale_event_batches_fail_verification(
        self, sendgrid: FakeSendGrid, receiver: Receiver
    ) -> None:
        self.post(sendgrid, self.mail("a@example.com"))
        sendgrid.post_events(receiver.base_url, sendgrid.events(), tamper=True)
        sendgrid.post_events(receiver.base_url, sendgrid.events(), timestamp=int(time.time()) - 3600)
        for request in receiver.received:
            assert not verify_sendgrid(
                sendgrid.public_key,
                request.body,
                request.headers[SENDGRID_SIGNATURE_HEADER],
                request.headers[SENDGRID_TIMESTAMP_HEADER],
            )
