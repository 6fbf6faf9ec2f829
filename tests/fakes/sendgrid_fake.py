"""A fake SendGrid v3 mail/send on 127.0.0.1 with the real wire format, scripts and signed event webhooks."""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.channels.signatures import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    sendgrid_keypair,
    sendgrid_sign,
)
from tests.fakes.twilio_fake import FakeServer, Reply, Request, Response, Scripts

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_PERSONALIZATIONS = 1000
MAX_BYTES = 30 * 1024 * 1024


def _errors(*items: tuple[str, str | None]) -> dict[str, Any]:
    return {"errors": [{"message": m, "field": f, "help": None} for m, f in items]}


def sendgrid_error(
    status: int, message: str = "error", field: str | None = None, headers: Mapping[str, str] | None = None
) -> Reply:
    """Refuse with SendGrid's error body {"errors": [{"message", "field", "help"}]}."""
    error = {"message": message, "field": field, "help": None}
    return Reply("error", status=status, message=message, headers=dict(headers or {}), errors=(error,))


def sendgrid_rate_limited(reset: float, limit: int = 600, remaining: int = 0) -> Reply:
    """Refuse with 429 and X-RateLimit-Limit/-Remaining/-Reset (Reset is a unix time)."""
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(reset)),
    }
    return sendgrid_error(429, "too many requests", None, headers)


@dataclass
class SentEmail:
    """One recipient of one accepted request."""

    x_message_id: str
    email: str
    custom_args: dict[str, str]
    subject: str | None
    template_id: str | None
    dynamic_template_data: dict[str, Any] | None
    content: list[dict[str, str]]
    categories: list[str]
    headers: dict[str, str]
    asm: dict[str, Any] | None
    request: dict[str, Any] = field(repr=False)

    @property
    def message_key(self) -> str | None:
        """Return the message_key custom arg."""
        return self.custom_args.get("message_key")


class FakeSendGrid(FakeServer):
    """SendGrid mail/send: Bearer auth, payload checks, 202 + X-Message-Id, scripts per recipient, events."""

    def __init__(self, api_key: str = "SG.test-key", port: int = 0, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.max_bytes = max_bytes
        self.scripts = Scripts()
        self.private_key, self.public_key = sendgrid_keypair()
        self._lock = threading.Lock()
        self._sent: list[SentEmail] = []
        self.requests: list[tuple[str, str, int, int]] = []
        """(method, path, personalizations, status or 0 when dropped) of every request."""

    # --- Python API for tests -------------------------------------------------------------------------

    def script(self, email: str, *replies: Reply) -> None:
        """Queue replies for requests that include `email` as a recipient."""
        self.scripts.add(email.lower(), replies)

    @property
    def sent(self) -> list[SentEmail]:
        """Return every accepted recipient, in order."""
        with self._lock:
            return list(self._sent)

    def count(self, email: str | None = None) -> int:
        """Return how many emails were accepted (for `email`)."""
        return sum(1 for s in self.sent if email is None or s.email == email.lower())

    def by_key(self) -> dict[str, list[SentEmail]]:
        """Return the accepted emails grouped by their message_key custom arg."""
        grouped: dict[str, list[SentEmail]] = {}
        for item in self.sent:
            grouped.setdefault(item.message_key or "", []).append(item)
        return grouped

    # --- HTTP -----------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route one request."""
        if request.path != "/v3/mail/send":
            return self._record(request, 0, Response.json(404, _errors(("Not found", None))))
        if request.method != "POST":
            return self._record(request, 0, Response.json(405, _errors(("Method not allowed", None))))
        if not secrets.compare_digest(request.headers.get("Authorization") or "", f"Bearer {self.api_key}"):
            body = _errors(("The provided authorization grant is invalid, expired, or revoked", None))
            return self._record(request, 0, Response.json(401, body))
        if len(request.body) > self.max_bytes:
            return self._record(request, 0, Response.json(413, _errors(("Payload Too Large", None))))
        try:
            payload = json.loads(request.body)
        except ValueError:
            return self._record(request, 0, Response.json(400, _errors(("Bad Request", None))))
        count = len(payload.get("personalizations") or []) if isinstance(payload, dict) else 0
        recipients = _recipients(payload)
        reply = self.scripts.next_for(recipients)
        if reply is not None and reply.kind != "accept":
            return self._record(request, count, self._scripted(reply, payload))
        problems = validate(payload)
        if problems:
            return self._record(request, count, Response.json(400, {"errors": problems}))
        sandbox = bool(((payload.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"))
        if sandbox:
            return self._record(request, count, Response(200))
        message_id = self._take(payload)
        response = Response(202, b"", {"X-Message-Id": message_id})
        response.delay = reply.delay if reply is not None else 0.0
        return self._record(request, count, response)

    def _record(self, request: Request, personalizations: int, response: Response) -> Response:
        with self._lock:
            status = 0 if response.drop or response.reset else response.status
            self.requests.append((request.method, request.path, personalizations, status))
        return response

    def _take(self, payload: dict[str, Any]) -> str:
        message_id = secrets.token_urlsafe(16)[:22]
        top_args = payload.get("custom_args") or {}
        taken = []
        for item in payload["personalizations"]:
            for to in item["to"]:
                taken.append(
                    SentEmail(
                        message_id,
                        to["email"].lower(),
                        dict(top_args) | dict(item.get("custom_args") or {}),
                        item.get("subject", payload.get("subject")),
                        payload.get("template_id"),
                        item.get("dynamic_template_data"),
                        list(payload.get("content") or []),
                        list(payload.get("categories") or []),
                        dict(payload.get("headers") or {}) | dict(item.get("headers") or {}),
                        payload.get("asm"),
                        payload,
                    )
                )
        with self._lock:
            self._sent.extend(taken)
        return message_id

    def _scripted(self, reply: Reply, payload: dict[str, Any]) -> Response:
        if reply.kind == "drop":
            if reply.accepted and not validate(payload):
                self._take(payload)
            return Response(drop=True, delay=reply.delay)
        if reply.kind == "close":
            return Response(reset=True)
        if reply.kind == "raw":
            headers = {"Content-Type": "text/html"} | dict(reply.headers)
            return Response(reply.status, (reply.body or "").encode(), headers, delay=reply.delay)
        errors = list(reply.errors) or [{"message": reply.message, "field": None, "help": None}]
        response = Response.json(reply.status, {"errors": errors}, reply.headers)
        response.delay = reply.delay
        return response

    # --- Event Webhook --------------------------------------------------------------------------------

    def events(
        self,
        kinds: Sequence[str] = ("processed", "delivered"),
        emails: Iterable[SentEmail] | None = None,
        extra: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> list[dict[str, Any]]:
        """Return Event Webhook events for accepted emails: custom args as top-level keys, like SendGrid."""
        out = []
        for n, item in enumerate(self.sent if emails is None else emails):
            for kind in kinds:
                event: dict[str, Any] = {
                    "email": item.email,
                    "timestamp": int(clock()),
                    "event": kind,
                    "sg_event_id": secrets.token_urlsafe(16),
                    "sg_message_id": f"{item.x_message_id}.recvd-{n}-1-{secrets.token_hex(4)}",
                    "smtp-id": f"<{item.x_message_id}@ismtpd0001p1.sendgrid.net>",
                    "category": item.categories,
                }
                if item.asm:
                    event["asm_group_id"] = item.asm.get("group_id")
                event |= dict(item.custom_args) | dict(extra or {})
                out.append(event)
        return out

    def post_events(
        self,
        url: str,
        events: Sequence[Mapping[str, Any]],
        *,
        batch_size: int = 100,
        duplicate: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        timestamp: int | None = None,
        tamper: bool = False,
    ) -> list[httpx.Response]:
        """POST signed Event Webhook batches to `url`; duplicated, shuffled or tampered on request."""
        plan = list(events)
        if duplicate:
            plan = plan + plan
        if shuffle:
            random.Random(seed).shuffle(plan)
        responses = []
        for start in range(0, len(plan), batch_size):
            # SendGrid's bodies end in CRLF; the signature covers the raw bytes, CRLF included.
            body = json.dumps(plan[start : start + batch_size]) + "\r\n"
            stamp = str(timestamp if timestamp is not None else int(time.time()))
            signature = sendgrid_sign(self.private_key, body, stamp)
            if tamper:
                body = body.replace("delivered", "bounce", 1).replace("processed", "dropped", 1)
            headers = {
                "Content-Type": "application/json",
                SENDGRID_SIGNATURE_HEADER: signature,
                SENDGRID_TIMESTAMP_HEADER: stamp,
            }
            responses.append(self.http.post(url, content=body.encode(), headers=headers))
        return responses


def _recipients(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return []
    found = []
    for item in payload.get("personalizations") or []:
        if isinstance(item, dict):
            for to in item.get("to") or []:
                if isinstance(to, dict) and isinstance(to.get("email"), str):
                    found.append(to["email"].lower())
    return found


def validate(payload: object) -> list[dict[str, Any]]:
    """Return SendGrid-style errors for a mail/send body (empty when it would be accepted)."""
    problems: list[tuple[str, str | None]] = []
    if not isinstance(payload, dict):
        return _errors(("Bad Request", None))["errors"]  # type: ignore[no-any-return]
    items = payload.get("personalizations")
    if not isinstance(items, list) or not items:
        problems.append(
            (
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
        )
        items = []
    elif len(items) > MAX_PERSONALIZATIONS:
        problems.append(("The personalizations field must have no more than 1000 items.", "personalizations"))
    total = 0
    for i, item in enumerate(items):
        tos = item.get("to") if isinstance(item, dict) else None
        if not isinstance(tos, list) or not tos:
            problems.append(
                ("The to array is required for all personalization objects.", f"personalizations.{i}.to")
            )
            continue
        total += len(tos) + len(item.get("cc") or []) + len(item.get("bcc") or [])
        for j, to in enumerate(tos):
            if not isinstance(to, dict) or not EMAIL.match(str(to.get("email", ""))):
                problems.append(("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email"))
        args = item.get("custom_args") or {}
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            problems.append(("Custom args values must be strings.", f"personalizations.{i}.custom_args"))
        if item.get("dynamic_template_data") is not None and not str(
            payload.get("template_id", "")
        ).startswith("d-"):
            problems.append(
                (
                    "dynamic_template_data needs a dynamic template_id.",
                    f"personalizations.{i}.dynamic_template_data",
                )
            )
    if total > MAX_PERSONALIZATIONS:
        problems.append(("The total number of recipients must be no more than 1000.", "personalizations"))
    sender = payload.get("from")
    if not isinstance(sender, dict) or not EMAIL.match(str(sender.get("email", ""))):
        problems.append(("The from object must be provided for every email send.", "from.email"))
    template_id = payload.get("template_id")
    content = payload.get("content")
    if not template_id:
        if (
            not isinstance(content, list)
            or not content
            or not all(isinstance(c, dict) and c.get("value") for c in content)
        ):
            problems.append(
                ("Unless a valid template_id is provided, the content parameter is required.", "content")
            )
        else:
            types = [c.get("type") for c in content]
            if (
                "text/plain" in types
                and "text/html" in types
                and types.index("text/html") < types.index("text/plain")
            ):
                problems.append(("text/plain must come before text/html.", "content"))
        if not payload.get("subject") and not all(isinstance(i, dict) and i.get("subject") for i in items):
            problems.append(("The subject is required.", "subject"))
    categories = payload.get("categories") or []
    if len(categories) > 10 or not all(isinstance(c, str) and len(c) <= 255 for c in categories):
        problems.append(("Categories: at most 10, each at most 255 characters.", "categories"))
    asm = payload.get("asm")
    if asm is not None and not isinstance((asm or {}).get("group_id"), int):
        problems.append(("The asm group_id must be an integer.", "asm.group_id"))
    errors: list[dict[str, Any]] = _errors(*problems)["errors"] if problems else []
    return errors
