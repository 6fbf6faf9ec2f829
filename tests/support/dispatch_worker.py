"""A dispatch process for crash and concurrency tests: live senders aimed at the loopback fakes.

python -m tests.support.dispatch_worker --db URL --twilio URL --sendgrid URL --webhooks URL --cycle 1
    [--shared-limits --rate 100 --limit-prefix renewals-rate]   (with PREFECT_API_URL in the environment)
    [--start-together DIR --parties N]   (wait, ready to send, until N workers are ready in DIR)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from config.settings import SendMode, Settings
from tasks.dispatch import dispatch_cycle
from tasks.runtime import Runtime
from tests.support.live import SERVICE_SID
from tests.support.pipeline import HASH_KEY


def worker_settings(
    db: str,
    twilio: str,
    sendgrid: str,
    webhooks: str,
    rate: float = 5000.0,
    shared_limits: bool = False,
    limit_prefix: str = "renewals-rate",
    concurrency: int = 8,
) -> Settings:
    """Return a dispatch worker's settings; `renewals limits ensure` with the same ones creates its limits."""
    return Settings(
        database_url=db,
        home=Path(tempfile.mkdtemp()),
        send_mode=SendMode.LIVE,
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="test-token",  # type: ignore[arg-type]
        twilio_base_url=twilio,
        twilio_messaging_service_sid=SERVICE_SID,
        webhook_public_base_url=webhooks,
        sendgrid_api_key="SG.test-key",  # type: ignore[arg-type]
        sendgrid_host=sendgrid,
        sms_rate_per_second=rate,
        twilio_concurrency=concurrency,
        sendgrid_rate_per_second=rate,
        shared_rate_limits=shared_limits,
        shared_rate_limit_prefix=limit_prefix,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )


def start_together(folder: Path, parties: int, timeout: float = 300.0) -> None:
    """Say this worker is ready and wait until `parties` are: importing alone takes seconds here."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.ready"))) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(list(folder.glob('*.ready')))} of {parties} workers got ready")
        time.sleep(0.05)


def main() -> None:
    """Dispatch one cycle to the fakes and print the stats as JSON."""
    parser = argparse.ArgumentParser()
    for name in ("db", "twilio", "sendgrid", "webhooks", "sendgrid-public-key"):
        parser.add_argument(f"--{name}", required=name != "sendgrid-public-key", default="")
    parser.add_argument("--cycle", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--grace", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="SMS and SendGrid ceiling per second")
    parser.add_argument("--shared-limits", action="store_true", help="share the ceiling via Prefect limits")
    parser.add_argument("--limit-prefix", default="renewals-rate")
    parser.add_argument("--concurrency", type=int, default=8, help="Twilio calls in flight")
    parser.add_argument("--start-together", type=Path, help="folder where workers say they are ready")
    parser.add_argument("--parties", type=int, default=1, help="workers to wait for in --start-together")
    args = parser.parse_args()
    settings = worker_settings(
        args.db,
        args.twilio,
        args.sendgrid,
        args.webhooks,
        args.rate,
        args.shared_limits,
        args.limit_prefix,
        args.concurrency,
    )
    runtime = Runtime(settings)
    senders = {c: runtime.sender(c) for c in ("email", "sms", "whatsapp")}
    if args.start_together is not None:
        start_together(args.start_together, args.parties)
    stats = dispatch_cycle(
        runtime.engine,
        args.cycle,
        senders,
        runtime.markets,
        HASH_KEY,
        args.batch,
        lease_seconds=0,
        grace_seconds=args.grace,
        email_events=True,
    )
    sys.stdout.write(json.dumps(stats) + "\n")


if __name__ == "__main__":
    main()
