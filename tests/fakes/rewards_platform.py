"""A fake rewards platform on 127.0.0.1: checks the signature, dedupes by idempotency key, scriptable."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.fakes.twilio_fake import FakeServer, Reply, Request, Response


@dataclass(frozen=True)
class Received:
    """One request as the platform saw it."""

    idempotency_key: str | None
    signature_ok: bool
    body: dict[str, Any] | None
    status: int


class FakeRewardsPlatform(FakeServer):
    """POST /v1/rewards: 401 on a bad signature, 400 without an idempotency key, 201 once per key.

    A repeated key answers 200 with the first response (and Idempotent-Replayed: true) and books
    nothing new. `script(*replies)` queues answers for the next requests (429, 500, 400, slow ...).
    """

    path = "/v1/rewards"

    def __init__(self, secret: bytes = b"test-rewards-secret", port: int = 0) -> None:
        super().__init__(port)
        self.secret = secret
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._ids = itertools.count(1)
        self.booked: dict[str, dict[str, Any]] = {}
        """Idempotency key -> the accepted document, once each."""
        self._answers: dict[str, dict[str, Any]] = {}
        self.received: list[Received] = []

    @property
    def url(self) -> str:
        """Return the endpoint the adapter posts to."""
        return self.base_url + self.path

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order; afterwards requests are served normally."""
        with self._lock:
            self._script.extend(replies)

    def handle(self, request: Request) -> Response:
        """Route one request."""
        if request.method != "POST" or request.path != self.path:
            return Response.json(404, {"error": "not found"})
        key = request.headers.get("Idempotency-Key")
        expected = hmac.new(self.secret, request.body, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(request.headers.get("X-Signature") or "", expected)
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        response = self._answer(key, signature_ok, body, scripted)
        with self._lock:
            self.received.append(Received(key, signature_ok, body, response.status))
        return response

    def _answer(self, key: str | None, signature_ok: bool, body: Any, scripted: Reply | None) -> Response:
        if scripted is not None and scripted.kind != "accept":
            response = Response.json(
                scripted.status, {"error": scripted.message}, headers=dict(scripted.headers)
            )
            response.delay = scripted.delay
            return response
        delay = scripted.delay if scripted is not None else 0.0
        if not signature_ok:
            return Response.json(401, {"error": "bad signature"})
        if not key:
            return Response.json(400, {"error": "Idempotency-Key is required"})
        if not isinstance(body, dict) or "reward_key" not in body:
            return Response.json(422, {"error": "not a reward document"})
        with self._lock:
            if key in self._answers:
                answer = Response.json(200, self._answers[key], {"Idempotent-Replayed": "true"})
            else:
                self.booked[key] = body
                self._answers[key] = {"id": f"RP{next(self._ids):06d}", "status": "accepted"}
                answer = Response.json(201, self._answers[key])
        answer.delay = delay
        return answer
