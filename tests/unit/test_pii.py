"""Personal data is recognised, masked in logs, and refused as a flow parameter."""

from __future__ import annotations

import logging

import pytest

from config.logging import PiiMaskingFilter
from tasks.domain.pii import assert_no_pii, find_pii, mask_pii


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("anna.schmidt@example.com", ["email"]),
        ("+4915123456789", ["phone"]),
        ("0151 2345 6789", ["phone"]),
        ("(030) 123-45678", ["phone"]),
        ("DE89 3704 0044 0532 0130 00", ["iban"]),
        ("GB29NWBK60161331926819", ["iban"]),
        ("C0001234", []),
        ("renewal-standard:K0000123:20261222:T-30:email", []),
        ("2026-11-22 08:00:00", []),
        ("sent 12,436 messages in 3.62s", []),
    ],
)
def test_shapes_of_personal_data_are_recognised(text: str, kinds: list[str]) -> None:
    assert find_pii(text) == kinds


def test_masking_keeps_keys_dates_and_counts() -> None:
    text = "C0000007 anna@example.com +33 6 12 34 56 78 on 2026-11-22 12:00, 1,234 sent"
    assert mask_pii(text) == "C0000007 <email> <phone> on 2026-11-22 12:00, 1,234 sent"


def test_log_filter_masks_message_and_arguments() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "to %s via %s", ("a@b.example", "+4915123456789"), None
    )
    assert PiiMaskingFilter().filter(record)
    assert record.getMessage() == "to <email> via <phone>"


def test_case23_a_pii_shaped_flow_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="parameter 'markets' looks like personal data \\(email\\)"):
        assert_no_pii({"markets": ["anna@example.com"]})
    assert_no_pii({"markets": ["DE", "FR"], "as_of": "2026-11-22", "playbook": "renewal-standard"})
