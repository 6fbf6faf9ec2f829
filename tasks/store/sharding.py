"""The shard filter in SQL: the same hash as tasks.domain.shards.shard_of, computed by the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, true
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from tasks.domain.shards import Shard, shard_of

SQLITE_FUNCTION = "renewals_shard"


class ShardOf(FunctionElement[int]):
    """shard_of(key, count) as a SQL expression."""

    type = BigInteger()
    inherit_cache = True
    name = "shard_of"


@compiles(ShardOf, "postgresql")
def _shard_of_postgresql(element: ShardOf, compiler: Any, **kw: Any) -> str:
    key, count = list(element.clauses)
    # 'x' || 8 hex digits cast to bit(32) and then bigint reads them as an unsigned 32-bit number.
    bits = cast(literal("x").concat(func.substr(func.md5(key), 1, 8)), BIT(32))
    # mod(), not the % operator: read_frame inlines the statement into COPY, where psycopg's "%%" escape
    # would stay doubled.
    return str(compiler.process(func.mod(cast(bits, BigInteger), count), **kw))


@compiles(ShardOf)
def _shard_of_default(element: ShardOf, compiler: Any, **kw: Any) -> str:
    key, count = list(element.clauses)
    # SQLite has no MD5: tasks.store.engine registers this function on every connection.
    return str(compiler.process(getattr(func, SQLITE_FUNCTION)(key, count), **kw))


def in_shard(column: Any, shard: Shard | None) -> ColumnElement[bool]:
    """Return the condition "the customer key in `column` belongs to `shard`" (always true for None)."""
    if shard is None or shard.count == 1:
        return true()
    return ShardOf(column, shard.count) == shard.index


def sqlite_shard_of(key: str | None, count: int) -> int | None:
    """The SQLite function behind ShardOf."""
    return None if key is None else shard_of(key, count)
