"""A fake Twilio Messages API on 127.0.0.1 speaking the real wire format, scriptable per recipient.

Also holds the small threaded HTTP server and the scripted replies the SendGrid fake shares.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from tasks.channels.signatures import TWILIO_SIGNATURE_HEADER, twilio_signature
from tasks.domain.messaging import sms_segments

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")


def free_port() -> int:
    """Return a loopback port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- scripted replies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer to one request; a recipient's script is played in order, then requests succeed."""

    kind: str
    """accept | error | problem | raw | drop | close"""
    status: int = 0
    code: int | None = None
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    delay: float = 0.0
    """Seconds to wait before answering (a slow provider)."""
    accepted: bool = False
    """For drop: whether the provider took the message before the connection died."""
    errors: tuple[Mapping[str, Any], ...] = ()

    @staticmethod
    def accept(delay: float = 0.0) -> Reply:
        """Take the message (201/202), optionally after a delay."""
        return Reply("accept", delay=delay)

    @staticmethod
    def error(
        status: int, code: int | None = None, message: str = "error", headers: Mapping[str, str] | None = None
    ) -> Reply:
        """Refuse with a Twilio JSON error body ({code, message, more_info, status}) or SendGrid {errors}."""
        return Reply("error", status=status, code=code, message=message, headers=dict(headers or {}))

    @staticmethod
    def problem(status: int, code: int, title: str = "Problem", detail: str = "") -> Reply:
        """Refuse with an RFC 9457 problem body, which twilio >= 9.10 raises as TwilioServiceException."""
        return Reply("problem", status=status, code=code, message=title, body=detail)

    @staticmethod
    def raw(status: int, body: str = "", headers: Mapping[str, str] | None = None) -> Reply:
        """Answer with a non-JSON body (a proxy's 502 page, a text 429)."""
        return Reply("raw", status=status, body=body, headers=dict(headers or {}))

    @staticmethod
    def rate_limited(retry_after: str | None = "1", headers: Mapping[str, str] | None = None) -> Reply:
        """Answer 429 with a Retry-After (seconds or HTTP date)."""
        merged = dict(headers or {})
        if retry_after is not None:
            merged["Retry-After"] = retry_after
        return Reply("error", status=429, code=20429, message="Too Many Requests", headers=merged)

    @staticmethod
    def drop(accepted: bool = True) -> Reply:
        """Read the request, (take the message,) then close the connection without answering."""
        return Reply("drop", accepted=accepted)

    @staticmethod
    def close() -> Reply:
        """Close the connection with a reset without processing the request (the message is not taken)."""
        return Reply("close")

    def with_delay(self, seconds: float) -> Reply:
        """Return this reply, answered after `seconds`."""
        return Reply(
            self.kind,
            self.status,
            self.code,
            self.message,
            self.headers,
            self.body,
            seconds,
            self.accepted,
            self.errors,
        )


class Scripts:
    """Per-recipient reply queues, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Reply]] = defaultdict(deque)

    def add(self, recipient: str, replies: Iterable[Reply]) -> None:
        """Queue replies for a recipient."""
        with self._lock:
            self._queues[recipient].extend(replies)

    def next_for(self, recipients: Iterable[str]) -> Reply | None:
        """Pop the next reply of the first recipient that has one."""
        with self._lock:
            for recipient in recipients:
                queue = self._queues.get(recipient)
                if queue:
                    return queue.popleft()
        return None


# --- HTTP plumbing ------------------------------------------------------------------------------------


@dataclass
class Request:
    """A request as the fake's application sees it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Message
    body: bytes


@dataclass
class Response:
    """What the fake's application answers; `drop` closes the connection instead, `reset` with an RST."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    reset: bool = False
    delay: float = 0.0

    @staticmethod
    def json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
        """Return a JSON response."""
        merged = {"Content-Type": "application/json"} | dict(headers or {})
        return Response(status, json.dumps(payload).encode(), merged)


App = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write; with Nagle on, the second small write waits for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command, parts.path, parse_qsl(parts.query, keep_blank_values=True), self.headers, body
        )
        with self.server.arrived():
            response = self.server.app(request)
            if response.delay:
                time.sleep(response.delay)
        if response.reset:
            # SO_LINGER 0: close with an RST, as a crashed load balancer would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if response.drop:
            self.close_connection = True
            return
        head = [f"HTTP/1.1 {response.status} {self.responses.get(response.status, ('',))[0]}"]
        headers = {"Content-Length": str(len(response.body)), "Connection": "keep-alive"} | response.headers
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the fakes serve thousands of requests a second."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, port: int, app: App) -> None:
        self.app = app
        self.gathering: threading.Barrier | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self._counting = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    @contextmanager
    def arrived(self) -> Iterator[None]:
        """Count a request in flight while it is answered; wait for its group first if gathering."""
        with self._counting:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.gathering is not None:
                with suppress(threading.BrokenBarrierError):
                    self.gathering.wait()
            yield
        finally:
            with self._counting:
                self.in_flight -= 1


class FakeServer:
    """A threaded loopback HTTP server around an application; a context manager."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """Return the client the fake posts webhooks with (built once: building one costs ~30 ms)."""
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(trust_env=False, timeout=10)
            return self._http

    def handle(self, request: Request) -> Response:
        """Answer one request."""
        raise NotImplementedError

    def gather(self, parties: int, timeout: float = 10.0) -> None:
        """Hold each request until `parties` are in flight together (or `timeout` passes), then answer."""
        self._running().gathering = threading.Barrier(parties, timeout=timeout)

    @property
    def peak_in_flight(self) -> int:
        """Return the most requests the server has held at once since it started."""
        return self._running().peak_in_flight

    def _running(self) -> _Server:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server

    @property
    def port(self) -> int:
        """Return the port the server listens on."""
        if self._server is None:
            if not self._port:
                raise RuntimeError("not started")
            return self._port
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Return http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start listening (on the given port, or a random free one)."""
        self._server = _Server(self._port, self.handle)
        self._port = self.port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Twilio -------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc2822(moment: datetime | None) -> str | None:
    return None if moment is None else format_datetime(moment.astimezone(UTC))


def _error_body(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class TwilioMessage:
    """A message the fake accepted."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    params: dict[str, str]
    status: str
    date_created: datetime
    date_sent: datetime | None
    num_segments: str
    error_code: int | None = None

    @property
    def status_callback(self) -> str | None:
        """Return the StatusCallback URL sent with the message."""
        return self.params.get("StatusCallback")

    def resource(self) -> dict[str, Any]:
        """Return the Message resource JSON."""
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{self.sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": self.body,
            "date_created": _rfc2822(self.date_created),
            "date_sent": _rfc2822(self.date_sent),
            "date_updated": _rfc2822(self.date_sent or self.date_created),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": self.num_segments,
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": self.to,
            "uri": uri,
        }


class FakeTwilio(FakeServer):
    """Twilio's Messages API (create, list, fetch) with Basic auth, scripted failures and signed callbacks."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-token",
        port: int = 0,
        clock: Callable[[], datetime] = _now,
        auto_send: bool = True,
        problem_details: bool = False,
    ) -> None:
        super().__init__(port)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.clock = clock
        self.auto_send = auto_send
        """Mark each taken message sent (DateSent set) at once; else it stays queued without DateSent."""
        self.problem_details = problem_details
        """Answer validation errors as RFC 9457 problems (TwilioServiceException) instead of legacy JSON."""
        self.scripts = Scripts()
        self.whatsapp_sessions: set[str] = set()
        """Numbers with an open 24-hour session, to which a free-form WhatsApp Body is allowed."""
        self._lock = threading.Lock()
        self._messages: dict[str, TwilioMessage] = {}
        self.requests: list[tuple[str, str, str | None, int]] = []
        """(method, path, To, answered status or 0 for a dropped connection) of every request."""

    # --- Python API for tests -------------------------------------------------------------------------

    def script(self, to: str, *replies: Reply) -> None:
        """Queue replies for requests to `to` (E.164, with or without whatsapp:)."""
        self.scripts.add(to.removeprefix("whatsapp:"), replies)

    @property
    def messages(self) -> list[TwilioMessage]:
        """Return every accepted message, oldest first."""
        with self._lock:
            return sorted(self._messages.values(), key=lambda m: (m.date_created, m.sid))

    def count(self, to: str | None = None) -> int:
        """Return how many messages were accepted (for `to`, with or without whatsapp:)."""
        number = to.removeprefix("whatsapp:") if to else None
        return sum(1 for m in self.messages if number is None or m.to.removeprefix("whatsapp:") == number)

    def message(self, sid: str) -> TwilioMessage:
        """Return one accepted message."""
        with self._lock:
            return self._messages[sid]

    def add_message(self, to: str, body: str, *, created: datetime | None = None, sent: bool = True) -> str:
        """Record a message as if created earlier (for reconcile tests); return its SID."""
        created = created or self.clock()
        sid = "SM" + secrets.token_hex(16)
        message = TwilioMessage(
            sid,
            self.account_sid,
            to,
            None,
            "MG" + "0" * 32,
            body,
            {"To": to, "Body": body},
            "sent" if sent else "queued",
            created,
            created if sent else None,
            "1",
        )
        with self._lock:
            self._messages[sid] = message
        return sid

    # --- HTTP -----------------------------------------------------------------------------------------

    def _authorised(self, request: Request, path_sid: str) -> bool:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(f"{user}:{password}", f"{self.account_sid}:{self.auth_token}") and (
            path_sid == self.account_sid
        )

    def handle(self, request: Request) -> Response:
        """Route one request."""
        match = re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages(?:/([^/]+))?\.json", request.path)
        if match is None:
            return self._record(request, None, Response.json(404, _error_body(20404, "Not found", 404)))
        if not self._authorised(request, match.group(1)):
            return self._record(request, None, Response.json(401, _error_body(20003, "Authenticate", 401)))
        if request.method == "POST" and match.group(2) is None:
            return self._create(request)
        if request.method == "GET" and match.group(2) is None:
            return self._record(request, None, self._list(request))
        if request.method == "GET":
            message = self._messages.get(match.group(2))
            if message is None:
                body = _error_body(20404, "The requested resource was not found", 404)
                return self._record(request, None, Response.json(404, body))
            return self._record(request, None, Response.json(200, message.resource()))
        return self._record(request, None, Response.json(405, _error_body(20004, "Method not allowed", 405)))

    def _record(self, request: Request, to: str | None, response: Response) -> Response:
        with self._lock:
            status = 0 if response.drop or response.reset else response.status
            self.requests.append((request.method, request.path, to, status))
        return response

    def _invalid(self, code: int, message: str) -> Response:
        if self.problem_details:
            payload = {
                "type": f"https://www.twilio.com/docs/api/errors/{code}",
                "title": message,
                "status": 400,
                "code": code,
                "detail": message,
            }
            return Response(400, json.dumps(payload).encode(), {"Content-Type": "application/problem+json"})
        return Response.json(400, _error_body(code, message, 400))

    def _validate(self, form: dict[str, str]) -> Response | None:
        to = form.get("To", "")
        if not to:
            return self._invalid(21604, "A 'To' phone number is required.")
        if not E164.match(to.removeprefix("whatsapp:")):
            return self._invalid(21211, "Invalid 'To' Phone Number")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._invalid(21603, "A 'From' phone number is required.")
        service = form.get("MessagingServiceSid")
        if service and not MESSAGING_SERVICE_SID.match(service):
            return self._invalid(21701, "The Messaging Service Sid is invalid.")
        content_sid = form.get("ContentSid")
        if not (form.get("Body") or form.get("MediaUrl") or content_sid):
            return self._invalid(21602, "Message body is required.")
        if form.get("ContentVariables") is not None:
            if not content_sid:
                return self._invalid(21654, "ContentSid Required")
            try:
                variables = json.loads(form["ContentVariables"])
            except ValueError:
                variables = None
            if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
                return self._invalid(21656, "The ContentVariables Parameter is invalid.")
        if content_sid and not CONTENT_SID.match(content_sid):
            return self._invalid(21655, "The ContentSid is Invalid.")
        if len(form.get("Body", "")) > 1600:
            return self._invalid(21617, "The concatenated message body exceeds the 1600 character limit.")
        callback = form.get("StatusCallback")
        if callback and ("_" in (urlsplit(callback).hostname or "_") or not callback.startswith("http")):
            return self._invalid(21609, "Invalid StatusCallback")
        if to.startswith("whatsapp:") and not content_sid and to[9:] not in self.whatsapp_sessions:
            # Since 2025-04-01 business-initiated WhatsApp needs a Content template.
            return Response.json(400, _error_body(63016, "Failed to send freeform message", 400))
        return None

    def _create(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        to = form.get("To")
        reply = self.scripts.next_for([to.removeprefix("whatsapp:")]) if to else None
        if reply is not None and reply.kind != "accept":
            return self._record(request, to, self._scripted(reply, form))
        invalid = self._validate(form)
        if invalid is not None:
            return self._record(request, to, invalid)
        response = Response.json(201, self._take(form))
        response.delay = reply.delay if reply is not None else 0.0
        return self._record(request, to, response)

    def _take(self, form: dict[str, str]) -> dict[str, Any]:
        """Store a new message and return its resource as created (queued/accepted, no DateSent)."""
        now = self.clock()
        service = form.get("MessagingServiceSid")
        body = form.get("Body", "")
        if form.get("ContentSid"):
            variables = json.loads(form.get("ContentVariables") or "{}")
            body = f"[{form['ContentSid']}] " + " | ".join(variables[k] for k in sorted(variables, key=int))
        segments = "0" if service else str(sms_segments(body).segments)
        message = TwilioMessage(
            "SM" + secrets.token_hex(16),
            self.account_sid,
            form["To"],
            form.get("From"),
            service,
            body,
            form,
            "accepted" if service else "queued",
            now,
            None,
            segments,
        )
        created = message.resource()
        if self.auto_send:
            message.status, message.date_sent = "sent", now
        with self._lock:
            self._messages[message.sid] = message
        return created

    def _scripted(self, reply: Reply, form: dict[str, str]) -> Response:
        if reply.kind == "drop":
            if reply.accepted:
                self._take(form)
            return Response(drop=True, delay=reply.delay)
        if reply.kind == "close":
            return Response(reset=True)
        if reply.kind == "problem":
            payload = {
                "type": f"https://www.twilio.com/docs/api/errors/{reply.code}",
                "title": reply.message,
                "status": reply.status,
                "code": reply.code,
                "detail": reply.body or reply.message,
            }
            headers = {"Content-Type": "application/problem+json"}
            return Response(reply.status, json.dumps(payload).encode(), headers, delay=reply.delay)
        if reply.kind == "raw":
            headers = {"Content-Type": "text/plain"} | dict(reply.headers)
            return Response(reply.status, (reply.body or "").encode(), headers, delay=reply.delay)
        code = reply.code if reply.code is not None else reply.status
        response = Response.json(reply.status, _error_body(code, reply.message, reply.status), reply.headers)
        response.delay = reply.delay
        return response

    def _list(self, request: Request) -> Response:
        query = dict(request.query)
        found = [m.resource() | {"_m": m} for m in self.messages]
        found.reverse()
        if "To" in query:
            found = [r for r in found if r["to"] == query["To"]]
        if "From" in query:
            found = [r for r in found if r["from"] == query["From"]]
        for name, keep in (
            ("DateSent", lambda sent, bound: sent == bound),
            ("DateSent>", lambda sent, bound: sent >= bound),
            ("DateSent<", lambda sent, bound: sent <= bound),
        ):
            if name in query:
                bound_text = query[name]
                found = [r for r in found if _date_matches(r["_m"].date_sent, bound_text, keep)]
        page_size = int(query.get("PageSize", 50))
        page = int(query.get("Page", 0))
        chunk = found[page * page_size : (page + 1) * page_size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        filters = {k: v for k, v in query.items() if k not in {"Page", "PageSize", "PageToken"}}

        def uri(number: int) -> str:
            params = filters | {"PageSize": str(page_size), "Page": str(number)}
            if number:
                params["PageToken"] = f"PA{number}"
            return f"{base}?{urlencode(params)}"

        more = (page + 1) * page_size < len(found)
        payload = {
            "messages": [{k: v for k, v in r.items() if k != "_m"} for r in chunk],
            "end": page * page_size + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if more else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1) if page else None,
            "start": page * page_size,
            "uri": uri(page),
        }
        return Response.json(200, payload)

    # --- status callbacks -----------------------------------------------------------------------------

    def callback_params(self, sid: str, status: str, error_code: int | None = None) -> dict[str, str]:
        """Return the form Twilio posts to a StatusCallback for a status change."""
        message = self.message(sid)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": message.to,
            "From": message.from_ or "+15005550006",
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    def send_status_callback(
        self,
        sid: str,
        status: str,
        error_code: int | None = None,
        *,
        url: str | None = None,
        post_to: str | None = None,
    ) -> httpx.Response:
        """POST a signed status callback: signed over `url` (default the message's StatusCallback)."""
        signed_url = url or self.message(sid).status_callback
        if not signed_url:
            raise ValueError("the message has no StatusCallback and no url was given")
        params = self.callback_params(sid, status, error_code)
        headers = {TWILIO_SIGNATURE_HEADER: twilio_signature(self.auth_token, signed_url, params)}
        return self.http.post(post_to or signed_url, data=params, headers=headers)

    def send_status_callbacks(
        self,
        statuses: Iterable[str] = ("sent", "delivered"),
        *,
        post_to: str | None = None,
        duplicate: bool = False,
        shuffle: bool = False,
        seed: int = 0,
    ) -> list[httpx.Response]:
        """POST signed callbacks for every message with a StatusCallback, duplicated or shuffled."""
        plan = [(m.sid, s) for m in self.messages if m.status_callback for s in statuses]
        if duplicate:
            plan = plan + plan
        if shuffle:
            random.Random(seed).shuffle(plan)
        return [self.send_status_callback(sid, status, post_to=post_to) for sid, status in plan]


def _date_matches(sent: datetime | None, bound: str, keep: Callable[[Any, Any], bool]) -> bool:
    if sent is None:
        return False
    if "T" in bound:
        moment = datetime.strptime(bound, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return bool(keep(sent, moment))
    return bool(keep(sent.date().isoformat(), bound))
