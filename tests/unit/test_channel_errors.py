"""Every row of the Twilio and SendGrid classification table, for every exception type that carries it."""

from __future__ import annotations

import http.client
import socket
import urllib.error
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import requests
from python_http_client.exceptions import HTTPError, err_dict
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from tasks.channels.errors import (
    SENDGRID_STATUSES,
    TWILIO_CODES,
    TWILIO_STATUSES,
    Classified,
    ErrorClass,
    classify_sendgrid,
    classify_twilio,
    classify_twilio_code,
    retry_hint,
)

P, T, A = ErrorClass.PERMANENT, ErrorClass.TRANSIENT, ErrorClass.AMBIGUOUS
URI = "/Accounts/AC1/Messages.json"

# (code, class, fallback, opt_out): the table as the business reads it.
TWILIO_CODE_ROWS = [
    (21211, P, True, False),
    (21408, P, True, False),
    (21610, P, False, True),
    (21611, T, False, False),
    (21612, P, True, False),
    (21614, P, True, False),
    (20003, P, False, False),
    (20429, T, False, False),
    (30001, T, False, False),
    (30003, T, False, False),
    (30004, P, True, False),
    (30005, P, True, False),
    (30006, P, True, False),
    (30007, P, True, False),
    (30008, T, False, False),
    (63016, P, True, False),
    (63018, T, False, False),
    (63024, P, True, False),
    (63049, P, True, False),
]
TWILIO_STATUS_ROWS = [
    (400, P),
    (401, P),
    (403, P),
    (404, P),
    (405, P),
    (413, P),
    (422, P),
    (429, T),
    (500, A),
    (502, A),
    (503, T),
    (504, A),
    (599, A),
    (418, P),
]
SENDGRID_STATUS_ROWS = [
    (400, P),
    (401, P),
    (403, P),
    (404, P),
    (405, P),
    (413, P),
    (415, P),
    (429, T),
    (500, A),
    (502, A),
    (503, T),
    (504, A),
    (507, A),
]


def rest(status: int, code: int | None, msg: str = "Unable to create record") -> TwilioRestException:
    return TwilioRestException(status, URI, msg, code, "POST")


def service(status: int, code: int, detail: str = "") -> TwilioServiceException:
    return TwilioServiceException(
        "https://www.twilio.com/docs/errors", "Problem", status, code, detail or None
    )


def sendgrid(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> HTTPError:
    return err_dict.get(status, HTTPError)(status, "reason", body, headers or {})


def test_the_code_table_covers_every_row_listed() -> None:
    assert {row[0] for row in TWILIO_CODE_ROWS} == set(TWILIO_CODES)
    assert {row[0] for row in TWILIO_STATUS_ROWS} - {599, 418} == set(TWILIO_STATUSES)
    assert {row[0] for row in SENDGRID_STATUS_ROWS} - {507} == set(SENDGRID_STATUSES)


@pytest.mark.parametrize(("code", "error_class", "fallback", "opt_out"), TWILIO_CODE_ROWS)
@pytest.mark.parametrize("make", [rest, service], ids=["TwilioRestException", "TwilioServiceException"])
def test_twilio_codes_classify_the_same_for_both_exception_types(
    make: object, code: int, error_class: ErrorClass, fallback: bool, opt_out: bool
) -> None:
    status = 429 if code == 20429 else 401 if code == 20003 else 400
    got = classify_twilio(make(status, code))  # type: ignore[operator]
    assert (got.error_class, got.code, got.fallback, got.opt_out) == (
        error_class,
        str(code),
        fallback,
        opt_out,
    )
    assert got.status == status


@pytest.mark.parametrize(("code", "error_class", "fallback", "opt_out"), TWILIO_CODE_ROWS)
def test_status_callback_error_codes_use_the_same_table(
    code: int, error_class: ErrorClass, fallback: bool, opt_out: bool
) -> None:
    got = classify_twilio_code(str(code))
    assert (got.error_class, got.fallback, got.opt_out) == (error_class, fallback, opt_out)


@pytest.mark.parametrize(("status", "error_class"), TWILIO_STATUS_ROWS)
@pytest.mark.parametrize("make", [rest, service], ids=["TwilioRestException", "TwilioServiceException"])
def test_twilio_http_statuses_classify_unknown_codes(
    make: object, status: int, error_class: ErrorClass
) -> None:
    got = classify_twilio(make(status, 99999))  # type: ignore[operator]
    assert got.error_class is error_class
    assert got.code == "99999"


@pytest.mark.parametrize(("status", "error_class"), TWILIO_STATUS_ROWS)
def test_twilio_text_bodies_carry_the_http_status_as_code(status: int, error_class: ErrorClass) -> None:
    # The SDK sets code = HTTP status when the body is not JSON (e.g. a text 429 or a proxy's 502).
    got = classify_twilio(rest(status, status))
    assert (got.error_class, got.code) == (error_class, str(status))


@pytest.mark.parametrize("status", [401, 403, 404])
def test_account_level_twilio_errors_halt_the_batch(status: int) -> None:
    assert classify_twilio(rest(status, 99999)).halt
    assert not classify_twilio(rest(400, 21211)).halt


def test_a_bare_twilio_exception_from_paging_uses_its_response_status() -> None:
    class Resp:
        status_code = 503

    assert classify_twilio(TwilioException("Unable to fetch page", Resp())).error_class is T
    assert classify_twilio(TwilioException("boom")).error_class is A


def test_twilio_detail_never_repeats_the_provider_message() -> None:
    got = classify_twilio(rest(400, 21211, "The 'To' number +4915112345678 is not a valid phone number."))
    assert "+49" not in got.detail and got.detail == "invalid To number"
    problem = classify_twilio(service(400, 21211, "To +4915112345678 invalid"))
    assert "+49" not in problem.detail


@pytest.mark.parametrize(("status", "error_class"), SENDGRID_STATUS_ROWS)
def test_sendgrid_statuses(status: int, error_class: ErrorClass) -> None:
    got = classify_sendgrid(sendgrid(status))
    assert (got.error_class, got.code, got.status) == (error_class, str(status), status)


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_account_level_sendgrid_errors_halt_the_batch(status: int) -> None:
    assert classify_sendgrid(sendgrid(status)).halt
    assert not classify_sendgrid(sendgrid(400)).halt


def test_sendgrid_detail_keeps_field_paths_but_no_addresses() -> None:
    body = (
        b'{"errors":[{"message":"a@b.example is invalid","field":"personalizations.3.to.0.email",'
        b'"help":null},'
        b'{"message":"x","field":"x@y.example","help":null}]}'
    )
    got = classify_sendgrid(sendgrid(400, body))
    assert got.detail == "bad request (personalizations.3.to.0.email)"


def test_sendgrid_rate_limit_reset_becomes_an_absolute_retry_time() -> None:
    got = classify_sendgrid(
        sendgrid(429, headers={"X-RateLimit-Reset": "1900000000", "X-RateLimit-Limit": "600"})
    )
    assert (got.error_class, got.retry_at, got.retry_after) == (T, 1900000000.0, None)


def test_retry_after_seconds_and_http_date_are_both_read() -> None:
    moment = datetime(2026, 11, 22, 8, 0, 30, tzinfo=UTC)
    assert retry_hint({"Retry-After": "7"}) == (7.0, None)
    assert retry_hint({"retry-after": format_datetime(moment, usegmt=True)}) == (None, moment.timestamp())
    assert retry_hint({"Retry-After": "soon"}) == (None, None)
    assert classify_twilio(rest(429, 20429), {"Retry-After": "2"}).retry_after == 2.0


def _refused() -> requests.exceptions.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


def _dropped() -> requests.exceptions.ConnectionError:
    cause = http.client.RemoteDisconnected("Remote end closed connection without response")
    return requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", cause))


@pytest.mark.parametrize(
    ("exc", "error_class", "code"),
    [
        (_refused(), T, "NETWORK_CONNECT"),
        (requests.exceptions.ConnectTimeout(), T, "NETWORK_CONNECT"),
        (requests.exceptions.SSLError(), T, "NETWORK_CONNECT"),
        (requests.exceptions.ReadTimeout(), A, "NETWORK_TIMEOUT"),
        (_dropped(), A, "NETWORK_DROPPED"),
        (requests.exceptions.ChunkedEncodingError(), A, "NETWORK_DROPPED"),
        (ValueError("bug"), A, "UNEXPECTED"),
    ],
    ids=["refused", "connect-timeout", "tls-handshake", "read-timeout", "dropped", "chunked", "unknown"],
)
def test_twilio_network_failures(exc: BaseException, error_class: ErrorClass, code: str) -> None:
    got = classify_twilio(exc)
    assert (got.error_class, got.code) == (error_class, code)


@pytest.mark.parametrize(
    ("exc", "error_class", "code"),
    [
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), T, "NETWORK_CONNECT"),
        (urllib.error.URLError(TimeoutError("timed out")), T, "NETWORK_CONNECT"),
        (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), T, "NETWORK_CONNECT"),
        (TimeoutError("timed out"), A, "NETWORK_TIMEOUT"),
        (TimeoutError("timed out"), A, "NETWORK_TIMEOUT"),
        (http.client.RemoteDisconnected("closed"), A, "NETWORK_DROPPED"),
        (ConnectionResetError(104, "reset"), A, "NETWORK_DROPPED"),
        (http.client.IncompleteRead(b""), A, "NETWORK_DROPPED"),
        (KeyError("bug"), A, "UNEXPECTED"),
    ],
    ids=[
        "refused",
        "connect-timeout",
        "dns",
        "read-timeout",
        "socket-timeout",
        "dropped",
        "reset-after-send",
        "incomplete",
        "unknown",
    ],
)
def test_sendgrid_network_failures(exc: BaseException, error_class: ErrorClass, code: str) -> None:
    # urllib wraps failures while connecting/sending in URLError; failures while reading the answer are raw.
    got = classify_sendgrid(exc)
    assert (got.error_class, got.code) == (error_class, code)


def test_classified_is_a_value() -> None:
    assert classify_twilio(rest(400, 21610)) == Classified(
        P, "21610", fallback=False, opt_out=True, detail="recipient opted out (STOP)", status=400
    )
