"""Rendering in chunks stores and counts exactly what rendering every message at once does."""

from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError

from tasks.domain.contract import Entity
from tasks.sources.demo_data import generate_portfolio
from tasks.sources.raw import RawFrame
from tasks.store import schema as s
from tasks.store.bulk import read_frame
from tasks.store.engine import make_engine
from tasks.store.migrate import upgrade
from tasks.store.repository import set_status
from tests.support.factories import markets
from tests.support.pipeline import Pipeline

AS_OF = date(2026, 11, 22)
RENDERED = ("message_key", "status", "locale", "subject", "body", "body_html", "encoding", "segments")


def _portfolio() -> dict[Entity, RawFrame]:
    portfolio = generate_portfolio(400, 21, AS_OF, markets())
    return {e: RawFrame(e, e.value, f, pd.Series(range(2, len(f) + 2))) for e, f in portfolio.items()}


def _loaded(url: str) -> str:
    engine = make_engine(url)
    upgrade(engine)
    Pipeline(engine).load(_portfolio())
    engine.dispose()
    return url


def _messages(url: str) -> pd.DataFrame:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = read_frame(conn, select(*(s.messages.c[c] for c in RENDERED), s.messages.c.template_variables))
    engine.dispose()
    # Where no message has WhatsApp variables, PostgreSQL's COPY reads the column as NaN, SQLite as None.
    rows["template_variables"] = (
        rows["template_variables"].astype("object").where(rows["template_variables"].notna(), None)
    )
    return rows.sort_values("message_key").reset_index(drop=True)


def _cycle(url: str) -> tuple[dict[str, Any], pd.DataFrame]:
    engine = make_engine(url)
    stats = Pipeline(engine, playbook_id="all").cycle(AS_OF, send=False)
    engine.dispose()
    return stats["render"], _messages(url)


def test_messages_rendered_in_small_chunks_match_those_rendered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, chunked = tmp_path / "whole.db", tmp_path / "chunked.db"
    _loaded(f"sqlite:///{whole}")
    shutil.copy(whole, chunked)

    at_once, at_once_rows = _cycle(f"sqlite:///{whole}")
    monkeypatch.setattr("tasks.render.RENDER_CHUNK", 7)
    in_chunks, in_chunks_rows = _cycle(f"sqlite:///{chunked}")

    assert at_once["rendered"] > 7 * 5 and set(at_once["by_channel"]) >= {"email", "sms"}
    assert in_chunks == at_once
    pd.testing.assert_frame_equal(in_chunks_rows, at_once_rows)


def test_postgresql_stores_each_chunk_beside_the_next_ones_rendering_as_sqlite_stores_them_at_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_once, at_once_rows = _cycle(_loaded(f"sqlite:///{tmp_path / 'whole.db'}"))
    monkeypatch.setattr("tasks.render.RENDER_CHUNK", 7)
    in_chunks, in_chunks_rows = _cycle(_loaded(pg_url))

    assert at_once["rendered"] > 7 * 5
    assert in_chunks == at_once
    pd.testing.assert_frame_equal(in_chunks_rows, at_once_rows)


def test_a_chunk_that_cannot_be_stored_fails_the_render_and_keeps_no_rendered_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _loaded(f"sqlite:///{tmp_path / 'store.db'}")
    calls: list[int] = []

    def third_store_fails(conn: Connection, frame: pd.DataFrame, now: datetime) -> int:
        calls.append(len(frame))
        if len(calls) == 3:
            raise OperationalError("UPDATE messages", {}, Exception("disk I/O error"))
        return set_status(conn, frame, now)

    monkeypatch.setattr("tasks.render.RENDER_CHUNK", 7)
    monkeypatch.setattr("tasks.render.set_status", third_store_fails)
    with pytest.raises(OperationalError, match="disk I/O error"):
        _cycle(url)

    assert len(calls) == 3
    rows = _messages(url)
    assert len(rows) > 7 * 5
    assert (rows["status"] == "queued").sum() > 7 * 2
    assert not rows["status"].isin(["rendered", "render_failed"]).any()
    assert rows["body"].isna().all()
