"""Chunk-wise writes of the staged load: the results of the whole-frame syncs, in bounded memory."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Table, func, literal, select, text

from tasks.domain.contract import CONTRACT, Entity
from tasks.store import schema as s
from tasks.store.bulk import (
    SyncStats,
    _copy_in,
    _csv_payload,
    arrow_payload,
    copy_frame,
    insert_frame,
    read_frame,
    sync_frame,
    update_frame,
)
from tasks.store.repository import ENTITY_TABLES

CONSENT_KEY = ["customer_key", "channel", "purpose", "controller"]


def _temp_table(conn: Connection, table: Table, df: pd.DataFrame, ordinal: bool = False) -> str:
    """Create an empty temporary table with `df`'s columns typed as in `table`; return its name."""
    name = f"tmp_{table.name}_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(f'"{c}"' for c in df.columns)
    conn.exec_driver_sql(
        f'CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {cols} FROM "{table.name}" WITH NO DATA'
    )
    if ordinal:
        conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN ordinal bigserial")
    return name


ChunkReader = Callable[[int, list[str] | None], pd.DataFrame]
# Chunk i as table rows in Arrow; called from a worker thread, so it must not use the connection.
ArrowReader = Callable[[int], pa.Table]
Payload = tuple[list[str], bytes, int]


def _frame_payload(frame: pd.DataFrame, table: Table) -> Payload:
    return list(frame.columns), _csv_payload(frame, table) if len(frame) else b"", len(frame)


def _arrow_chunk(read: ArrowReader, i: int, table: Table) -> Payload:
    rows = read(i)
    return rows.column_names, arrow_payload(rows, table) if rows.num_rows else b"", rows.num_rows


@contextmanager
def indexes_built_after(conn: Connection, table: Table) -> Iterator[None]:
    """Drop `table`'s indexes and key for the body, then build them again from their own definitions.

    For a bulk load into an empty table: building an index over the loaded rows costs less than
    updating it row by row (instalments of 100k customers: COPY and indexes 6.6 s against 9.0-10.3 s).
    Inside the load's transaction, so a failure restores them; readers wait for the commit meanwhile.
    """
    found = conn.execute(
        text(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, "
            "pg_get_constraintdef(c.oid) FROM pg_index i LEFT JOIN pg_constraint c "
            "ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
            "WHERE i.indrelid = CAST(:t AS regclass) ORDER BY i.indexrelid"
        ),
        {"t": f'"{table.name}"'},
    ).all()
    for index, _, constraint, _ in found:
        if constraint is None:
            conn.exec_driver_sql(f"DROP INDEX {index}")
        else:
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" DROP CONSTRAINT "{constraint}"')
    yield
    # Sorts for the index builds in memory rather than in temporary files (server memory, not ours).
    conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
    for _, definition, constraint, constraint_definition in found:
        if constraint is None:
            conn.exec_driver_sql(definition)
        else:
            conn.exec_driver_sql(
                f'ALTER TABLE "{table.name}" ADD CONSTRAINT "{constraint}" {constraint_definition}'
            )


Stamp = Mapping[str, datetime]


@contextmanager
def stamped_by_default(conn: Connection, table: Table, stamp: Stamp) -> Iterator[None]:
    """Make each of `stamp`'s values its column's default for the body, so a COPY can leave them out.

    PostgreSQL parsed the same load time on every row: a quarter of a COPY of instalments (1.5M
    rows: 1.91 s against 1.46 s without it). Inside the load's transaction, so a failure restores them.
    """
    if not stamp:
        yield
        return
    rows = conn.execute(
        text(
            "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attname = ANY(:c)"
        ),
        {"t": f'"{table.name}"', "c": list(stamp)},
    ).all()
    found: dict[str, str | None] = {str(name): expr for name, expr in rows}
    for column, value in stamp.items():
        if value.tzinfo is None:
            raise ValueError(f"{column}: a load time must carry its time zone")
        conn.exec_driver_sql(
            f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" '
            f"SET DEFAULT '{value.isoformat()}'::timestamptz"
        )
    yield
    for column in stamp:
        restore = f"SET DEFAULT {found[column]}" if found.get(column) else "DROP DEFAULT"
        conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" {restore}')


def emptied_for_copy(conn: Connection, table: Table) -> bool:
    """Return whether `table` is empty; when it is, hold it locked and truncated in this transaction.

    COPY may then write its rows frozen and all-visible (FREEZE needs the table truncated in the same
    transaction): the readers that follow need neither look up nor set each row's commit status.
    """
    if conn.execute(select(literal(1)).select_from(table).limit(1)).first() is not None:
        return False
    conn.exec_driver_sql(f'LOCK TABLE "{table.name}" IN ACCESS EXCLUSIVE MODE')
    # A row committed between the look and the lock: not empty after all.
    if conn.execute(select(literal(1)).select_from(table).limit(1)).first() is not None:
        return False
    conn.exec_driver_sql(f'TRUNCATE "{table.name}"')
    return True


def copy_chunks(
    conn: Connection,
    table: Table,
    chunks: Iterable[int],
    read: ChunkReader,
    arrow: ArrowReader | None,
    freeze: bool = False,
) -> int:
    """COPY every chunk into `table` and return the row count; the next chunk's CSV is built meanwhile.

    PostgreSQL parses, indexes and logs one chunk in its own process while a thread builds the
    next chunk's payload, so the two cores work at once; at most two payloads are held. With `freeze`
    the rows are written frozen (see `emptied_for_copy`).
    """
    written = 0

    def copy(payload: Payload) -> None:
        nonlocal written
        columns, data, rows = payload
        if rows:
            _copy_in(conn, f'"{table.name}"', columns, data, freeze)
            written += rows

    with ThreadPoolExecutor(1, thread_name_prefix="copy-payload") as pool:
        if arrow is not None:
            positions = iter(chunks)

            def build_next() -> Payload | None:
                # Waits here, not between COPYs, when validation has not written the next chunk yet.
                i = next(positions, None)
                return None if i is None else _arrow_chunk(arrow, i, table)

            job = pool.submit(build_next)
            while (payload := job.result()) is not None:
                job = pool.submit(build_next)
                copy(payload)
            return written
        pending: Future[Payload] | None = None
        for i in chunks:
            # `read` may query the connection, so it runs here, between the COPYs.
            job_ = pool.submit(_frame_payload, read(i, None), table)
            if pending is not None:
                copy(pending.result())
            pending = job_
        if pending is not None:
            copy(pending.result())
    return written


def _copy_out_ints(conn: Connection, sql: str, names: list[str]) -> pd.DataFrame:
    """Run a PostgreSQL query through COPY TO STDOUT and return its integer columns as int64."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise RuntimeError("connection is closed")
    buf = io.BytesIO()
    with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
        for chunk in copy:
            buf.write(chunk)
    if not buf.getbuffer().nbytes:
        return pd.DataFrame({n: pd.Series(dtype="int64") for n in names})
    buf.seek(0)
    return pd.read_csv(buf, header=None, names=names, dtype="int64")


def sync_chunks(
    conn: Connection,
    table: Table,
    key: list[str],
    chunks: int | Iterable[int],
    read: ChunkReader,
    only_where_null: str | None = None,
    arrow: ArrowReader | None = None,
    stamp: Stamp | None = None,
) -> SyncStats:
    """Make `table` hold the rows of `chunks` chunks, as `sync_frame` does for one frame.

    `read(i, columns)` returns chunk i as table rows (only `columns` when given); `arrow(i)`, when
    given, returns the same rows in Arrow, for the COPY into an empty table. `stamp` gives columns
    with one value for every written row (the load time), which the readers leave out. Keys are unique
    across chunks, so on SQLite each chunk is synced on its own. On PostgreSQL an empty table gets
    every chunk by COPY; otherwise keys and row hashes alone are copied into a temporary table and
    compared with the table in one join, and only new rows (COPY) and changed rows (UPDATE, never
    where `only_where_null` is set) are read again and written, so a rerun writes nearly nothing.
    `chunks` is their number, or their positions as each becomes readable (a load beside validation).
    """
    chunks = range(chunks) if isinstance(chunks, int) else chunks
    stamp = stamp or {}
    if conn.dialect.name != "postgresql":
        stats = [sync_frame(conn, table, read(i, None).assign(**stamp), key, only_where_null) for i in chunks]
        return SyncStats(*(sum(getattr(x, f) for x in stats) for f in ("inserted", "updated", "unchanged")))
    if emptied_for_copy(conn, table):
        with indexes_built_after(conn, table), stamped_by_default(conn, table, stamp):
            return SyncStats(copy_chunks(conn, table, chunks, read, arrow, freeze=True), 0, 0)
    probe = [*key, "row_hash"]
    tmp = _temp_table(conn, table, pd.DataFrame(columns=probe), ordinal=True)
    sizes = []
    for i in chunks:
        frame = read(i, probe)
        copy_frame(conn, tmp, table, frame)
        sizes.append(len(frame))
    conn.exec_driver_sql(f"ANALYZE {tmp}")
    match = " AND ".join(f't."{k}" = s."{k}"' for k in key)
    guard = f' AND t."{only_where_null}" IS NULL' if only_where_null else ""
    diff = _copy_out_ints(
        conn,
        f'SELECT s.ordinal - 1, (t."{key[0]}" IS NULL)::int FROM {tmp} s LEFT JOIN "{table.name}" t '
        f'ON {match} WHERE t."{key[0]}" IS NULL OR (t.row_hash IS DISTINCT FROM s.row_hash{guard})',
        ["position", "fresh"],
    )
    conn.exec_driver_sql(f"DROP TABLE {tmp}")
    inserted = updated = 0
    starts = np.concatenate(([0], np.cumsum(sizes)))
    chunk_of = np.searchsorted(starts, diff["position"].to_numpy(), side="right") - 1
    for i in np.unique(chunk_of):
        rows = diff.loc[chunk_of == i]
        frame = read(int(i), None).assign(**stamp)
        local = rows["position"].to_numpy() - starts[i]
        fresh = rows["fresh"].to_numpy() == 1
        inserted += insert_frame(conn, table, frame.iloc[np.sort(local[fresh])])
        updated += update_frame(conn, table, frame.iloc[np.sort(local[~fresh])], key, only_where_null)
    return SyncStats(inserted, updated, int(starts[-1]) - inserted - updated)


def customer_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Return validated customers as rows of the customers table (without the load time)."""
    return frame.rename(columns={"phone": "phone_e164"})


def sync_customer_chunks(conn: Connection, chunks: int, read: ChunkReader, loaded_at: datetime) -> SyncStats:
    """Upsert customers chunk by chunk; erased customers are never restored by a re-import."""
    return sync_chunks(
        conn,
        s.customers,
        ["customer_key"],
        chunks,
        read,
        only_where_null="erased_at",
        stamp={"loaded_at": loaded_at},
    )


def sync_entity_chunks(
    conn: Connection,
    entity: Entity,
    chunks: int | Iterable[int],
    read: ChunkReader,
    loaded_at: datetime,
    arrow: ArrowReader | None = None,
) -> SyncStats:
    """Upsert contracts, instalments or activity chunk by chunk, by key and row hash."""
    return sync_chunks(
        conn,
        ENTITY_TABLES[entity],
        list(CONTRACT[entity].key),
        chunks,
        read,
        arrow=arrow,
        stamp={"loaded_at": loaded_at},
    )


def last_consent_id(conn: Connection) -> int:
    """Return the highest consent id so far (0 when there are none)."""
    return int(conn.execute(select(func.coalesce(func.max(s.consents.c.consent_id), 0))).scalar_one())


def consent_rows(frame: pd.DataFrame, controller: str) -> pd.DataFrame:
    """Return validated CRM consents with the default controller and lawful basis filled in."""
    df = frame.copy()
    df["controller"] = df["controller"].fillna("").replace("", controller)
    df["lawful_basis"] = df["lawful_basis"].fillna("consent")
    return df


def crm_consent_arrow(rows: pa.Table, controller: str, recorded_at: pa.Scalar) -> pa.Table:
    """Return validated consents in Arrow as `consent_rows` fills them, stamped as CRM records."""

    def text(name: str) -> pa.ChunkedArray:
        # A chunk whose column is empty throughout is read back with Arrow's null type.
        values = rows.column(name)
        return values.cast(pa.string()) if pa.types.is_null(values.type) else values

    named = pc.fill_null(text("controller"), "")
    named = pc.if_else(pc.equal(named, ""), pa.scalar(controller, named.type), named)
    rows = rows.set_column(rows.column_names.index("controller"), "controller", named)
    basis = pc.fill_null(text("lawful_basis"), "consent")
    rows = rows.set_column(rows.column_names.index("lawful_basis"), "lawful_basis", basis)
    rows = rows.append_column("origin", pa.repeat(pa.scalar("crm"), rows.num_rows))
    return rows.append_column("recorded_at", pa.repeat(recorded_at, rows.num_rows))


class ConsentAppend:
    """Append CRM consent records that differ from the last CRM import of the same key, chunk by chunk.

    Records are compared with the store as it was before the load began (consent ids up to `upto`),
    so the counts are those `append_consents` gives for the whole frame; history is never rewritten.
    """

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn, self.now = conn, now
        self.upto = last_consent_id(conn)
        self.pg = conn.dialect.name == "postgresql"
        self.temp: str | None = None
        self.columns: list[str] = []
        self.rows = 0
        self.stats = SyncStats(0, 0, 0)
        self._rebuild = ExitStack()
        self.frozen = False
        if self.pg and not self.upto:
            self.frozen = emptied_for_copy(conn, s.consents)
            self._rebuild.enter_context(indexes_built_after(conn, s.consents))

    def add_chunks(self, count: int, read: ChunkReader, arrow: ArrowReader) -> None:
        """Take `count` chunks, read as frames (`consent_rows`) or as Arrow (`crm_consent_arrow`)."""
        if not (self.pg and not self.upto):
            for i in range(count):
                self.add(read(i, None))
            return
        # Into an empty store every record goes straight in, in file order: each chunk's payload is
        # built from Arrow while the chunk before is copied (1M customers: 1.7M consents, ~13 s one
        # step after the other, 6.8 s of it building payloads from frames).
        written = copy_chunks(self.conn, s.consents, range(count), read, arrow, freeze=self.frozen)
        self.rows += written
        self.stats = SyncStats(self.stats.inserted + written, 0, 0)

    def add(self, df: pd.DataFrame) -> None:
        """Take one chunk of prepared consent rows (see `consent_rows`)."""
        if df.empty:
            return
        self.rows += len(df)
        if not self.pg:
            got = _append_consents_frame(self.conn, df, self.now, self.upto)
            self.stats = SyncStats(self.stats.inserted + got.inserted, self.stats.updated + got.updated, 0)
            return
        if not self.upto:
            # No earlier record to compare with: every one is new and goes straight in, in file order
            # (so in consent id order), without the copy through a temporary table.
            rows = df.assign(origin="crm", recorded_at=self.now)
            self.stats = SyncStats(self.stats.inserted + insert_frame(self.conn, s.consents, rows), 0, 0)
            return
        if self.temp is None:
            # The ordinal keeps the file's order in the consent ids, which break ties between records.
            self.temp, self.columns = _temp_table(self.conn, s.consents, df, ordinal=True), list(df.columns)
        copy_frame(self.conn, self.temp, s.consents, df[self.columns])

    def finish(self) -> SyncStats:
        """Insert what is staged in the database and return the counts."""
        if self.temp is not None:
            tmp, cols = self.temp, ", ".join(f'"{c}"' for c in self.columns)
            keys = ", ".join(f"c.{k}" for k in CONSENT_KEY)
            match = " AND ".join(f"l.{k} = s.{k}" for k in CONSENT_KEY)
            source = ", ".join(f's."{c}"' for c in self.columns)
            self.conn.exec_driver_sql(f"ANALYZE {tmp}")
            counts = self.conn.exec_driver_sql(
                f"WITH last AS (SELECT DISTINCT ON ({keys}) {keys}, c.row_hash FROM consents c "
                f"WHERE c.origin = 'crm' AND c.consent_id <= %(upto)s "
                f"AND c.customer_key IN (SELECT customer_key FROM {tmp}) "
                f"ORDER BY {keys}, c.consent_id DESC), "
                f"cmp AS (SELECT s.*, l.row_hash AS last_hash FROM {tmp} s LEFT JOIN last l ON {match}), "
                f"ins AS (INSERT INTO consents ({cols}, origin, recorded_at) "
                f"SELECT {source}, 'crm', %(now)s FROM cmp s "
                "WHERE s.last_hash IS NULL OR s.last_hash <> s.row_hash ORDER BY s.ordinal) "
                "SELECT count(*) FILTER (WHERE last_hash IS NULL), "
                "count(*) FILTER (WHERE last_hash IS NOT NULL AND last_hash <> row_hash) FROM cmp",
                {"upto": self.upto, "now": self.now},
            ).one()
            self.conn.exec_driver_sql(f"DROP TABLE {tmp}")
            self.stats = SyncStats(int(counts[0]), int(counts[1]), 0)
        self._rebuild.close()
        fresh, changed = self.stats.inserted, self.stats.updated
        return SyncStats(fresh, changed, self.rows - fresh - changed)


def _append_consents_frame(conn: Connection, df: pd.DataFrame, now: datetime, upto: int) -> SyncStats:
    c = s.consents
    last = read_frame(
        conn,
        select(*(c.c[k] for k in CONSENT_KEY), c.c.row_hash, c.c.consent_id).where(
            c.c.origin == "crm", c.c.consent_id <= upto
        ),
    )
    if not last.empty:
        last = last.sort_values("consent_id").drop_duplicates(CONSENT_KEY, keep="last")
    merged = df.merge(last[CONSENT_KEY + ["row_hash"]], on=CONSENT_KEY, how="left", suffixes=("", "_last"))
    fresh = merged["row_hash_last"].isna()
    changed = ~fresh & (merged["row_hash"] != merged["row_hash_last"])
    insert_frame(conn, c, df.loc[(fresh | changed).to_numpy()].assign(origin="crm", recorded_at=now))
    return SyncStats(int(fresh.sum()), int(changed.sum()), len(df) - int(fresh.sum()) - int(changed.sum()))
