"""Benchmark dispatch through the real Twilio SDK to a loopback fake, next to the raw SDK rate; figures only.

    .venv/bin/python benchmarks/dispatch.py --messages 10000 --concurrency 8
    .venv/bin/python benchmarks/dispatch.py --messages 100000 --concurrency 8 --rate 2000
    .venv/bin/python benchmarks/dispatch.py --messages 5000 --rate 500 --processes 2 --shared-limits

The fake runs in its own process (so it does not compete with the sender for the GIL). In the same
run the script measures (1) our dispatch of N rendered SMS from PostgreSQL — claim, consent re-check,
send with retries and the rate limiter, settle — and (2) the raw SDK: N `messages.create` calls from a
thread pool of the same size through the same HTTP client class, no ledger. The raw SDK is timed
before and after our dispatch (the machine is shared; the ratio uses their mean), and both paths are
warmed up first on a few hundred messages, so imports and first connections are not timed. It also
reports the highest number of our messages the fake saw start in any one-second window, against the
configured ceiling. With `--processes K` our dispatch runs as K worker processes draining the same
cycle (tests/support/dispatch_worker.py), each with the full ceiling unless `--shared-limits` makes
them share it through Prefect rate limits on a `prefect server` started for the run; the rate is then
taken from the first to the last message the fake saw, so process start-up is not counted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def run_fake(port: int, control: Connection) -> None:
    """Serve a fake Twilio; answer each unix time received with the start times of messages since then."""
    from tests.fakes.twilio_fake import FakeTwilio

    with FakeTwilio(port=port) as fake:
        control.send("ready")
        while (since := control.recv()) is not None:
            control.send([t for m in fake.messages if (t := m.date_created.timestamp()) >= since])


def busiest_second(starts: list[float]) -> int:
    """Return the most starts in any one-second window."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def seed(url: str, n: int, cycle: int = 1, first: int = 0) -> None:
    """Store n GB customers and one rendered SMS each in `cycle`, numbered from `first`."""
    import pandas as pd

    from tasks.store import schema as s
    from tasks.store.bulk import insert_frame
    from tasks.store.engine import make_engine
    from tasks.store.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    numbers = range(first, first + n)
    keys = [f"C{i:07d}" for i in numbers]
    customers = pd.DataFrame(
        {
            "customer_key": keys,
            "market": "GB",
            "locale": "en-GB",
            "timezone": "Europe/London",
            "phone_e164": [f"+447700{i:07d}" for i in numbers],
            "row_hash": "bench",
            "loaded_at": now,
        }
    )
    messages = pd.DataFrame(
        {
            "message_key": [f"bench:K{i:07d}:20261222:T-14:sms" for i in numbers],
            "cycle_id": cycle,
            "playbook": "bench",
            "contract_key": [f"K{i:07d}" for i in numbers],
            "customer_key": keys,
            "market": "GB",
            "step": "T-14",
            "channel": "sms",
            "rank": 0,
            "send_rule": "first",
            "template": "renewal_reminder",
            "purpose": "service",
            "anchor_date": date(2026, 12, 22),
            "status": "rendered",
            "body": [
                f"Bench Bank: your loan K{i:07d} ends in 14 days. Renew at https://example.invalid/r/{i}"
                for i in numbers
            ],
            "segments": 1,
            "attempts": 0,
            "planned_at": now,
            "updated_at": now,
        }
    )
    with engine.begin() as conn:
        insert_frame(conn, s.customers, customers)
        insert_frame(conn, s.messages, messages)
    engine.dispose()


def raw_sdk(base_url: str, n: int, concurrency: int, first: int = 0) -> float:
    """Send n messages with the bare SDK from a thread pool; return messages per second."""
    import threading

    from twilio.rest import Client

    from tasks.channels.twilio_sms import RebasedHttpClient

    local = threading.local()

    def client() -> Client:
        if not hasattr(local, "client"):
            local.client = Client(
                "AC" + "0" * 32, "test-token", http_client=RebasedHttpClient(base_url, 10.0, 2)
            )
        return local.client

    def one(i: int) -> None:
        client().messages.create(
            to=f"+447800{i:07d}",
            messaging_service_sid="MG" + "a" * 32,
            body=f"raw {i} https://example.invalid/r/{i}",
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(first, first + n)))
    return n / (time.perf_counter() - start)


def run_workers(url: str, base: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """Dispatch cycle 1 with `args.processes` worker processes; return the summed stats and wall seconds."""
    import json
    import subprocess
    from contextlib import ExitStack

    from tests.support.dispatch_worker import worker_settings
    from tests.support.prefect_server import prefect_server

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flags = ["--rate", f"{args.rate:g}", "--batch", str(args.batch), "--concurrency", str(args.concurrency)]
    with ExitStack() as stack:
        if args.shared_limits:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from tasks.rate_limits import ensure_limits

            api = stack.enter_context(prefect_server(Path(tempfile.mkdtemp()) / "prefect"))
            env["PREFECT_API_URL"] = api
            flags.append("--shared-limits")
            with temporary_settings({PREFECT_API_URL: api}):
                ensure_limits(worker_settings(url, base, base, base, args.rate, True))
        command = [sys.executable, "-m", "tests.support.dispatch_worker", "--db", url]
        command += ["--twilio", base, "--sendgrid", base, "--webhooks", base, *flags]
        start = time.perf_counter()
        workers = [
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(args.processes)
        ]
        outputs = [w.communicate()[0] for w in workers]
        wall = time.perf_counter() - start
    if any(w.returncode for w in workers):
        raise SystemExit("a dispatch worker failed")
    stats = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return {"sent": sum(s["sent"] for s in stats), "per_process": [s["sent"] for s in stats]}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=5000.0, help="configured SMS ceiling (segments/s)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1, help="dispatch worker processes for our side")
    parser.add_argument("--shared-limits", action="store_true", help="workers share the ceiling (Prefect)")
    args = parser.parse_args()
    separate = args.processes > 1 or args.shared_limits

    from config.settings import SendMode, Settings
    from tasks.dispatch import dispatch_cycle
    from tasks.runtime import Runtime
    from tests.support.live import SERVICE_SID, free_port
    from tests.support.postgres import postgres_server, scratch_database

    port = free_port()
    parent, child = mp.Pipe()
    fake = mp.Process(target=run_fake, args=(port, child), daemon=True)
    fake.start()
    assert parent.recv() == "ready"
    base = f"http://127.0.0.1:{port}"
    warm = 300
    with postgres_server() as admin, scratch_database(admin) as url:
        seed(url, args.messages)
        seed(url, warm, cycle=2, first=args.messages)
        settings = Settings(
            database_url=url,
            home=Path(tempfile.mkdtemp()),
            send_mode=SendMode.LIVE,
            twilio_account_sid="AC" + "0" * 32,
            twilio_auth_token="test-token",  # type: ignore[arg-type]
            twilio_base_url=base,
            twilio_messaging_service_sid=SERVICE_SID,
            twilio_concurrency=args.concurrency,
            sms_rate_per_second=args.rate,
            sendgrid_api_key="SG.unused",  # type: ignore[arg-type]
        )
        runtime = Runtime(settings)
        senders = {c: runtime.sender(c) for c in ("sms", "email", "whatsapp")}

        def ours(cycle: int) -> dict[str, Any]:
            return dispatch_cycle(runtime.engine, cycle, senders, runtime.markets, b"bench", args.batch)

        ours(2)
        raw_sdk(base, warm, args.concurrency)
        raw_before = raw_sdk(base, args.messages, args.concurrency)
        began = time.time()
        start = time.perf_counter()
        if separate:
            stats, _ = run_workers(url, base, args)
        else:
            stats = ours(1)
        our_rate = args.messages / (time.perf_counter() - start)
        parent.send(began)
        our_starts = parent.recv()
        if separate:
            our_rate = (len(our_starts) - 1) / (max(our_starts) - min(our_starts))
        raw_after = raw_sdk(base, args.messages, args.concurrency)
        runtime.close()
    parent.send(None)
    fake.join(timeout=10)
    raw = (raw_before + raw_after) / 2

    print(
        f"\nDispatch benchmark: {args.messages:,} SMS, concurrency {args.concurrency}, "
        f"ceiling {args.rate:,.0f}/s, batch {args.batch:,}"
    )
    if separate:
        print(
            f"{args.processes} dispatch processes, "
            + (
                "sharing the ceiling (Prefect rate limits)"
                if args.shared_limits
                else "each with the full ceiling"
            )
            + f"; messages sent per process: {stats['per_process']}"
        )
    print(
        f"renewals dispatch (ledger, consent re-check, limiter, retries): {our_rate:,.0f} msg/s, "
        f"sent {stats['sent']:,}"
    )
    print(
        f"raw twilio SDK, same concurrency, no ledger:                  {raw:,.0f} msg/s "
        f"(before {raw_before:,.0f}, after {raw_after:,.0f})"
    )
    print(f"ratio dispatch / raw SDK: {our_rate / raw:.2f}")
    print(
        f"highest rate the fake saw in any one-second window: {busiest_second(our_starts):,} "
        f"(ceiling {args.rate:,.0f})"
    )


if __name__ == "__main__":
    main()
