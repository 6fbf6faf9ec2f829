"""Rendering in chunks stores and counts exactly what rendering every message at once does."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select

from tasks.sources.demo_data import generate_portfolio
from tasks.sources.raw import RawFrame
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tests.support.factories import markets
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 22)
RENDERED = ("message_key", "status", "locale", "subject", "body", "body_html", "encoding", "segments")


def _cycle(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    engine = make_engine(f"sqlite:///{path}")
    pipeline = Pipeline(engine, playbook_id="all")
    stats = pipeline.cycle(AS_OF, send=False)
    with engine.connect() as conn:
        rows = read_frame(conn, select(*(s.messages.c[c] for c in RENDERED), s.messages.c.template_variables))
    engine.dispose()
    return stats["render"], rows.sort_values("message_key").reset_index(drop=True)


def test_messages_rendered_in_small_chunks_match_those_rendered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    portfolio = generate_portfolio(400, 21, AS_OF, markets())
    raws = {e: RawFrame(e, e.value, f, pd.Series(range(2, len(f) + 2))) for e, f in portfolio.items()}
    whole, chunked = tmp_path / "whole.db", tmp_path / "chunked.db"
    engine = make_engine(f"sqlite:///{whole}")
    upgrade(engine)
    Pipeline(engine).load(raws)
    engine.dispose()
    shutil.copy(whole, chunked)

    at_once, at_once_rows = _cycle(whole)
    monkeypatch.setattr("tasks.render.RENDER_CHUNK", 7)
    in_chunks, in_chunks_rows = _cycle(chunked)

    assert at_once["rendered"] > 7 * 5 and set(at_once["by_channel"]) >= {"email", "sms"}
    assert in_chunks == at_once
    pd.testing.assert_frame_equal(in_chunks_rows, at_once_rows)
