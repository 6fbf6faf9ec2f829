"""The store's PostgreSQL sessions: no JIT compiling, and large text compressed with LZ4."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, text

from tasks.store import schema as s
from tests.support.factories import message_row

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_the_store_talks_to_postgres_without_jit(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW jit")).scalar() == "off"
        conn.rollback()
        assert conn.execute(text("SHOW jit")).scalar() == "off"


def test_a_rendered_html_body_is_stored_compressed_with_lz4_where_the_server_has_it(
    pg_engine: Engine,
) -> None:
    html = "<p>Ihre Verlängerung steht an.</p>\n" * 400
    with pg_engine.begin() as conn:
        choices = "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
        expected = "lz4" if "lz4" in conn.execute(text(choices)).scalar_one() else "pglz"
        conn.execute(insert(s.messages), [message_row(0, "C000000", NOW, channel="email", body_html=html)])
    with pg_engine.connect() as conn:
        stored = conn.execute(text("SELECT pg_column_compression(body_html), body_html FROM messages")).one()
    assert tuple(stored) == (expected, html)
