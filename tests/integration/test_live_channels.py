"""Live sending through the official SDKs against the loopback fakes, and tracking back through webhooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from tasks.store import schema as s
from tests.fakes.twilio_fake import Reply
from tests.support.factories import raw_set
from tests.support.live import Live, live_stack
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 22)
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PHONES = {f"C{i}": f"+4479460000{i:02d}" for i in range(1, 9)}


@pytest.fixture
def live(engine: Engine, tmp_path: Path) -> Iterator[Live]:
    with live_stack(engine, tmp_path) as stack:
        yield stack


def _pipe(live: Live) -> Pipeline:
    senders = {c: live.runtime.sender(c) for c in ("email", "sms", "whatsapp")}
    return Pipeline(
        live.runtime.engine, senders=senders, dispatch_options={"grace_seconds": 0, "email_events": True}
    )


def _gb(key: str, days: int, **customer: Any) -> dict[str, list[dict[str, Any]]]:
    return {
        "customers": [
            {
                "customer_key": key,
                "market": "GB",
                "locale": "en-GB",
                "phone": PHONES[key],
                "email": f"{key.lower()}@example.com",
                **customer,
            }
        ],
        "contracts": [
            {
                "contract_key": f"K{key}",
                "customer_key": key,
                "currency": "GBP",
                "term_end": str(AS_OF + timedelta(days=days)),
            }
        ],
    }


def _load(
    pipe: Pipeline, *parts: dict[str, list[dict[str, Any]]], consents: list[dict[str, Any]] | None = None
) -> None:
    rows: dict[str, list[dict[str, Any]]] = {"customers": [], "contracts": [], "consents": consents or []}
    for part in parts:
        for name, items in part.items():
            rows[name] += items
    pipe.load(raw_set(**rows))


def _messages(engine: Engine) -> dict[str, dict[str, Any]]:
    m = s.messages
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(
                    m.c.customer_key,
                    m.c.channel,
                    m.c.status,
                    m.c.error_code,
                    m.c.error_class,
                    m.c.attempts,
                    m.c.cost,
                    m.c.segments,
                )
            )
            .mappings()
            .all()
        )
    return {f"{r['customer_key']}:{r['channel']}": dict(r) for r in rows}


def test_every_error_class_ends_in_the_right_ledger_state(live: Live) -> None:
    pipe = _pipe(live)
    # T-14 sends SMS first, with email standing by.
    _load(pipe, *(_gb(key, 14) for key in ("C1", "C2", "C3", "C4", "C5", "C6")))
    live.twilio.script(PHONES["C2"], Reply.error(400, 21211, "invalid To"))
    live.twilio.script(PHONES["C3"], Reply.rate_limited(retry_after="0"), Reply.accept())
    live.twilio.script(PHONES["C4"], Reply.error(400, 21610, "unsubscribed recipient"))
    live.twilio.script(PHONES["C5"], Reply.drop(accepted=True))
    live.twilio.script(PHONES["C6"], Reply.raw(503, "Service Unavailable"), Reply.accept())
    stats = pipe.cycle(AS_OF, now=NOON)
    msgs = _messages(pipe.engine)
    assert msgs["C1:sms"]["status"] == "sent" and msgs["C1:sms"]["segments"] == 1 and msgs["C1:sms"]["cost"]
    assert (msgs["C2:sms"]["status"], msgs["C2:sms"]["error_code"], msgs["C2:sms"]["error_class"]) == (
        "failed",
        "21211",
        "permanent",
    )
    assert msgs["C3:sms"]["status"] == "sent" and live.twilio.count(PHONES["C3"]) == 1
    assert msgs["C4:sms"]["status"] == "failed" and stats["dispatch"]["opt_outs_recorded"] == 1
    assert msgs["C5:sms"]["status"] == "in_doubt"
    assert msgs["C6:sms"]["status"] == "sent"
    with pipe.engine.connect() as conn:
        withdrawn = conn.execute(
            select(s.consents.c.channel, s.consents.c.purpose).where(s.consents.c.origin == "provider_optout")
        ).all()
    assert {(c, p) for c, p in withdrawn} == {("sms", "service"), ("sms", "dunning"), ("sms", "marketing")}

    again = pipe.dispatch(stats["cycle_id"], NOON)
    assert again["reconciled"]["confirmed_sent"] == 1
    assert _messages(pipe.engine)["C5:sms"]["status"] == "sent"
    assert live.twilio.count(PHONES["C5"]) == 1, "the in-doubt SMS was found at Twilio, never sent twice"


def test_whatsapp_template_refused_outside_the_session_falls_back_to_email(live: Live) -> None:
    pipe = _pipe(live)
    objection = {
        "customer_key": "C7",
        "channel": "sms",
        "purpose": "service",
        "status": "withdrawn",
        "withdrawn_at": "2026-01-01T00:00:00Z",
    }
    whatsapp = {"customer_key": "C7", "channel": "whatsapp", "purpose": "service"}
    _load(pipe, _gb("C7", 1, region=""), consents=[objection, whatsapp])
    live.twilio.script(PHONES["C7"], Reply.error(400, 63016, "outside the allowed window"))
    stats = pipe.cycle(AS_OF, now=NOON)
    assert stats["dispatch"]["fallback_queued"] == 1
    assert _messages(pipe.engine)["C7:whatsapp"]["status"] == "failed"
    pipe.render(stats["cycle_id"], AS_OF)
    second = pipe.dispatch(stats["cycle_id"], NOON)
    assert second["sent"] == 1
    assert _messages(pipe.engine)["C7:email"]["status"] == "sent"
    (request,) = [m for m in live.twilio.messages if m.to.startswith("whatsapp:")] or [None]
    assert request is None, "a refused WhatsApp template is not a taken message"


def test_whatsapp_goes_as_an_approved_template_with_its_variables(live: Live) -> None:
    pipe = _pipe(live)
    objection = {
        "customer_key": "C8",
        "channel": "sms",
        "purpose": "service",
        "status": "withdrawn",
        "withdrawn_at": "2026-01-01T00:00:00Z",
    }
    whatsapp = {"customer_key": "C8", "channel": "whatsapp", "purpose": "service"}
    _load(pipe, _gb("C8", 1), consents=[objection, whatsapp])
    pipe.cycle(AS_OF, now=NOON)
    (message,) = [m for m in live.twilio.messages if m.to == f"whatsapp:{PHONES['C8']}"]
    assert message.params["ContentSid"].startswith("HX") and "Body" not in message.params
    assert "KC8" in message.params["ContentVariables"]


def test_email_goes_through_sendgrid_with_the_key_and_no_personal_data_in_custom_args(live: Live) -> None:
    pipe = _pipe(live)
    _load(pipe, _gb("C1", 30))
    pipe.cycle(AS_OF, now=NOON)
    (mail,) = live.sendgrid.sent
    assert mail.message_key and mail.message_key.endswith(":T-30:email")
    assert set(mail.custom_args) == {"message_key"}
    assert _messages(pipe.engine)["C1:email"]["status"] == "sent"


class TestWebhooks:
    def test_unsigned_or_forged_requests_get_403_and_change_nothing(self, live: Live) -> None:
        pipe = _pipe(live)
        _load(pipe, _gb("C1", 14))
        pipe.cycle(AS_OF, now=NOON)
        sid = live.twilio.messages[0].sid
        params = live.twilio.callback_params(sid, "delivered")
        bad = httpx.post(
            f"{live.webhooks}/twilio/status?key=x", data=params, headers={"X-Twilio-Signature": "forged"}
        )
        assert bad.status_code == 403
        assert (
            httpx.post(
                f"{live.webhooks}/twilio/inbound", data={"From": PHONES["C1"], "Body": "STOP"}
            ).status_code
            == 403
        )
        events = [{"event": "delivered", "message_key": "k", "sg_event_id": "e1", "timestamp": 1}]
        (tampered,) = live.sendgrid.post_events(f"{live.webhooks}/sendgrid/events", events, tamper=True)
        assert tampered.status_code == 403
        (stale,) = live.sendgrid.post_events(
            f"{live.webhooks}/sendgrid/events", [{"event": "delivered"}], timestamp=1
        )
        assert stale.status_code == 403
        assert _messages(pipe.engine)["C1:sms"]["status"] == "sent"
        with pipe.engine.connect() as conn:
            assert conn.execute(select(s.delivery_events)).first() is None

    def test_status_callbacks_out_of_order_and_twice_only_move_forward(self, live: Live) -> None:
        pipe = _pipe(live)
        _load(pipe, *(_gb(key, 14) for key in ("C1", "C2", "C3")))
        pipe.cycle(AS_OF, now=NOON)
        responses = live.twilio.send_status_callbacks(
            ("sent", "delivered", "sending"), duplicate=True, shuffle=True, seed=3
        )
        assert {r.status_code for r in responses} == {204}
        statuses = {k: v["status"] for k, v in _messages(pipe.engine).items() if k.endswith(":sms")}
        assert set(statuses.values()) == {"delivered"}
        with pipe.engine.connect() as conn:
            events = conn.execute(select(s.delivery_events.c.event_id)).scalars().all()
        assert len(events) == len(set(events)) == 9

    @pytest.mark.parametrize(
        "word",
        [
            "STOP",
            "stop",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "STOPP",
            "ARRET",
            "ARRÊT",
            "BAJA",
            "BERHENTI",
            "DỪNG",
            "please stop texting me",
        ],
    )
    def test_stop_in_every_language_withdraws_sms_consent(self, live: Live, word: str) -> None:
        pipe = _pipe(live)
        _load(pipe, _gb("C1", 200))
        url = f"{live.webhooks}/twilio/inbound"
        params = {"From": PHONES["C1"], "To": "+447700900000", "Body": word, "MessageSid": "SM" + "1" * 32}
        from tasks.channels.signatures import twilio_signature

        reply = httpx.post(
            url,
            data=params,
            headers={"X-Twilio-Signature": twilio_signature(live.twilio.auth_token, url, params)},
        )
        assert reply.status_code == 200 and "<Response>" in reply.text
        with pipe.engine.connect() as conn:
            rows = conn.execute(
                select(s.consents.c.channel, s.consents.c.purpose, s.consents.c.status).where(
                    s.consents.c.origin == "sms_reply"
                )
            ).all()
        assert sorted(rows) == [
            ("sms", "dunning", "withdrawn"),
            ("sms", "marketing", "withdrawn"),
            ("sms", "service", "withdrawn"),
        ]

    def test_start_reopens_sms_for_service_messages_only(self, live: Live) -> None:
        pipe = _pipe(live)
        _load(pipe, _gb("C1", 200))
        url = f"{live.webhooks}/twilio/inbound"
        from tasks.channels.signatures import twilio_signature

        for word in ("STOP", "START"):
            params = {"From": PHONES["C1"], "Body": word}
            httpx.post(
                url,
                data=params,
                headers={"X-Twilio-Signature": twilio_signature(live.twilio.auth_token, url, params)},
            )
        with pipe.engine.connect() as conn:
            granted = (
                conn.execute(
                    select(s.consents.c.purpose).where(
                        s.consents.c.status == "granted", s.consents.c.origin == "sms_reply"
                    )
                )
                .scalars()
                .all()
            )
        assert sorted(granted) == ["dunning", "service"]

    def test_sendgrid_events_update_status_dedupe_and_record_unsubscribes(self, live: Live) -> None:
        pipe = _pipe(live)
        _load(pipe, _gb("C1", 30), _gb("C2", 30))
        pipe.cycle(AS_OF, now=NOON)
        mails = {m.email: m for m in live.sendgrid.sent}
        delivered = live.sendgrid.events(("processed", "delivered"), emails=[mails["c1@example.com"]])
        bounced = live.sendgrid.events(
            ("bounce",), emails=[mails["c2@example.com"]], extra={"type": "bounce"}
        )
        unsubscribed = live.sendgrid.events(("unsubscribe",), emails=[mails["c1@example.com"]])
        responses = live.sendgrid.post_events(
            f"{live.webhooks}/sendgrid/events",
            delivered + bounced + unsubscribed,
            duplicate=True,
            shuffle=True,
        )
        assert {r.status_code for r in responses} == {204}
        msgs = _messages(pipe.engine)
        assert (msgs["C1:email"]["status"], msgs["C2:email"]["status"]) == ("delivered", "bounced")
        with pipe.engine.connect() as conn:
            events = conn.execute(select(s.delivery_events.c.event_id)).scalars().all()
            withdrawn = conn.execute(
                select(s.consents.c.customer_key, s.consents.c.channel, s.consents.c.purpose).where(
                    s.consents.c.origin == "sendgrid_unsubscribe"
                )
            ).all()
        assert len(events) == 4
        assert withdrawn == [("C1", "email", "marketing")]

    def test_a_late_whatsapp_failure_falls_back_to_the_next_channel(self, live: Live) -> None:
        pipe = _pipe(live)
        objection = {
            "customer_key": "C8",
            "channel": "sms",
            "purpose": "service",
            "status": "withdrawn",
            "withdrawn_at": "2026-01-01T00:00:00Z",
        }
        whatsapp = {"customer_key": "C8", "channel": "whatsapp", "purpose": "service"}
        _load(pipe, _gb("C8", 1), consents=[objection, whatsapp])
        stats = pipe.cycle(AS_OF, now=NOON)
        (message,) = [m for m in live.twilio.messages if m.to.startswith("whatsapp:")]
        assert live.twilio.send_status_callback(message.sid, "failed", 63016).status_code == 204
        assert _messages(pipe.engine)["C8:email"]["status"] == "queued"
        pipe.render(stats["cycle_id"], AS_OF)
        assert pipe.dispatch(stats["cycle_id"], NOON)["sent"] == 1


class RecordingLimiter:
    """Wraps a sender's limiter and records when each call was let through, and for how many units."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rate, self.starts = inner, inner.rate, []

    @contextmanager
    def acquire(self, units: int = 1) -> Iterator[float]:
        with self.inner.acquire(units) as started:
            self.starts.append((started, units))
            yield started


def test_the_sms_rate_ceiling_is_never_exceeded_in_any_second(engine: Engine, tmp_path: Path) -> None:
    with live_stack(engine, tmp_path, sms_rate_per_second=20.0, twilio_concurrency=8) as live:
        pipe = _pipe(live)
        sms = live.runtime.sender("sms")
        recorder = RecordingLimiter(sms.limiter)  # type: ignore[attr-defined]
        sms.limiter = recorder  # type: ignore[attr-defined]
        phones = {f"R{i}": f"+44794610{i:04d}" for i in range(60)}
        customers = [
            {"customer_key": k, "market": "GB", "locale": "en-GB", "phone": p, "email": ""}
            for k, p in phones.items()
        ]
        contracts = [
            {
                "contract_key": f"K{k}",
                "customer_key": k,
                "currency": "GBP",
                "term_end": str(AS_OF + timedelta(days=14)),
            }
            for k in phones
        ]
        pipe.load(raw_set(customers=customers, contracts=contracts))
        stats = pipe.cycle(AS_OF, now=NOON)
    starts = sorted(recorder.starts)
    assert len(starts) == stats["dispatch"]["sent"] >= 40
    busiest = max(sum(u for t, u in starts if first <= t < first + 1.0) for first, _ in starts)
    assert busiest <= 20, f"{busiest} SMS segments started within one second against a ceiling of 20"
