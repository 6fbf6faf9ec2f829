"""The shard filter in SQL: the same hash as tasks.domain.shards.shard_of, computed by the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, ColumnElement, Computed, cast, func, literal, literal_column, true
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from tasks.domain.shards import Shard, shard_of

SQLITE_FUNCTION = "renewals_shard"
# The stored hash of a table's customer_key (PostgreSQL): shard filters read it instead of hashing.
HASH_COLUMN = "shard_hash"


def _md5_32(key: Any) -> ColumnElement[int]:
    # 'x' || 8 hex digits cast to bit(32) and then bigint reads them as an unsigned 32-bit number.
    return cast(cast(literal("x").concat(func.substr(func.md5(key), 1, 8)), BIT(32)), BigInteger)


class KeyHash(ColumnElement[int]):
    """The first 32 bits of the MD5 of a column, as a generated column's expression."""

    type = BigInteger()
    inherit_cache = True

    def __init__(self, column: str) -> None:
        self.column = column


@compiles(KeyHash, "postgresql")
def _key_hash_postgresql(element: KeyHash, compiler: Any, **kw: Any) -> str:
    # Literal SQL: DDL cannot carry bound parameters.
    key: ColumnElement[str] = literal_column(f'"{element.column}"')
    bits = cast(literal_column("'x'").concat(func.substr(func.md5(key), 1, 8)), BIT(32))
    return str(compiler.process(cast(bits, BigInteger), **kw))


@compiles(KeyHash)
def _key_hash_default(_element: KeyHash, _compiler: Any, **_kw: Any) -> str:
    # SQLite has no MD5, and a generated column calling the registered function would make every
    # connection without it (the sqlite3 shell) fail to write the table: shard filters hash there.
    return "NULL"


def key_hash_column() -> Column[int]:
    """Return the generated column holding the hash of the table's customer_key (NULL on SQLite)."""
    return Column(HASH_COLUMN, BigInteger, Computed(KeyHash("customer_key")))


class ShardOf(FunctionElement[int]):
    """shard_of(key, count) as a SQL expression."""

    type = BigInteger()
    inherit_cache = True
    name = "shard_of"


def _stored_hash(key: Any) -> Any:
    """Return the stored hash column beside `key` when `key` is the customer_key it hashes, else None."""
    table = getattr(key, "table", None)
    columns = getattr(table, "c", None)
    if getattr(key, "name", None) != "customer_key" or columns is None or HASH_COLUMN not in columns:
        return None
    return columns[HASH_COLUMN]


@compiles(ShardOf, "postgresql")
def _shard_of_postgresql(element: ShardOf, compiler: Any, **kw: Any) -> str:
    key, count = list(element.clauses)
    stored = _stored_hash(key)
    # MD5 per row costs about 1.5 us: a table that stores the hash is filtered without computing it.
    bits = stored if stored is not None else _md5_32(key)
    # mod(), not the % operator: read_frame inlines the statement into COPY, where psycopg's "%%" escape
    # would stay doubled.
    return str(compiler.process(func.mod(bits, count), **kw))


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
