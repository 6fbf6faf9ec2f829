"""The delivery-tracking webhook service: Twilio status callbacks and inbound replies, SendGrid events.

Every request must be signed by the provider; an unsigned or badly signed one gets 403 and changes
nothing. Run it with `renewals webhooks serve` behind TLS, and point the providers at
RENEWALS_WEBHOOK_PUBLIC_BASE_URL + /twilio/status, /twilio/inbound and /sendgrid/events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from sqlalchemy import Engine

from config.settings import Settings
from tasks.channels.signatures import SendGridWebhookVerifier, TwilioWebhookVerifier
from tasks.store.repository import utcnow
from tasks.tracking import handle_sendgrid_events, handle_twilio_inbound, handle_twilio_status

log = logging.getLogger("renewals.webhooks")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def create_app(settings: Settings, engine: Engine, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    """Return the webhook application wired to a store and the providers' signing secrets."""
    app = FastAPI(title="Renewals webhooks", docs_url=None, redoc_url=None, openapi_url=None)
    twilio = TwilioWebhookVerifier(
        settings.twilio_auth_token.get_secret_value(), settings.webhook_public_base_url.rstrip("/")
    )
    sendgrid = SendGridWebhookVerifier(
        settings.sendgrid_webhook_public_key.get_secret_value(),
        max_age=settings.sendgrid_webhook_max_age_seconds,
    )
    hash_key = settings.pii_hash_key.get_secret_value().encode()

    async def twilio_form(request: Request) -> tuple[list[tuple[str, str]], bool]:
        body = (await request.body()).decode("utf-8", errors="replace")
        pairs = parse_qsl(body, keep_blank_values=True)
        signed = twilio.verify(
            request.url.path, request.url.query, pairs, request.headers.get("X-Twilio-Signature")
        )
        return pairs, signed

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/twilio/status")
    async def twilio_status(request: Request) -> Response:
        pairs, signed = await twilio_form(request)
        if not signed:
            log.warning("twilio status callback refused: bad or missing signature")
            return Response(status_code=403)
        params = dict(pairs)
        with engine.begin() as conn:
            result = handle_twilio_status(conn, params, request.query_params.get("key"), clock())
        log.info("twilio status %s applied=%s", params.get("MessageStatus"), result["applied"])
        return Response(status_code=204)

    @app.post("/twilio/inbound")
    async def twilio_inbound(request: Request) -> Response:
        pairs, signed = await twilio_form(request)
        if not signed:
            log.warning("twilio inbound refused: bad or missing signature")
            return Response(status_code=403)
        with engine.begin() as conn:
            result = handle_twilio_inbound(conn, dict(pairs), hash_key, clock())
        log.info(
            "inbound %s on %s: %s consent records", result["keyword"], result["channel"], result["changed"]
        )
        # Twilio already answers STOP/START/HELP itself; an empty TwiML response sends nothing more.
        return Response(content=EMPTY_TWIML, media_type="text/xml")

    @app.post("/sendgrid/events")
    async def sendgrid_events(request: Request) -> Response:
        raw = await request.body()
        signed = sendgrid.verify(
            raw,
            request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
        )
        if not signed:
            log.warning("sendgrid events refused: bad or missing signature, or too old")
            return Response(status_code=403)
        try:
            events: Any = json.loads(raw)
        except ValueError:
            return Response(status_code=400)
        if not isinstance(events, list):
            return Response(status_code=400)
        with engine.begin() as conn:
            tally = handle_sendgrid_events(conn, [e for e in events if isinstance(e, dict)], clock())
        log.info("sendgrid events: %s", tally)
        return Response(status_code=204)

    return app
