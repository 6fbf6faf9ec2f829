"""Webhook fulfilment: POST each reward to the external rewards platform, signed and idempotent.

The body is JSON; `X-Signature` is the hex HMAC-SHA256 of the raw body with the shared secret and
`Idempotency-Key` is the reward key (suffixed `:clawback` for a clawback), so every retry is safe. 5xx,
429 and transport errors are retried with exponential backoff (honouring Retry-After); any other 4xx
fails the reward for good.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tasks.fulfilment import Grant, Outcome, Result

SIGNATURE_HEADER = "X-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: bytes, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of `body` with `secret`."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(grant: Grant) -> dict[str, Any]:
    """Return the JSON document the platform gets for one grant: keys, amounts, dates, no contact data."""
    return {
        "event": grant.event.value,
        "reward_key": grant.reward_key,
        "customer_key": grant.customer_key,
        "market": grant.market,
        "rule": grant.rule,
        "kind": grant.kind,
        "value": str(grant.value),
        "currency": grant.currency,
        "points": grant.points,
        "granted_on": grant.granted_on.isoformat(),
        "expires_on": grant.expires_on.isoformat() if grant.expires_on else None,
        "reason": grant.reason,
    }


def retry_after(value: str | None, now: float) -> float | None:
    """Return the seconds a Retry-After header asks to wait (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class WebhookFulfiller:
    """Posts grants to the rewards platform one by one, retrying what can pass."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_server_delay: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not url:
            raise ValueError("the rewards platform URL is not set")
        if not secret:
            raise ValueError("the rewards webhook secret is not set")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.secret = secret
        self.client = client or httpx.Client(timeout=timeout, trust_env=False)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_server_delay = max_server_delay
        self.sleep = sleep
        self.clock = clock
        self.rand = rand

    def backoff(self, attempt: int) -> float:
        """Return the pause after the `attempt`-th failed try: exponential, capped, with equal jitter."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + ceiling / 2 * self.rand()

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        """Post each grant and return its result."""
        return [self._post(grant) for grant in grants]

    def _post(self, grant: Grant) -> Result:
        body = json.dumps(payload(grant), separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            IDEMPOTENCY_HEADER: grant.idempotency_key,
        }
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                # The request may or may not have arrived; the idempotency key makes a resend harmless.
                error = f"transport: {type(exc).__name__}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Result(grant.reward_key, Outcome.FULFILLED, _reference(response), attempts=attempt)
                error = f"HTTP {status}: {response.text[:200]}"
                if status != 429 and status < 500:
                    return Result(grant.reward_key, Outcome.FAILED, error=error, attempts=attempt)
                wait = retry_after(response.headers.get("Retry-After"), self.clock())
            if attempt == self.max_attempts:
                break
            if wait is not None and wait > self.max_server_delay:
                error += f" (asked to wait {wait:.0f}s; left for the next run)"
                return Result(grant.reward_key, Outcome.RETRY, error=error, attempts=attempt)
            self.sleep(max(wait if wait is not None else 0.0, self.backoff(attempt)))
        return Result(grant.reward_key, Outcome.RETRY, error=error, attempts=self.max_attempts)

    def close(self) -> None:
        """Release the HTTP connections."""
        self.client.close()


def _reference(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    ref = data.get("id") if isinstance(data, dict) else None
    return str(ref)[:120] if ref is not None else None


class Unconfigured:
    """Stands in for the platform when no URL or secret is set: webhook rewards wait for the next run."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        """Return a retry for every grant."""
        return [Result(g.reward_key, Outcome.RETRY, error=self.reason, attempts=0) for g in grants]
