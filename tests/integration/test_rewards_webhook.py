"""The rewards-platform webhook against a fake platform on loopback: signed, idempotent, retried with care."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from email.utils import formatdate

import pandas as pd
import pytest
from sqlalchemy import Engine

from config.rewards_loader import RewardConfig
from tasks.domain.rewards import Fulfilment, RewardKind
from tasks.fulfilment import Event, Grant, Outcome
from tasks.fulfilment.webhook import WebhookFulfiller, sign
from tasks.rewards import run_rewards
from tests.fakes.rewards_platform import FakeRewardsPlatform
from tests.fakes.twilio_fake import Reply
from tests.integration.test_rewards import AS_OF, MARKETS, NOW, config, context, rewards, seed
from tests.support.factories import raw_set
from tests.support.pipeline import Pipeline

SECRET = b"test-rewards-secret"
CLOCK = 1_790_000_000.0


def grant(key: str = "back:C3:2026-11", **changes: object) -> Grant:
    values: dict[str, object] = {
        "reward_key": key,
        "customer_key": "C3",
        "market": "GB",
        "rule": "back",
        "kind": "cashback",
        "value": Decimal("12.00"),
        "currency": "GBP",
        "points": None,
        "granted_on": date(2026, 11, 22),
        "expires_on": None,
    }
    return Grant(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture
def platform() -> Iterator[FakeRewardsPlatform]:
    with FakeRewardsPlatform(SECRET) as fake:
        yield fake


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(
    platform: FakeRewardsPlatform, secret: bytes = SECRET, **options: object
) -> tuple[WebhookFulfiller, Sleeps]:
    sleeps = Sleeps()
    values: dict[str, object] = {"sleep": sleeps, "clock": lambda: CLOCK, "rand": lambda: 0.0, "timeout": 2.0}
    return WebhookFulfiller(platform.url, secret, **(values | options)), sleeps  # type: ignore[arg-type]


def test_posts_a_signed_document_keyed_by_the_reward(platform: FakeRewardsPlatform) -> None:
    hook, sleeps = client(platform)

    [result] = hook.fulfil([grant()])

    assert (result.outcome, result.reference, result.attempts) == (Outcome.FULFILLED, "RP000001", 1)
    [seen] = platform.received
    assert seen.signature_ok and seen.idempotency_key == "back:C3:2026-11"
    assert seen.body == {
        "event": "reward.granted",
        "reward_key": "back:C3:2026-11",
        "customer_key": "C3",
        "market": "GB",
        "rule": "back",
        "kind": "cashback",
        "value": "12.00",
        "currency": "GBP",
        "points": None,
        "granted_on": "2026-11-22",
        "expires_on": None,
        "reason": None,
    }
    assert sleeps == []


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b"The quick brown fox jumps over the lazy dog"

    assert sign(b"key", body) == "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_a_repeated_reward_is_booked_once(platform: FakeRewardsPlatform) -> None:
    hook, _ = client(platform)

    first = hook.fulfil([grant()])
    second = hook.fulfil([grant()])

    assert first[0].reference == second[0].reference == "RP000001"
    assert list(platform.booked) == ["back:C3:2026-11"]
    assert [r.status for r in platform.received] == [201, 200]


def test_5xx_and_429_are_retried_with_backoff_and_retry_after(platform: FakeRewardsPlatform) -> None:
    platform.script(Reply.error(500), Reply.error(503), Reply.rate_limited("7"))
    hook, sleeps = client(platform, base_delay=0.5)

    [result] = hook.fulfil([grant()])

    assert (result.outcome, result.attempts) == (Outcome.FULFILLED, 4)
    # Equal jitter with rand()=0 waits half the exponential step: 0.25, 0.5, then Retry-After's 7 s wins.
    assert sleeps == [0.25, 0.5, 7.0]
    assert {r.idempotency_key for r in platform.received} == {"back:C3:2026-11"}
    assert len(platform.booked) == 1


def test_retry_after_as_an_http_date_is_honoured(platform: FakeRewardsPlatform) -> None:
    platform.script(Reply.rate_limited(formatdate(CLOCK + 30, usegmt=True)))
    hook, sleeps = client(platform)

    [result] = hook.fulfil([grant()])

    assert result.outcome is Outcome.FULFILLED
    assert sleeps == [30.0]


def test_a_400_fails_for_good_without_a_retry(platform: FakeRewardsPlatform) -> None:
    platform.script(Reply.error(400, message="unknown customer"))
    hook, sleeps = client(platform)

    [result] = hook.fulfil([grant()])

    assert (result.outcome, result.attempts) == (Outcome.FAILED, 1)
    assert result.error is not None and "HTTP 400" in result.error
    assert sleeps == [] and platform.booked == {}


def test_a_wrong_secret_is_refused_for_good(platform: FakeRewardsPlatform) -> None:
    hook, _ = client(platform, secret=b"not-the-secret")

    [result] = hook.fulfil([grant()])

    assert result.outcome is Outcome.FAILED and "HTTP 401" in (result.error or "")
    assert not platform.received[0].signature_ok


def test_a_platform_still_failing_after_the_last_attempt_is_left_for_the_next_run(
    platform: FakeRewardsPlatform,
) -> None:
    platform.script(*[Reply.error(502)] * 3)
    hook, sleeps = client(platform, max_attempts=3)

    [result] = hook.fulfil([grant()])

    assert (result.outcome, result.attempts) == (Outcome.RETRY, 3)
    assert len(sleeps) == 2 and platform.booked == {}


def test_a_retry_after_beyond_the_cap_is_left_for_the_next_run(platform: FakeRewardsPlatform) -> None:
    platform.script(Reply.rate_limited("3600"))
    hook, sleeps = client(platform)

    [result] = hook.fulfil([grant()])

    assert result.outcome is Outcome.RETRY and "3600" in (result.error or "")
    assert sleeps == []


def test_a_slow_answer_times_out_and_the_resend_is_deduplicated(platform: FakeRewardsPlatform) -> None:
    # Only the first answer is slow; the retry has a whole second, time enough on a loaded machine.
    platform.script(Reply.accept(delay=5.0))
    hook, sleeps = client(platform, timeout=1.0)

    [result] = hook.fulfil([grant()])

    assert (result.outcome, result.attempts) == (Outcome.FULFILLED, 2)
    assert len(platform.booked) == 1 and len(sleeps) == 1
    assert [r.idempotency_key for r in platform.received] == ["back:C3:2026-11"] * 2


def test_a_clawback_has_its_own_idempotency_key(platform: FakeRewardsPlatform) -> None:
    hook, _ = client(platform)

    hook.fulfil([grant()])
    hook.fulfil([grant(event=Event.CLAWED_BACK, reason="payment_reversed")])

    assert list(platform.booked) == ["back:C3:2026-11", "back:C3:2026-11:clawback"]
    assert platform.booked["back:C3:2026-11:clawback"]["event"] == "reward.clawed_back"


def test_the_flow_fulfils_webhook_rewards_through_the_platform(
    sqlite_engine: Engine, platform: FakeRewardsPlatform
) -> None:
    seed(sqlite_engine)
    platform.script(Reply.error(500))
    hook, _ = client(platform)

    run_rewards(context(sqlite_engine, platform=hook), AS_OF, MARKETS, NOW)

    got = rewards(sqlite_engine).loc["back:C3:2026-11"]
    assert (got["status"], got["fulfilment_ref"], got["fulfil_attempts"]) == ("fulfilled", "RP000001", 2)
    assert list(platform.booked) == ["back:C3:2026-11"]


def test_a_clawed_back_webhook_reward_is_reported_to_the_platform_once(
    sqlite_engine: Engine, platform: FakeRewardsPlatform
) -> None:
    seed(sqlite_engine)
    early = replace(
        config().rules[0], reward=RewardKind.CASHBACK, fulfilment=Fulfilment.WEBHOOK, expires_after_days=None
    )
    cfg = RewardConfig((early,), config().fx)
    hook, _ = client(platform)
    ctx = context(sqlite_engine, cfg, platform=hook)
    run_rewards(ctx, AS_OF, ["DE"], NOW)
    Pipeline(sqlite_engine).load(
        raw_set(contracts=[{"contract_key": "K1", "customer_key": "C1", "renewed_at": ""}])
    )

    run_rewards(ctx, AS_OF, ["DE"], NOW)
    run_rewards(ctx, AS_OF, ["DE"], NOW)

    assert list(platform.booked) == ["early:C1:K1:20261110", "early:C1:K1:20261110:clawback"]
    assert platform.booked["early:C1:K1:20261110:clawback"]["reason"] == "renewal_undone"
    got = rewards(sqlite_engine).loc["early:C1:K1:20261110"]
    assert got["status"] == "clawed_back" and pd.notna(got["clawback_synced_at"])
    assert len(platform.received) == 2
