"""Engines for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event

from tasks.store.sharding import SQLITE_FUNCTION, sqlite_shard_of


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Return an engine: SQLite with WAL, pragmas and a busy timeout; PostgreSQL without JIT, with LZ4."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            dbapi_conn.create_function(SQLITE_FUNCTION, 2, sqlite_shard_of, deterministic=True)

        return engine
    engine = create_engine(url, pool_pre_ping=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _session(dbapi_conn: Any, _record: Any) -> None:
        # Outside a transaction, so the settings outlive the first rollback; session settings, so
        # an `options` the URL carries keeps its own.
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        # No JIT: the store's statements are key lookups and bulk copies, where PostgreSQL compiled
        # some (their cost estimate passed jit_above_cost) for 30-90 ms each and ran them no faster.
        dbapi_conn.execute("SET jit = off")
        # Rendered HTML bodies are stored compressed: pglz, the default, made render 18% slower at
        # 100k customers than LZ4 (docs/performance.md). A server built without LZ4 keeps pglz.
        with suppress(psycopg.errors.InvalidParameterValue, psycopg.errors.UndefinedObject):
            dbapi_conn.execute("SET default_toast_compression = lz4")
        dbapi_conn.autocommit = autocommit

    return engine


def is_postgres(engine: Engine) -> bool:
    """Return whether the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"
