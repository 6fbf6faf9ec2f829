"""Regenerate the generated sections of docs/ (run `make docs`)."""

from __future__ import annotations

from tasks.domain.contract import contract_tables_markdown
from tests.support.factories import ROOT

BEGIN, END = "<!-- contract:begin -->\n", "<!-- contract:end -->"


def regenerate_data_contract() -> None:
    """Rewrite the column tables of docs/data-contract.md from the contract in code."""
    path = ROOT / "docs/data-contract.md"
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + contract_tables_markdown() + END + tail)


def regenerate_channels() -> None:
    """Rewrite the classification tables of docs/channels.md from the table in code."""
    from tasks.channels.errors import classification_markdown

    path = ROOT / "docs/channels.md"
    head, rest = path.read_text().split("<!-- classification:begin -->\n", 1)
    _, tail = rest.split("<!-- classification:end -->", 1)
    path.write_text(
        head
        + "<!-- classification:begin -->\n"
        + classification_markdown()
        + "<!-- classification:end -->"
        + tail
    )


if __name__ == "__main__":
    regenerate_data_contract()
    regenerate_channels()
