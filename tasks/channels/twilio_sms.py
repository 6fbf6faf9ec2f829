"""SMS through Twilio Programmable Messaging (twilio-python), paced, retried only when it is safe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from requests.adapters import HTTPAdapter
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from tasks.channels.base import Outbound, SendInterrupted, SendResult, SendStatus
from tasks.channels.errors import TWILIO_CODES, Classified, ErrorClass, Rule, classify_twilio
from tasks.channels.ratelimit import ConcurrencyLimiter, Limiter, PermitUnavailable, fan_out
from tasks.channels.results import ChannelResult, PendingLookup, PendingMessage, failed, refusal
from tasks.channels.retry import RetryPolicy
from tasks.domain.messaging import sms_segments

log = logging.getLogger(__name__)

TWILIO_API = "https://api.twilio.com"
# A message Twilio still holds after this long is not sent (it fails); 36000 s = 10 h is Twilio's maximum.
DEFAULT_VALIDITY_PERIOD = 36000
DEFAULT_PRICE_PER_SEGMENT = Decimal("0.08")
# Reconcile looks this far before the claim time for the message (clock skew between us and Twilio).
RECONCILE_SKEW = timedelta(minutes=5)

# Twilio's SmartEncoded swaps these look-alikes for GSM-7 characters, so the stored body can differ from ours.
_SMART_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u2002": " ",
        "\u2003": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u200b": "",
        "\ufeff": "",
    }
)


def smart_encode(text: str) -> str:
    """Return `text` with the Unicode look-alikes SmartEncoded replaces swapped for their GSM-7 characters."""
    return text.translate(_SMART_FOLD)


def fold_body(text: str | None) -> str:
    """Return a body as Twilio stores it after SmartEncoded, with whitespace collapsed, for matching."""
    return " ".join(smart_encode(text or "").split())


class RebasedHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """twilio-python's HTTP client aimed at a configured base URL, with a finite timeout and no retries.

    A POST retried by the transport can create the same SMS twice (Messages create has no idempotency key);
    retries happen above, only for failures that prove nothing was created.
    """

    def __init__(self, base_url: str, timeout: float, pool_size: int) -> None:
        super().__init__(pool_connections=True, timeout=timeout, logger=log)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        base = urlsplit(base_url.rstrip("/"))
        self._scheme, self._netloc, self._prefix = base.scheme, base.netloc, base.path
        self.last_headers: dict[str, str] = {}

    def rebase(self, url: str) -> str:
        """Return `url` with a Twilio API host (any edge or region) replaced by the configured base URL."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not (host == "api.twilio.com" or (host.startswith("api.") and host.endswith(".twilio.com"))):
            return url
        return urlunsplit(
            (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
        )

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send the request to the configured base URL and keep the response headers (Retry-After)."""
        self.last_headers = {}
        response: Response = super().request(
            method, self.rebase(url), params, data, headers, auth, timeout, allow_redirects
        )
        self.last_headers = dict(response.headers or {})
        return response

    def log_request(self, kwargs: dict[str, Any]) -> None:
        """Log the method and path only: the SDK would log query params, which hold phone numbers."""
        log.debug("twilio %s %s", kwargs.get("method"), urlsplit(str(kwargs.get("url"))).path)

    def log_response(self, status_code: int, response: Any) -> None:
        """Log the status only: the SDK would log the body, which quotes the recipient and text."""
        log.debug("twilio response %s", status_code)


@dataclass(frozen=True)
class Prepared:
    """A message ready for Messages create: SDK keyword arguments, limiter units and estimates."""

    params: dict[str, Any]
    units: int
    segments: int | None
    cost: Decimal | None


class ReconcileAmbiguous(LookupError):
    """Several provider messages could be the one looked for; none can be confirmed."""


class TwilioMessagesSender:
    """The Twilio plumbing SMS and WhatsApp share: clients per thread, pacing, retries, results, reconcile."""

    provider = "twilio"
    channel = "sms"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str = TWILIO_API,
        messaging_service_sid: str | None = None,
        from_: str | None = None,
        status_callback_base: str | None = None,
        validity_period: int = DEFAULT_VALIDITY_PERIOD,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        timeout: float = 10.0,
        prices: Mapping[str, Decimal] | None = None,
        default_price: Decimal = DEFAULT_PRICE_PER_SEGMENT,
        currency: str = "USD",
        codes: Mapping[int, Rule] = TWILIO_CODES,
        pending_lookup: PendingLookup | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs an account SID and auth token")
        if not messaging_service_sid and not from_:
            raise ValueError("Twilio needs a Messaging Service SID or a From sender")
        if not 1 <= validity_period <= 36000:
            raise ValueError("validity_period must be 1..36000 seconds")
        if timeout <= 0 or concurrency < 1:
            raise ValueError("timeout and concurrency must be positive")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.messaging_service_sid = messaging_service_sid or None
        self.from_ = from_ or None
        self.status_callback_base = status_callback_base.rstrip("/") if status_callback_base else None
        self.validity_period = validity_period
        self.limiter: Limiter = limiter or ConcurrencyLimiter(concurrency)
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.timeout = timeout
        self.prices = dict(prices or {})
        self.default_price = default_price
        self.currency = currency
        self.codes = codes
        self.pending_lookup = pending_lookup
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._journal: dict[str, PendingMessage] = {}
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))

    # --- plumbing -------------------------------------------------------------------------------------

    def _client(self) -> tuple[Any, RebasedHttpClient]:
        """Return this thread's SDK client: a requests Session is not safe to share between threads."""
        client = getattr(self._local, "client", None)
        if client is None:
            http = RebasedHttpClient(self.base_url, self.timeout, pool_size=2)
            # A non-empty `environment` stops the SDK reading TWILIO_EDGE/TWILIO_REGION from the process
            # environment ({} is falsy, so the SDK would fall back to it).
            client = Client(
                self.account_sid,
                self._auth_token,
                http_client=http,
                environment={"TWILIO_ACCOUNT_SID": self.account_sid},
            )
            self._local.client, self._local.http = client, http
        return client, self._local.http

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"twilio-{self.channel}")
            return self._pool

    def close(self) -> None:
        """Stop the worker threads (their HTTP sessions go with them)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> TwilioMessagesSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status_callback(self, message_key: str) -> str | None:
        """Return the StatusCallback URL that tells the webhook which message a callback is about."""
        if self.status_callback_base is None:
            return None
        return f"{self.status_callback_base}/twilio/status?key={quote(message_key, safe='')}"

    def price(self, to: str, units: int) -> Decimal:
        """Return the estimated price of `units` segments to `to` (longest E.164 prefix match)."""
        number = to.removeprefix("whatsapp:")
        for length in range(min(len(number), 8), 0, -1):
            per = self.prices.get(number[:length])
            if per is not None:
                return per * units
        return self.default_price * units

    def address(self, to: str) -> str:
        """Return the To address for this channel."""
        return to

    def _sender_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"validity_period": self.validity_period}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        if self.from_:
            params["from_"] = self.from_
        return params

    def prepare(self, msg: Outbound) -> Prepared | ChannelResult:
        """Return the create arguments of a message, or the result of a message refused before any call."""
        raise NotImplementedError

    # --- send -----------------------------------------------------------------------------------------

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Send every message concurrently; return one result per message, in batch order."""
        if not batch:
            return []
        halted: list[Classified] = []
        stopped: list[PermitUnavailable] = []
        results = fan_out(
            self._executor(), self.concurrency, batch, lambda m: self._send_guarded(m, halted, stopped)
        )
        if stopped:
            raise SendInterrupted([r for r in results if r is not None], stopped[0])
        return [r for r in results if r is not None]

    def _send_guarded(
        self, msg: Outbound, halted: list[Classified], stopped: list[PermitUnavailable]
    ) -> ChannelResult | None:
        """Return the message's result, or None when it never started because no permit could be had."""
        if stopped:
            return None
        try:
            return self._send_one(msg, halted)
        except PermitUnavailable as exc:
            stopped.append(exc)
            return None
        except Exception as exc:
            # A bug after the request may have left: treat the message as possibly sent, never as failed.
            # No traceback: SDK exception texts quote the recipient's number.
            log.error("twilio %s send crashed (%s)", self.channel, type(exc).__name__)
            failure = Classified(
                ErrorClass.AMBIGUOUS, "INTERNAL", detail=f"sender error {type(exc).__name__}"
            )
            self._remember(msg)
            return failed(msg.message_key, self.provider, failure, attempts=1)

    def _send_one(self, msg: Outbound, halted: list[Classified]) -> ChannelResult:
        prepared = self.prepare(msg)
        if isinstance(prepared, ChannelResult):
            return prepared
        client, http = self._client()

        def call(attempt: int) -> Any:
            del attempt
            with self.limiter.acquire(prepared.units):
                return client.messages.create(**prepared.params)

        outcome = self.retry.run(
            call,
            lambda exc: classify_twilio(exc, http.last_headers, self.codes),
            lambda: halted[0] if halted else None,
        )
        if outcome.error is not None:
            if outcome.error.halt and not halted:
                halted.append(outcome.error)
            if outcome.error.error_class is ErrorClass.AMBIGUOUS:
                self._remember(msg)
            return failed(msg.message_key, self.provider, outcome.error, outcome.attempts, prepared.segments)
        instance = outcome.value
        segments = prepared.segments
        reported = _int(getattr(instance, "num_segments", None))
        # With a Messaging Service, create reports num_segments 0; keep the local count then.
        if segments is not None and reported:
            segments = reported
        return ChannelResult(
            message_key=msg.message_key,
            status=SendStatus.SENT,
            provider=self.provider,
            provider_message_id=str(getattr(instance, "sid", "")) or None,
            segments=segments,
            cost=None if prepared.cost is None else self.price(msg.to, segments or 1),
            currency=self.currency if prepared.cost is not None else None,
            attempts=outcome.attempts,
        )

    def _remember(self, msg: Outbound) -> None:
        self._journal[msg.message_key] = PendingMessage(msg.message_key, msg.to, msg.body, self.clock())

    # --- reconcile ------------------------------------------------------------------------------------

    def reconcile(self, message_keys: Sequence[str]) -> dict[str, SendResult]:
        """Look up at Twilio messages whose outcome was lost; SENT with the SID when found.

        The Sender protocol passes keys only, so the address and body come from this process's journal of
        in-doubt sends or, after a crash, from `pending_lookup` (the store). A key that cannot be looked up
        comes back IN_DOUBT so that it is not sent again blindly.
        """
        pending = {k: self._journal[k] for k in message_keys if k in self._journal}
        rest = [k for k in message_keys if k not in pending]
        if rest and self.pending_lookup is not None:
            pending.update(self.pending_lookup(rest))
        found: dict[str, SendResult] = {}
        taken: set[str] = set()
        for key, item in pending.items():
            try:
                sid = self._find(item, taken)
            except ReconcileAmbiguous:
                found[key] = ChannelResult(
                    key,
                    SendStatus.IN_DOUBT,
                    self.provider,
                    error_code="RECONCILE_AMBIGUOUS",
                    error_detail="several provider messages could match",
                    error_class=ErrorClass.AMBIGUOUS,
                )
                continue
            except Exception as exc:
                failure = classify_twilio(exc)
                found[key] = ChannelResult(
                    key,
                    SendStatus.IN_DOUBT,
                    self.provider,
                    error_code=f"RECONCILE_{failure.code}",
                    error_detail=f"lookup failed: {failure.detail}",
                    error_class=ErrorClass.AMBIGUOUS,
                )
                continue
            if sid is not None:
                taken.add(sid)
                self._journal.pop(key, None)
                found[key] = ChannelResult(key, SendStatus.SENT, self.provider, sid)
        return found

    def _find(self, item: PendingMessage, taken: set[str]) -> str | None:
        client, _ = self._client()
        to = self.address(item.to)
        since = item.claimed_at.astimezone(UTC) - RECONCILE_SKEW
        sent = client.messages.list(to=to, date_sent_after=since.date().isoformat(), page_size=50, limit=200)
        sid = self.match(sent, item, since, taken)
        if sid is None:
            # A queued or scheduled message has no DateSent yet and the filter misses it: scan the newest.
            recent = client.messages.list(to=to, page_size=50, limit=100)
            sid = self.match(recent, item, since, taken)
        return sid

    def match(
        self, messages: Sequence[Any], item: PendingMessage, since: datetime, taken: set[str]
    ) -> str | None:
        """Return the SID of the outbound message among `messages` that is `item` (same body, not older)."""
        body = fold_body(item.body)
        candidates = [
            m
            for m in messages
            if str(getattr(m, "direction", "")).startswith("outbound")
            and str(m.sid) not in taken
            and (m.date_created is None or m.date_created >= since)
            and fold_body(m.body) == body
        ]
        candidates.sort(key=lambda m: m.date_created or since)
        return str(candidates[0].sid) if candidates else None


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


class TwilioSmsSender(TwilioMessagesSender):
    """Sends SMS reminders: GSM-7/UCS-2 segments counted and capped, priced, paced in segments per second."""

    channel = "sms"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        segment_ceiling: int = 3,
        count_segments: bool = True,
        smart_encoded: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(account_sid, auth_token, **options)
        if segment_ceiling < 1:
            raise ValueError("segment_ceiling must be at least 1")
        rate = getattr(self.limiter, "rate", None)
        if count_segments and rate is not None and segment_ceiling > rate:
            raise ValueError("segment_ceiling exceeds the limiter's rate: such a message could never start")
        self.segment_ceiling = segment_ceiling
        self.count_segments = count_segments
        self.smart_encoded = smart_encoded

    def prepare(self, msg: Outbound) -> Prepared | ChannelResult:
        """Return the create arguments of an SMS, or FAILED when it is empty or above the segment ceiling."""
        body = msg.body.strip()
        if not body:
            return failed(msg.message_key, self.provider, refusal("EMPTY_BODY", "empty SMS body"), 0)
        # Twilio bills the smart-encoded text: one curly quote would otherwise make the whole SMS UCS-2.
        segments = sms_segments(smart_encode(body) if self.smart_encoded else body).segments
        if segments > self.segment_ceiling:
            detail = f"{segments} segments, ceiling {self.segment_ceiling}"
            return failed(msg.message_key, self.provider, refusal("SEGMENT_CEILING", detail), 0, segments)
        params = self._sender_params() | {"to": self.address(msg.to), "body": body}
        if self.smart_encoded:
            params["smart_encoded"] = True
        callback = self.status_callback(msg.message_key)
        if callback:
            params["status_callback"] = callback
        units = segments if self.count_segments else 1
        return Prepared(params, units, segments, self.price(msg.to, segments))
