"""At most once under kill -9 and under two concurrent dispatchers (PostgreSQL, real SDKs, loopback fakes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from config.settings import Settings
from flows.webhooks import create_app
from tasks.domain.contract import Entity
from tasks.sources.validation import validate_all
from tasks.store import schema as s
from tasks.store.bulk import insert_frame
from tasks.store.repository import sync_customers
from tests.fakes.sendgrid_fake import FakeSendGrid
from tests.fakes.twilio_fake import FakeTwilio
from tests.support.factories import ROOT, markets, message_row, raw_set
from tests.support.live import free_port, serve

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _seed(engine: Engine, n: int) -> dict[str, str]:
    """Store n customers and one rendered message each (60% SMS, 40% email); return key -> address."""
    customers = [
        {
            "customer_key": f"C{i:06d}",
            "market": "GB",
            "locale": "en-GB",
            "phone": f"+447700{i:06d}"[:13] if i % 5 < 3 else "",
            "email": f"c{i}@example.com",
        }
        for i in range(n)
    ]
    frame = validate_all(raw_set(customers=customers), markets(), known_keys=None).clean[Entity.CUSTOMERS]
    assert len(frame) == n
    rows, addresses = [], {}
    for i, cust in enumerate(frame.to_dict("records")):
        channel = "sms" if cust["phone"] else "email"
        key = f"pb:K{i:06d}:20261222:T-30:{channel}"
        addresses[key] = cust["phone"] if channel == "sms" else cust["email"]
        rows.append(
            message_row(
                i,
                cust["customer_key"],
                NOW,
                message_key=key,
                channel=channel,
                subject="Your renewal",
                body=f"Renewal reminder {i}: https://example.invalid/renew/{i:06d}",
                body_html="<p>Renewal</p>",
            )
        )
    with engine.begin() as conn:
        sync_customers(conn, frame, NOW)
        insert_frame(conn, s.messages, pd.DataFrame(rows))
    return addresses


class Stack:
    """The fakes and the webhook service, running in the test process."""

    def __init__(self, twilio: FakeTwilio, sendgrid: FakeSendGrid, webhooks: str, db: str) -> None:
        self.twilio, self.sendgrid, self.webhooks, self.db = twilio, sendgrid, webhooks, db

    def worker(self, batch: int = 200, *extra: str) -> subprocess.Popen[str]:
        """Start a dispatch process."""
        args = [
            sys.executable,
            "-m",
            "tests.support.dispatch_worker",
            "--db",
            self.db,
            "--twilio",
            self.twilio.base_url,
            "--sendgrid",
            self.sendgrid.base_url,
            "--webhooks",
            self.webhooks,
            "--batch",
            str(batch),
            *extra,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def received(self) -> Counter[str]:
        """Count what the fakes took, per message key (SMS by body, email by custom arg)."""
        counts: Counter[str] = Counter()
        for message in self.twilio.messages:
            counts[unquote(message.params["StatusCallback"].split("key=")[1])] += 1
        for mail in self.sendgrid.sent:
            counts[str(mail.message_key)] += 1
        return counts


@pytest.fixture
def stack(pg_engine: Engine, tmp_path: Path) -> Iterator[Stack]:
    with FakeTwilio() as twilio, FakeSendGrid() as sendgrid:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = Settings(
            database_url=pg_engine.url.render_as_string(hide_password=False),
            home=tmp_path,
            twilio_auth_token=twilio.auth_token,  # type: ignore[arg-type]
            webhook_public_base_url=base,
            sendgrid_webhook_public_key=sendgrid.public_key,  # type: ignore[arg-type]
        )
        with serve(create_app(settings, pg_engine), port):
            yield Stack(twilio, sendgrid, base, pg_engine.url.render_as_string(hide_password=False))


def _statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(s.messages.c.status, func.count()).group_by(s.messages.c.status)).all()
    return {str(k): int(v) for k, v in rows}


@pytest.mark.timeout(600)
def test_a_dispatch_killed_mid_way_and_rerun_sends_every_message_exactly_once(
    pg_engine: Engine, stack: Stack
) -> None:
    addresses = _seed(pg_engine, 5000)
    first = stack.worker()
    deadline = time.monotonic() + 300
    while sum(stack.received().values()) < 1500 and time.monotonic() < deadline:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    taken_before_rerun = sum(stack.received().values())
    assert 1500 <= taken_before_rerun < 5000, "the kill must land part way through"
    assert _statuses(pg_engine).get("sending", 0) > 0, "the killed dispatcher left claims behind"

    # SendGrid delivers its Event Webhook independently of our process: evidence of what it accepted.
    stack.sendgrid.post_events(f"{stack.webhooks}/sendgrid/events", stack.sendgrid.events(("processed",)))
    rerun = stack.worker()
    out, err = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])

    received = stack.received()
    assert set(received) == set(addresses)
    assert set(received.values()) == {1}, "no message reached a provider twice"
    assert _statuses(pg_engine) == {"sent": 5000}
    assert stats["reconciled"]["confirmed_sent"] + stats["reconciled"]["sent_again"] > 0


@pytest.mark.timeout(600)
def test_two_dispatchers_draining_one_cycle_never_send_the_same_message_twice(
    pg_engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    addresses = _seed(pg_engine, 3000)
    together = ("--start-together", str(tmp_path / "ready"), "--parties", "2")
    workers = [stack.worker(100, *together), stack.worker(100, *together)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    received = stack.received()
    assert set(received) == set(addresses) and set(received.values()) == {1}
    assert _statuses(pg_engine) == {"sent": 3000}
    assert all(r["sent"] > 0 for r in results), (
        f"both dispatchers took a share: {[r['sent'] for r in results]}"
    )
    assert sum(r["sent"] for r in results) == 3000
