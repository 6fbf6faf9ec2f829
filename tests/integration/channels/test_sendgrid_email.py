"""The SendGrid email sender against the fake SendGrid, through the real sendgrid-python SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tasks.channels.base import Outbound, SendStatus
from tasks.channels.errors import ErrorClass
from tasks.channels.results import ChannelResult, TemplatedOutbound
from tasks.channels.retry import Jitter, RetryPolicy
from tasks.channels.sendgrid_email import SendGridEmailSender
from tests.fakes.sendgrid_fake import FakeSendGrid, sendgrid_error, sendgrid_rate_limited
from tests.fakes.twilio_fake import Reply, free_port

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


class Sleeps:
    def __init__(self, on_first: Any = None) -> None:
        self.calls: list[float] = []
        self.on_first = on_first

    def __call__(self, seconds: float) -> None:
        if not self.calls and self.on_first is not None:
            self.on_first()
        self.calls.append(seconds)


def retry(sleeps: Sleeps | None = None, attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts,
        base_delay=0.1,
        max_delay=1.0,
        jitter=Jitter.NONE,
        clock=lambda: NOW,
        sleep=sleeps or Sleeps(),
    )


def sender(fake: FakeSendGrid, **overrides: Any) -> SendGridEmailSender:
    options: dict[str, Any] = {
        "base_url": fake.base_url + "/",
        "from_email": "reminders@bank.example",
        "from_name": "Renewals Demo Bank",
        "retry": retry(),
        "timeout": 2.0,
        "concurrency": 4,
        "asm_group_id": 4242,
        "unsubscribe_url": "https://bank.example/unsubscribe",
        "unsubscribe_mailto": "unsubscribe@bank.example",
        "dynamic_templates": {"renewal_notice": "d-notice", "renewal_notice/fr": "d-notice-fr"},
    }
    options.update(overrides)
    return SendGridEmailSender(fake.api_key, **options)


def email(n: int, purpose: str = "service", step: str = "T-30") -> Outbound:
    return Outbound(
        f"renewal-standard:K{n:07d}:20261222:{step}:email",
        "email",
        f"customer{n}@example.com",
        f"Plain text {n}",
        purpose,
        f"renewal-standard:{step}",
        subject="Your renewal",
        html=f"<p>HTML {n}</p>",
    )


def templated(n: int, locale: str = "de-AT", to: str | None = None) -> Outbound:
    return TemplatedOutbound(
        f"renewal-standard:K{n:07d}:20261222:T-30:email",
        "email",
        to or f"customer{n}@example.com",
        "text",
        "service",
        "renewal-standard:T-30",
        subject=f"Subject {n}",
        html="<p>x</p>",
        template="renewal_notice",
        locale=locale,
        variables={"first_name": f"Name{n}", "price": "129,00 €"},
    )


def test_a_message_goes_out_with_text_and_html_parts_and_only_its_key_as_custom_arg(
    fake: FakeSendGrid,
) -> None:
    with sender(fake) as s:
        result = s.send([email(1)])[0]
    assert result.status is SendStatus.SENT
    [sent] = fake.sent
    assert result.provider_message_id == sent.x_message_id
    assert sent.custom_args == {"message_key": result.message_key}
    assert sent.content == [
        {"type": "text/plain", "value": "Plain text 1"},
        {"type": "text/html", "value": "<p>HTML 1</p>"},
    ]
    assert (sent.subject, sent.categories, sent.template_id) == (
        "Your renewal",
        ["renewal-standard", "T-30"],
        None,
    )
    assert sent.request["from"] == {"email": "reminders@bank.example", "name": "Renewals Demo Bank"}
    assert sent.headers == {} and sent.asm is None


def test_marketing_mail_carries_one_click_unsubscribe_headers_and_the_asm_group(fake: FakeSendGrid) -> None:
    with sender(fake) as s:
        s.send([email(1, purpose="marketing", step="T-7-offer")])
    [sent] = fake.sent
    key = "renewal-standard%3AK0000001%3A20261222%3AT-7-offer%3Aemail"
    assert sent.headers == {
        "List-Unsubscribe": f"<mailto:unsubscribe@bank.example?subject=unsubscribe%20{key}>, "
        f"<https://bank.example/unsubscribe?key={key}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert sent.asm == {"group_id": 4242}


def test_messages_sharing_a_dynamic_template_go_out_1000_per_request(fake: FakeSendGrid) -> None:
    batch = [templated(n) for n in range(2500)]
    with sender(fake) as s:
        results = s.send(batch)
    assert [r.message_key for r in results] == [m.message_key for m in batch]
    assert all(r.status is SendStatus.SENT for r in results)
    assert sorted(p for _, _, p, _ in fake.requests) == [500, 1000, 1000]
    by_key = fake.by_key()
    assert all(len(by_key[m.message_key]) == 1 for m in batch)
    first = by_key[batch[7].message_key][0]
    assert (first.email, first.template_id) == ("customer7@example.com", "d-notice")
    assert first.dynamic_template_data == {"first_name": "Name7", "price": "129,00 €", "subject": "Subject 7"}
    assert first.request.get("content") is None
    assert results[7].provider_message_id == first.x_message_id
    assert len({r.provider_message_id for r in results}) == 3


def test_a_locale_specific_template_id_wins_along_the_chain(fake: FakeSendGrid) -> None:
    with sender(fake) as s:
        s.send([templated(1, "fr-CA"), templated(2, "de")])
    assert sorted((x.email, x.template_id) for x in fake.sent) == [
        ("customer1@example.com", "d-notice-fr"),
        ("customer2@example.com", "d-notice"),
    ]


def test_plain_messages_go_one_request_each_beside_a_templated_group(fake: FakeSendGrid) -> None:
    with sender(fake) as s:
        results = s.send([email(1), templated(2), email(3), templated(4)])
    assert all(r.status is SendStatus.SENT for r in results)
    assert sorted(p for _, _, p, _ in fake.requests) == [1, 1, 2]


def test_a_rate_limited_request_waits_until_the_reset_time_then_sends_once(fake: FakeSendGrid) -> None:
    fake.script("customer1@example.com", sendgrid_rate_limited(NOW + 7))
    sleeps = Sleeps()
    with sender(fake, retry=retry(sleeps)) as s:
        result = s.send([email(1)])[0]
    assert (result.status, result.attempts) == (SendStatus.SENT, 2)  # type: ignore[attr-defined]
    assert sleeps.calls == [7.0]
    assert fake.count("customer1@example.com") == 1


def test_retry_after_is_honoured_too(fake: FakeSendGrid) -> None:
    fake.script("customer1@example.com", sendgrid_error(429, "slow down", headers={"Retry-After": "3"}))
    sleeps = Sleeps()
    with sender(fake, retry=retry(sleeps)) as s:
        s.send([email(1)])
    assert sleeps.calls == [3.0]


def test_one_bad_address_in_a_batch_fails_alone_and_the_rest_go_once(fake: FakeSendGrid) -> None:
    batch = [templated(n) for n in range(40)]
    batch[13] = templated(13, to="not-an-address")
    with sender(fake) as s:
        results = s.send(batch)
    failed = [r for r in results if r.status is not SendStatus.SENT]
    assert [(r.message_key, r.error_code) for r in failed] == [(batch[13].message_key, "400")]
    assert "personalizations.13.to.0.email" in (failed[0].error_detail or "")
    assert "not-an-address" not in (failed[0].error_detail or "")
    assert fake.count() == 39 and all(len(v) == 1 for v in fake.by_key().values())
    assert [p for *_, p, _ in fake.requests] == [40, 39]


def test_a_batch_refused_as_a_whole_fails_as_a_whole_in_one_request(fake: FakeSendGrid) -> None:
    fake.script("customer0@example.com", sendgrid_error(400, "The from address does not match", "from.email"))
    with sender(fake) as s:
        results = s.send([templated(n) for n in range(30)])
    assert {(r.status, r.error_code) for r in results} == {(SendStatus.FAILED, "400")}
    assert len(fake.requests) == 1


def test_a_batch_too_large_for_one_request_is_split(fake: FakeSendGrid) -> None:
    with FakeSendGrid(max_bytes=20_000) as small, sender(small) as s:
        results = s.send([templated(n) for n in range(300)])
        assert all(r.status is SendStatus.SENT for r in results)
        assert small.count() == 300
        assert any(status == 413 for *_, status in small.requests)


def test_permanent_errors_fail_without_retry(fake: FakeSendGrid) -> None:
    fake.script("customer1@example.com", sendgrid_error(400, "bad", "subject"))
    fake.script("customer2@example.com", sendgrid_error(413, "too large"))
    with sender(fake) as s:
        first, second = s.send([email(1), email(2)])
    assert (first.error_code, first.error_class, first.attempts) == ("400", ErrorClass.PERMANENT, 1)  # type: ignore[attr-defined]
    assert (second.error_code, second.status) == ("413", SendStatus.FAILED)
    assert len(fake.requests) == 2


def test_a_wrong_api_key_stops_the_batch(fake: FakeSendGrid) -> None:
    s = SendGridEmailSender("SG.wrong", from_email="r@bank.example", base_url=fake.base_url, concurrency=2)
    with s:
        results = s.send([email(n) for n in range(30)])
    assert {(r.status, r.error_code) for r in results} == {(SendStatus.FAILED, "401")}
    assert len(fake.requests) <= 4


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_are_in_doubt_and_not_retried(fake: FakeSendGrid, status: int) -> None:
    fake.script("customer1@example.com", sendgrid_error(status, "oops"))
    with sender(fake) as s:
        result = s.send([email(1)])[0]
    assert (result.status, result.error_code) == (SendStatus.IN_DOUBT, str(status))
    assert len(fake.requests) == 1


def test_503_is_retried(fake: FakeSendGrid) -> None:
    fake.script("customer1@example.com", sendgrid_error(503, "unavailable"))
    with sender(fake) as s:
        result = s.send([email(1)])[0]
    assert (result.status, result.attempts) == (SendStatus.SENT, 2)  # type: ignore[attr-defined]


def test_a_timeout_after_sending_is_in_doubt(fake: FakeSendGrid) -> None:
    fake.script("customer1@example.com", Reply.accept(delay=0.6))
    with sender(fake, timeout=0.2) as s:
        result = s.send([email(1)])[0]
    assert isinstance(result, ChannelResult)
    assert (result.status, result.error_code, result.error_class) == (
        SendStatus.IN_DOUBT,
        "NETWORK_TIMEOUT",
        ErrorClass.AMBIGUOUS,
    )
    time.sleep(0.5)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("reply", [Reply.drop(accepted=True), Reply.close()], ids=["dropped", "reset"])
def test_a_connection_lost_after_sending_is_in_doubt(fake: FakeSendGrid, reply: Reply) -> None:
    fake.script("customer1@example.com", reply)
    with sender(fake) as s:
        result = s.send([email(1)])[0]
    assert (result.status, result.error_code) == (SendStatus.IN_DOUBT, "NETWORK_DROPPED")
    assert len(fake.requests) == 1


def test_a_refused_connection_is_retried(fake: FakeSendGrid) -> None:
    port = free_port()
    late = FakeSendGrid(fake.api_key, port=port)
    sleeps = Sleeps(on_first=late.start)
    try:
        with sender(late, base_url=f"http://127.0.0.1:{port}", retry=retry(sleeps)) as s:
            result = s.send([email(1)])[0]
    finally:
        late.stop()
    assert (result.status, result.attempts) == (SendStatus.SENT, 2)  # type: ignore[attr-defined]
    assert late.count() == 1


def test_sandbox_mode_validates_without_sending(fake: FakeSendGrid) -> None:
    with sender(fake, sandbox=True) as s:
        result = s.send([email(1)])[0]
    assert (result.status, result.provider_message_id) == (SendStatus.SENT, None)
    assert fake.count() == 0


def test_reconcile_returns_nothing_because_sendgrid_has_no_lookup(fake: FakeSendGrid) -> None:
    with sender(fake) as s:
        assert s.reconcile(["a", "b"]) == {}


def test_each_worker_thread_has_its_own_sdk_client(fake: FakeSendGrid) -> None:
    s = sender(fake)
    clients: list[Any] = []
    threads = [threading.Thread(target=lambda: clients.append(s._client())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 3
    assert all(c.client.timeout == 2.0 and c.host == fake.base_url for c in clients)


def test_configuration_errors_are_refused(fake: FakeSendGrid) -> None:
    with pytest.raises(ValueError):
        SendGridEmailSender("", from_email="r@bank.example")
    with pytest.raises(ValueError):
        sender(fake, dynamic_templates={"renewal_notice": "legacy-template-id"})
    with pytest.raises(ValueError):
        sender(fake, max_personalizations=1001)
