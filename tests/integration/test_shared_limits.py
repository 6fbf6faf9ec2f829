"""Dispatchers share one ceiling through Prefect rate limits; a send that loses its permits stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import Engine, func, select

from config.settings import Settings
from tasks.channels.base import Outbound, SendInterrupted, SendStatus
from tasks.channels.ratelimit import PermitUnavailable
from tasks.channels.results import TemplatedOutbound
from tasks.channels.sendgrid_email import SendGridEmailSender
from tasks.channels.shared_limit import plan_shared_limit
from tasks.channels.twilio_sms import TwilioSmsSender
from tasks.dispatch import dispatch_cycle
from tasks.domain.contract import Entity
from tasks.rate_limits import CHANNELS, shared_limit
from tasks.runtime import Runtime
from tasks.sources.validation import validate_all
from tasks.store import schema as s
from tasks.store.bulk import insert_frame
from tasks.store.repository import sync_customers
from tests.fakes.sendgrid_fake import FakeSendGrid
from tests.fakes.twilio_fake import FakeTwilio
from tests.support.dispatch_worker import worker_settings
from tests.support.factories import ROOT, markets, message_row, raw_set
from tests.support.live import SERVICE_SID
from tests.support.pipeline import HASH_KEY
from tests.support.prefect_server import prefect_server

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
WEBHOOKS = "http://127.0.0.1:9"


def _seed_sms(engine: Engine, n: int) -> None:
    """Store n GB customers with a phone and one rendered SMS each in cycle 1."""
    customers = [
        {"customer_key": f"C{i:06d}", "market": "GB", "locale": "en-GB", "phone": f"+447700{i:06d}"}
        for i in range(n)
    ]
    frame = validate_all(raw_set(customers=customers), markets(), known_keys=None).clean[Entity.CUSTOMERS]
    assert len(frame) == n
    rows = [
        message_row(
            i, cust["customer_key"], NOW, body=f"Renewal reminder {i}: https://example.invalid/renew/{i:06d}"
        )
        for i, cust in enumerate(frame.to_dict("records"))
    ]
    with engine.begin() as conn:
        sync_customers(conn, frame, NOW)
        insert_frame(conn, s.messages, pd.DataFrame(rows))


def _statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(s.messages.c.status, func.count()).group_by(s.messages.c.status)).all()
    return {str(k): int(v) for k, v in rows}


def _received(twilio: FakeTwilio) -> Counter[str]:
    return Counter(unquote(m.params["StatusCallback"].split("key=")[1]) for m in twilio.messages)


def busiest_second(starts: list[float]) -> int:
    """Return the most starts in any one-second window [t, t + 1)."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class CountedPermits:
    """A limiter that lets `n` calls start and then has no permit for any other: a shared limit lost."""

    def __init__(self, n: int) -> None:
        self.left = n
        self._lock = threading.Lock()

    @contextmanager
    def acquire(self, units: int = 1) -> Iterator[float]:
        with self._lock:
            if self.left <= 0:
                raise PermitUnavailable("the global limit renewals-rate-test does not exist")
            self.left -= 1
        yield time.monotonic()


def _sms(n: int) -> Outbound:
    return Outbound(
        f"pb:K{n:06d}:20261222:T-30:sms", "sms", f"+447700{n:06d}", f"Reminder {n}", "service", "pb"
    )


def test_an_sms_send_that_runs_out_of_permits_stops_and_reports_only_what_left(
    fakes: tuple[FakeTwilio, FakeSendGrid],
) -> None:
    twilio, _ = fakes
    batch = [_sms(n) for n in range(40)]
    with (
        TwilioSmsSender(
            twilio.account_sid,
            twilio.auth_token,
            base_url=twilio.base_url,
            messaging_service_sid=SERVICE_SID,
            status_callback_base=WEBHOOKS,
            limiter=CountedPermits(12),
            concurrency=4,
        ) as sender,
        pytest.raises(SendInterrupted, match="does not exist") as stop,
    ):
        sender.send(batch)
    results = stop.value.results
    assert len(results) == 12 and {r.status for r in results} == {SendStatus.SENT}
    assert {r.message_key for r in results} == set(_received(twilio))


def test_a_split_email_request_that_runs_out_of_permits_keeps_the_results_of_the_parts_that_left() -> None:
    batch = [
        TemplatedOutbound(
            f"pb:K{n:06d}:20261222:T-30:email",
            "email",
            f"customer{n}@example.com",
            "text",
            "service",
            "pb:T-30",
            subject="Your renewal",
            html="<p>x</p>",
            template="renewal_notice",
            locale="en",
            variables={"first_name": f"Name{n}"},
        )
        for n in range(300)
    ]
    # Too large at first, then halves: the first half leaves, the other finds no permit.
    with FakeSendGrid(max_bytes=40_000) as sendgrid:
        with (
            SendGridEmailSender(
                sendgrid.api_key,
                base_url=sendgrid.base_url + "/",
                from_email="reminders@bank.example",
                dynamic_templates={"renewal_notice": "d-notice"},
                limiter=CountedPermits(2),
                concurrency=1,
            ) as sender,
            pytest.raises(SendInterrupted) as stop,
        ):
            sender.send(batch)
        results = stop.value.results
        taken = {str(mail.message_key) for mail in sendgrid.sent}
    assert 0 < len(results) < 300 and {r.status for r in results} == {SendStatus.SENT}
    assert {r.message_key for r in results} == taken, "a sent message never loses its result"


def test_dispatch_interrupted_part_way_leaves_nothing_in_sending_and_a_rerun_sends_the_rest_once(
    sqlite_engine: Engine, fakes: tuple[FakeTwilio, FakeSendGrid]
) -> None:
    twilio, _ = fakes
    _seed_sms(sqlite_engine, 120)

    def senders(permits: int) -> dict[str, Any]:
        sms = TwilioSmsSender(
            twilio.account_sid,
            twilio.auth_token,
            base_url=twilio.base_url,
            messaging_service_sid=SERVICE_SID,
            status_callback_base=WEBHOOKS,
            limiter=CountedPermits(permits),
            concurrency=4,
        )
        return {"sms": sms, "email": sms, "whatsapp": sms}

    with pytest.raises(SendInterrupted):
        dispatch_cycle(sqlite_engine, 1, senders(45), markets(), HASH_KEY, 20, lease_seconds=0)
    assert _statuses(sqlite_engine) == {"sent": 45, "rendered": 75}
    assert len(twilio.messages) == 45
    dispatch_cycle(sqlite_engine, 1, senders(1000), markets(), HASH_KEY, 20, lease_seconds=0)
    assert _statuses(sqlite_engine) == {"sent": 120}
    assert len(_received(twilio)) == 120 and set(_received(twilio).values()) == {1}


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    with prefect_server(Path(tempfile.mkdtemp(prefix="renewals-limits-")) / "prefect") as api:
        yield api


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTwilio, FakeSendGrid]]:
    with FakeTwilio() as twilio, FakeSendGrid() as sendgrid:
        yield twilio, sendgrid


def _env(api: str, **renewals: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RENEWALS_", "PREFECT_API_URL"))}
    return {**base, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api, **renewals}


def _ensure(api: str, **renewals: str) -> subprocess.CompletedProcess[str]:
    """Run `renewals limits ensure` against the server with these RENEWALS_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "limits", "ensure"],
        cwd=ROOT,
        env=_env(api, COLUMNS="200", **renewals),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _limits(api: str, prefix: str) -> dict[str, dict[str, Any]]:
    found = httpx.post(f"{api}/v2/concurrency_limits/filter", json={"limit": 200}, timeout=30).json()
    return {f["name"]: f for f in found if f["name"].startswith(prefix + "-")}


def _worker_env(settings: Settings) -> dict[str, str]:
    """Return the RENEWALS_* variables `renewals limits ensure` needs to plan a worker's limits."""
    return {
        "RENEWALS_SHARED_RATE_LIMIT_PREFIX": settings.shared_rate_limit_prefix,
        "RENEWALS_TWILIO_MESSAGING_SERVICE_SID": settings.twilio_messaging_service_sid,
        "RENEWALS_SMS_RATE_PER_SECOND": str(settings.sms_rate_per_second),
        "RENEWALS_SENDGRID_RATE_PER_SECOND": str(settings.sendgrid_rate_per_second),
    }


def _worker(
    api: str, db: str, twilio: FakeTwilio, sendgrid: FakeSendGrid, *extra: str
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tests.support.dispatch_worker",
        *("--db", db, "--twilio", twilio.base_url, "--sendgrid", sendgrid.base_url, "--webhooks", WEBHOOKS),
        *extra,
    ]
    return subprocess.Popen(
        args, cwd=ROOT, env=_env(api), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.timeout(300)
def test_limits_ensure_creates_a_rate_limit_per_sender_and_updates_it_when_a_rate_changes(
    prefect_api: str,
) -> None:
    renewals = {
        "RENEWALS_SHARED_RATE_LIMIT_PREFIX": "ensure-test",
        "RENEWALS_TWILIO_MESSAGING_SERVICE_SID": "MG" + "b" * 32,
        "RENEWALS_SMS_RATE_PER_SECOND": "100",
    }
    first = _ensure(prefect_api, **renewals)
    assert first.returncode == 0, first.stderr[-3000:]
    settings = Settings(
        shared_rate_limit_prefix="ensure-test",
        twilio_messaging_service_sid="MG" + "b" * 32,
        sms_rate_per_second=100,
    )
    planned = {c: shared_limit(settings, c) for c in CHANNELS}
    found = _limits(prefect_api, "ensure-test")
    assert sorted(found) == sorted(p.name for p in planned.values())
    assert "ensure-test-sms-MG" + "b" * 32 in found
    for limit in planned.values():
        assert found[limit.name]["active"] is True
        assert found[limit.name]["limit"] == limit.limit
        assert found[limit.name]["slot_decay_per_second"] == pytest.approx(limit.slot_decay_per_second)
        assert limit.name in first.stdout
    assert first.stdout.count("created") == 3

    again = _ensure(prefect_api, **renewals)
    assert again.stdout.count("unchanged") == 3

    faster = _ensure(prefect_api, **{**renewals, "RENEWALS_SMS_RATE_PER_SECOND": "400"})
    assert faster.stdout.count("updated") == 1 and faster.stdout.count("unchanged") == 2
    sms = _limits(prefect_api, "ensure-test")["ensure-test-sms-MG" + "b" * 32]
    assert sms["limit"] == plan_shared_limit("x", 400, 3).limit


def test_limits_ensure_refuses_a_process_without_a_prefect_server_to_share(tmp_path: Path) -> None:
    env = _env("")
    del env["PREFECT_API_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "limits", "ensure"],
        cwd=ROOT,
        env={**env, "PREFECT_HOME": str(tmp_path), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "set PREFECT_API_URL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_missing_limit_stops_dispatch_before_anything_is_claimed_or_sent(
    prefect_api: str, pg_engine: Engine, fakes: tuple[FakeTwilio, FakeSendGrid]
) -> None:
    twilio, sendgrid = fakes
    _seed_sms(pg_engine, 50)
    db = pg_engine.url.render_as_string(hide_password=False)
    worker = _worker(prefect_api, db, twilio, sendgrid, "--shared-limits", "--limit-prefix", "never-ensured")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode != 0
    assert "'never-ensured-" in err and "does not exist" in err and "renewals limits ensure" in err
    assert _statuses(pg_engine) == {"rendered": 50}
    assert twilio.messages == []


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_limit_gone_after_the_check_gives_back_every_claim_and_a_rerun_sends_each_message_once(
    prefect_api: str, pg_engine: Engine, fakes: tuple[FakeTwilio, FakeSendGrid]
) -> None:
    twilio, sendgrid = fakes
    _seed_sms(pg_engine, 300)
    db = pg_engine.url.render_as_string(hide_password=False)
    # 50/s: the 260 messages after the first 40 take five seconds, time enough for a busy server to delete.
    settings = worker_settings(db, twilio.base_url, sendgrid.base_url, WEBHOOKS, 50.0, True, "gone-test")
    assert _ensure(prefect_api, **_worker_env(settings)).returncode == 0

    sms = shared_limit(settings, "sms").name

    def delete_part_way() -> None:
        deadline = time.monotonic() + 60
        while len(twilio.messages) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        # The server's SQLite answers 503 now and then under load: try again until the limit is gone.
        while httpx.delete(f"{prefect_api}/v2/concurrency_limits/{sms}", timeout=30).status_code == 503:
            time.sleep(0.01)

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        runtime = Runtime(settings)
        senders = {c: runtime.sender(c) for c in CHANNELS}
        deleter = threading.Thread(target=delete_part_way)
        deleter.start()
        with pytest.raises(SendInterrupted, match=f"{sms}.*does not exist"):
            dispatch_cycle(runtime.engine, 1, senders, runtime.markets, HASH_KEY, 100, lease_seconds=0)
        deleter.join()
        runtime.close()
    statuses = _statuses(pg_engine)
    sent_before = len(twilio.messages)
    assert 0 < sent_before < 300
    assert statuses == {"sent": sent_before, "rendered": 300 - sent_before}, "nothing left in `sending`"

    assert _ensure(prefect_api, **_worker_env(settings)).returncode == 0
    rerun = _worker(
        prefect_api, db, twilio, sendgrid, "--shared-limits", "--rate", "50", "--limit-prefix", "gone-test"
    )
    out, err = rerun.communicate(timeout=200)
    assert rerun.returncode == 0, err[-3000:]
    assert _statuses(pg_engine) == {"sent": 300}
    assert set(_received(twilio).values()) == {1} and len(_received(twilio)) == 300


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_two_dispatchers_sharing_a_limit_never_exceed_the_ceiling_together_and_send_each_message_once(
    prefect_api: str, pg_engine: Engine, fakes: tuple[FakeTwilio, FakeSendGrid], tmp_path: Path
) -> None:
    twilio, sendgrid = fakes
    n, rate = 600, 100.0
    _seed_sms(pg_engine, n)
    db = pg_engine.url.render_as_string(hide_password=False)
    settings = worker_settings(db, twilio.base_url, sendgrid.base_url, WEBHOOKS, rate, True, "two-test")
    ensured = _ensure(prefect_api, **_worker_env(settings))
    assert ensured.returncode == 0, ensured.stderr[-3000:]
    shared = ("--shared-limits", "--rate", f"{rate:g}", "--limit-prefix", "two-test", "--batch", "50")
    together = ("--start-together", str(tmp_path / "ready"), "--parties", "2")
    workers = [_worker(prefect_api, db, twilio, sendgrid, *shared, *together) for _ in range(2)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    received = _received(twilio)
    assert len(received) == n and set(received.values()) == {1}, "every message reached Twilio exactly once"
    assert _statuses(pg_engine) == {"sent": n}
    assert all(r["sent"] > 0 for r in results), (
        f"both dispatchers took a share: {[r['sent'] for r in results]}"
    )
    starts = [m.date_created.timestamp() for m in twilio.messages]
    busiest = busiest_second(starts)
    assert busiest <= rate, f"{busiest} SMS started within one second against a shared ceiling of {rate:g}"
