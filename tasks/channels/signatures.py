"""Verify (and, for fakes and tests, produce) Twilio and SendGrid webhook signatures."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator, get_signature_algorithm

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
TWILIO_SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

FormParams = Mapping[str, str] | Iterable[tuple[str, str]]


class _MultiParams:
    """Repeated form keys the way RequestValidator reads a Flask MultiDict (getall)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._pairs))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self._pairs if k == name]


def _params(params: FormParams) -> object:
    if isinstance(params, Mapping):
        return {str(k): str(v) for k, v in params.items()}
    return _MultiParams((str(k), str(v)) for k, v in params)


def public_url(public_base_url: str, path: str, query: str = "") -> str:
    """Rebuild the URL Twilio called from the public base URL (behind a proxy) and the request path and query.

    The public base may carry a path prefix the proxy strips (https://hooks.example.com/renewals); the
    request path is appended to it.
    """
    base = urlsplit(public_base_url)
    prefix = base.path.rstrip("/")
    return urlunsplit((base.scheme, base.netloc, prefix + "/" + path.lstrip("/"), query, ""))


def verify_twilio(
    auth_token: str, url: str, params: FormParams, signature: str | None, settings_header: str | None = None
) -> bool:
    """Return whether X-Twilio-Signature matches the full public `url` and the POST params; never raise."""
    if not signature or not auth_token:
        return False
    try:
        algorithm = get_signature_algorithm(settings_header)
        return bool(RequestValidator(auth_token).validate(url, _params(params), signature, algorithm))
    except Exception:
        # Whatever a forged or garbled request makes the validator trip over, it is not a valid signature.
        return False


class TwilioWebhookVerifier:
    """Verifies Twilio webhooks against the public URL Twilio called, not the URL the proxy forwarded to."""

    def __init__(self, auth_token: str, public_base_url: str) -> None:
        self.auth_token = auth_token
        self.public_base_url = public_base_url

    def verify(
        self,
        path: str,
        query: str,
        params: FormParams,
        signature: str | None,
        settings_header: str | None = None,
    ) -> bool:
        """Return whether a request to `path?query` with form `params` carries a valid signature."""
        url = public_url(self.public_base_url, path, query)
        return verify_twilio(self.auth_token, url, params, signature, settings_header)


def twilio_signature(auth_token: str, url: str, params: FormParams) -> str:
    """Return the X-Twilio-Signature Twilio would send for a POST of `params` to `url`."""
    return str(RequestValidator(auth_token).compute_signature(url, _params(params)))


class SendGridWebhookVerifier:
    """Verifies SendGrid Event Webhook batches (ECDSA P-256 over timestamp + raw body) and their age."""

    def __init__(
        self, public_key: str, max_age: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_age = max_age
        self._clock = clock
        self._verifier: EventWebhook | None = None
        if public_key:
            try:
                self._verifier = EventWebhook(public_key)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                self._verifier = None

    def verify(self, raw_body: bytes | str, signature: str | None, timestamp: str | None) -> bool:
        """Return whether the batch is signed by the configured key and fresh; never raise."""
        if self._verifier is None or not signature or not timestamp:
            return False
        try:
            # A replayed batch keeps its old timestamp; outside the window (past or future) it fails.
            if abs(self._clock() - int(timestamp)) > self.max_age:
                return False
            payload = raw_body.decode("utf-8") if isinstance(raw_body, bytes) else raw_body
            base64.b64decode(signature, validate=True)
            return bool(self._verifier.verify_signature(payload, signature, timestamp))
        except (ValueError, TypeError, binascii.Error, InvalidSignature):
            return False


def verify_sendgrid(
    public_key: str,
    raw_body: bytes | str,
    signature: str | None,
    timestamp: str | None,
    max_age: float = 300.0,
    now: float | None = None,
) -> bool:
    """Return whether a SendGrid Event Webhook batch is validly signed and at most `max_age` seconds old."""
    clock = (lambda: now) if now is not None else time.time
    return SendGridWebhookVerifier(public_key, max_age, clock).verify(raw_body, signature, timestamp)


def sendgrid_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """Return a new P-256 private key and its public key as SendGrid shows it (base64 DER)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, base64.b64encode(der).decode("ascii")


def sendgrid_sign(private_key: ec.EllipticCurvePrivateKey, payload: bytes | str, timestamp: str | int) -> str:
    """Return the X-Twilio-Email-Event-Webhook-Signature SendGrid would send for `payload` at `timestamp`."""
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    signed = str(timestamp).encode("utf-8") + body
    return base64.b64encode(private_key.sign(signed, ec.ECDSA(hashes.SHA256()))).decode("ascii")
