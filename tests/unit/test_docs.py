"""Documentation that is generated from code stays in step with it."""

from __future__ import annotations

from tasks.domain.contract import contract_tables_markdown
from tasks.sources.validation import Reason
from tests.support.factories import ROOT


def test_data_contract_doc_matches_the_contract_in_code() -> None:
    doc = (ROOT / "docs/data-contract.md").read_text()
    section = doc.split("<!-- contract:begin -->\n", 1)[1].split("<!-- contract:end -->", 1)[0]
    assert section == contract_tables_markdown()


def test_data_contract_doc_explains_every_quarantine_reason() -> None:
    doc = (ROOT / "docs/data-contract.md").read_text()
    missing = [r.value for r in Reason if f"`{r.value}`" not in doc]
    assert not missing


def test_channels_doc_shows_the_classification_table_in_code() -> None:
    from tasks.channels.errors import classification_markdown

    doc = (ROOT / "docs/channels.md").read_text()
    section = doc.split("<!-- classification:begin -->\n", 1)[1].split("<!-- classification:end -->", 1)[0]
    assert section == classification_markdown()
