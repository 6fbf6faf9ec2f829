"""Playbook and configuration validation: a typo is a clear error naming the file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from config.loader import ConfigError, load_markets, load_playbook, load_playbooks, load_segmentation
from tests.support.factories import ROOT

GOOD = """\
id: book
name: A playbook
version: 1
steps:
  - id: T-30
    offset_days: -30
    channels: [email]
    template: renewal_notice
"""


def _write(tmp_path: Path, text: str, name: str = "book") -> Path:
    folder = tmp_path / "playbooks"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return tmp_path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_playbook(_write(tmp_path, text), "book")
    return str(err.value)


def test_every_shipped_config_file_is_valid() -> None:
    assert load_playbooks(ROOT / "config")
    assert set(load_markets(ROOT / "config")) >= {"DE", "FR", "ES", "GB", "SG", "ID", "VN"}
    assert load_segmentation(ROOT / "config").renewal_due_days == 90


def test_valid_playbook_loads(tmp_path: Path) -> None:
    assert load_playbook(_write(tmp_path, GOOD), "book").steps[0].id == "T-30"


def test_misspelt_field_names_line_and_suggests_the_right_one(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace("channels:", "chanels:"))
    assert "book.yaml" in message
    assert "line 7, steps[0].chanels: unknown field 'chanels' (did you mean 'channels'?)" in message


def test_misspelt_top_level_field(tmp_path: Path) -> None:
    assert "did you mean 'holdout_share'?" in _error(tmp_path, GOOD + "holdout_shar: 0.1\n")


def test_unknown_channel_is_rejected_with_the_allowed_values(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace("[email]", "[fax]"))
    assert "steps[0].channels[0]" in message
    assert "'email', 'sms' or 'whatsapp'" in message


def test_missing_required_field(tmp_path: Path) -> None:
    assert "steps[0].template: required field is missing" in _error(
        tmp_path, GOOD.replace("    template: renewal_notice\n", "")
    )


def test_wrong_type(tmp_path: Path) -> None:
    assert "steps[0].offset_days" in _error(tmp_path, GOOD.replace("-30", "thirty"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("holdout_share", "1.5"), "holdout_share must be in [0, 1)"),
        (("catch_up_days", "0"), "catch_up_days must be at least 1"),
    ],
)
def test_out_of_range_values(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert expected in _error(tmp_path, GOOD + f"{change[0]}: {change[1]}\n")


def test_duplicate_step_ids_are_rejected(tmp_path: Path) -> None:
    text = GOOD + "  - id: T-30\n    offset_days: -14\n    channels: [sms]\n    template: renewal_reminder\n"
    assert "step ids must be unique; repeated: ['T-30']" in _error(tmp_path, text)


def test_two_steps_on_one_offset_are_rejected(tmp_path: Path) -> None:
    text = GOOD + "  - id: T-30b\n    offset_days: -30\n    channels: [sms]\n    template: renewal_reminder\n"
    assert "two steps share an offset" in _error(tmp_path, text)


def test_offer_outside_zero_and_one_is_rejected(tmp_path: Path) -> None:
    text = GOOD + "    offer: {discount: 10}\n"
    assert "discount is a fraction between 0 and 1" in _error(tmp_path, text)


def test_channel_listed_twice_is_rejected(tmp_path: Path) -> None:
    assert "lists a channel twice" in _error(tmp_path, GOOD.replace("[email]", "[email, email]"))


def test_file_name_must_match_id(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("id: book", "id: other"))
    with pytest.raises(ConfigError, match="does not match the file name"):
        load_playbook(tmp_path, "book")


def test_unknown_playbook_lists_the_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="no playbook 'nope'; known: book"):
        load_playbook(tmp_path, "nope")


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    assert "not valid YAML" in _error(tmp_path, "id: [unclosed\n")


def test_bad_market_file_is_named(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config" / "markets", tmp_path / "markets")
    (tmp_path / "markets" / "DE.yaml").write_text(
        (ROOT / "config/markets/DE.yaml").read_text().replace("EUR", "EURO")
    )
    with pytest.raises(ConfigError, match=r"DE\.yaml.*currency must be an ISO 4217 code"):
        load_markets(tmp_path)
