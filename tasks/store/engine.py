"""Engines for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

from tasks.store.sharding import SQLITE_FUNCTION, sqlite_shard_of


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Return an engine; SQLite gets WAL, foreign-key pragmas and a busy timeout, PostgreSQL no JIT."""
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
    # No JIT: the store's statements are key lookups and bulk copies, where PostgreSQL compiled some
    # (its cost estimate passed jit_above_cost) for 30-90 ms each and ran them no faster; a 1M shard
    # spent about half a second of the database's CPU on it (docs/performance.md).
    engine = create_engine(url, pool_pre_ping=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _no_jit(dbapi_conn: Any, _record: Any) -> None:
        # Outside a transaction, so the setting outlives the first rollback; a session setting, so
        # an `options` the URL carries keeps its own.
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        dbapi_conn.execute("SET jit = off")
        dbapi_conn.autocommit = autocommit

    return engine


def is_postgres(engine: Engine) -> bool:
    """Return whether the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"
