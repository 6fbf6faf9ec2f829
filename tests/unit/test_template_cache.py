"""Compiled templates are reused across renderers, and an edited template is compiled again."""

from __future__ import annotations

from pathlib import Path

from tasks.channels.rendering import Renderer


def _write(root: Path, text: str) -> None:
    folder = root / "sms" / "reminder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "en.txt.j2").write_text(text, encoding="utf-8")


def test_a_second_renderer_renders_the_same_text_from_the_compiled_cache(tmp_path: Path) -> None:
    _write(tmp_path, "Hello {{ first_name }}, renew {{ contract_ref }}.")
    first = Renderer(tmp_path).render("sms", "reminder", "en", {"first_name": "Ana", "contract_ref": "K1"})
    again = Renderer(tmp_path).render("sms", "reminder", "en", {"first_name": "Ana", "contract_ref": "K1"})
    assert again == first
    assert first.body == "Hello Ana, renew K1."


def test_an_edited_template_is_not_served_from_the_cache(tmp_path: Path) -> None:
    _write(tmp_path, "Hello {{ first_name }}.")
    Renderer(tmp_path).render("sms", "reminder", "en", {"first_name": "Ana"})
    _write(tmp_path, "Hi {{ first_name }}!")
    assert Renderer(tmp_path).render("sms", "reminder", "en", {"first_name": "Ana"}).body == "Hi Ana!"
