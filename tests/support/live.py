"""Live-mode wiring for tests: fake Twilio and SendGrid on loopback, the webhook service, real SDK senders."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from sqlalchemy import Engine

from config.settings import SendMode, Settings
from flows.webhooks import create_app
from tasks.runtime import Runtime
from tests.fakes.sendgrid_fake import FakeSendGrid
from tests.fakes.twilio_fake import FakeTwilio

SERVICE_SID = "MG" + "a" * 32


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: object, port: int) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on loopback; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Live:
    """Everything a live-mode test needs."""

    twilio: FakeTwilio
    sendgrid: FakeSendGrid
    webhooks: str
    settings: Settings
    runtime: Runtime


def live_settings(
    engine: Engine, twilio: FakeTwilio, sendgrid: FakeSendGrid, webhooks: str, home: Path, **extra: object
) -> Settings:
    """Return settings for send_mode=live against the fakes."""
    values: dict[str, object] = {
        "database_url": engine.url.render_as_string(hide_password=False),
        "home": home,
        "send_mode": SendMode.LIVE,
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_base_url": twilio.base_url,
        "twilio_messaging_service_sid": SERVICE_SID,
        "webhook_public_base_url": webhooks,
        "sendgrid_api_key": sendgrid.api_key,
        "sendgrid_host": sendgrid.base_url,
        "sendgrid_webhook_public_key": sendgrid.public_key,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        "sms_rate_per_second": 1000.0,
        "whatsapp_rate_per_second": 1000.0,
        "sendgrid_rate_per_second": 1000.0,
        "pii_hash_key": "test-hash-key",
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def live_stack(engine: Engine, home: Path, **extra: object) -> Iterator[Live]:
    """Start both fakes and the webhook service, and build a live runtime on `engine`."""
    with FakeTwilio() as twilio, FakeSendGrid() as sendgrid:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = live_settings(engine, twilio, sendgrid, base, home, **extra)
        runtime = Runtime(settings)
        runtime.__dict__["engine"] = engine
        with serve(create_app(settings, engine), port):
            yield Live(twilio, sendgrid, base, settings, runtime)
