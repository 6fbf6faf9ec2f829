"""The renewal-cycle flow with send_mode=live goes out through the real SDKs (here: to the loopback fakes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.renewal_cycle import renewal_cycle
from tasks.runtime import reset_runtime
from tests.e2e.conftest import AS_OF, wire
from tests.fakes.sendgrid_fake import FakeSendGrid
from tests.fakes.twilio_fake import FakeTwilio
from tests.support.live import SERVICE_SID

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "unwire")]

LIVE = (
    "RENEWALS_SEND_MODE",
    "RENEWALS_TWILIO_ACCOUNT_SID",
    "RENEWALS_TWILIO_AUTH_TOKEN",
    "RENEWALS_TWILIO_BASE_URL",
    "RENEWALS_TWILIO_MESSAGING_SERVICE_SID",
    "RENEWALS_SENDGRID_API_KEY",
    "RENEWALS_SENDGRID_HOST",
    "RENEWALS_SMS_RATE_PER_SECOND",
)


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTwilio, FakeSendGrid]]:
    with FakeTwilio() as twilio, FakeSendGrid() as sendgrid:
        yield twilio, sendgrid
    for name in LIVE:
        os.environ.pop(name, None)
    reset_runtime()


def test_live_cycle_sends_through_the_sdks_and_a_rerun_sends_nothing(
    tmp_path: Path, fakes: tuple[FakeTwilio, FakeSendGrid]
) -> None:
    twilio, sendgrid = fakes
    portfolio = wire(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", customers=600, seed=11)
    os.environ.update(
        {
            "RENEWALS_SEND_MODE": "live",
            "RENEWALS_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "RENEWALS_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "RENEWALS_TWILIO_BASE_URL": twilio.base_url,
            "RENEWALS_TWILIO_MESSAGING_SERVICE_SID": SERVICE_SID,
            "RENEWALS_SENDGRID_API_KEY": sendgrid.api_key,
            "RENEWALS_SENDGRID_HOST": sendgrid.base_url,
            "RENEWALS_SMS_RATE_PER_SECOND": "500",
        }
    )
    reset_runtime()
    first = renewal_cycle(as_of=AS_OF)
    sent = first["stages"]["dispatch"]["sent"]
    assert sent > 0
    assert len(twilio.messages) + len(sendgrid.sent) == sent
    assert not list(portfolio.outbox_dir.glob("*.jsonl")), "live mode never writes the outbox"
    second = renewal_cycle(as_of=AS_OF)
    assert second["stages"]["dispatch"]["sent"] == 0
    assert len(twilio.messages) + len(sendgrid.sent) == sent
