"""Benchmark the whole renewal cycle on PostgreSQL with the outbox channel; print figures, never pass/fail.

    .venv/bin/python benchmarks/cycle.py --customers 100000
    .venv/bin/python benchmarks/cycle.py --customers 1000000 --shards 8 --workers 2

Prints wall time and rows/s per stage, peak RSS of this process, and the floor measured in the same
run: a raw COPY of the same source rows into PostgreSQL and back out, plus rendering the same number
of messages. The cycle/floor ratio is what to compare between runs (the machine is shared and noisy).
The cycle runs with the clock at --at (10:00 UTC today unless told otherwise), since the gate's send
windows decide how many messages go out.
With --workers the shards run side by side on a local Dask cluster of worker processes through the
cycle's own RENEWALS_DASK_ADDRESS path, with a Prefect server they all report to; the cycle then
ingests in a child process of its own, and peak RSS sums this process and every process it spawned.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# A fresh PREFECT_HOME migrates Prefect's own database first; on a loaded machine that takes a while.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import send_clock  # noqa: E402

INGEST = ("extract", "validate", "load")


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TogetherPeak:
    """Sample the summed RSS of this process and every Python process it spawned; keep the highest, MiB."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self.me, self.every, self.peak_mb = psutil.Process(), every, 0.0
        self.at_peak: list[float] = []  # this process first, then each spawned one, MiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _spawned(self) -> list[Any]:
        # The shard workers and the ingest's child are multiprocessing spawns; the Prefect server and a
        # PostgreSQL the tests' helper may have started are infrastructure, like PostgreSQL on loopback.
        import psutil

        found = []
        for child in self.me.children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                continue
        return found

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            parts = []
            for process in [self.me, *self._spawned()]:
                try:
                    parts.append(process.memory_info().rss / 2**20)
                except psutil.Error:  # a child that exited between listing and reading
                    continue
            if sum(parts) > self.peak_mb:
                self.peak_mb, self.at_peak = sum(parts), parts

    def stop(self) -> float:
        """Stop sampling and return the highest summed RSS seen."""
        self._stop.set()
        self._thread.join()
        return self.peak_mb


@contextmanager
def dask_workers(
    count: int, work: Path, clock: timedelta
) -> Iterator[tuple[Callable[[], list[float]], TogetherPeak | None]]:
    """Start a local Dask cluster of `count` worker processes for the shards, and sample their memory."""
    if count < 2:
        yield list, None
        return
    import dask
    from distributed import Client, LocalCluster

    from tasks.store.repository import shift_clock
    from tests.support.prefect_server import prefect_server

    # One Prefect server for every process: without it each worker would start its own ephemeral
    # API on the same SQLite file. Workers inherit the environment as it is when they start.
    with prefect_server(work / "prefect-server") as api:
        os.environ["PREFECT_API_URL"] = api
        with (
            # Dask's statistical profiler samples each worker's stack every 10 ms and keeps the profiles
            # and the source lines they name: a worker grew by about 30 MiB per shard it ran. Nothing
            # reads them here (no dashboard); scaling.md tells operators to turn it off too.
            dask.config.set({"distributed.worker.profile.enabled": False}),
            LocalCluster(
                n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0
            ) as cluster,
            Client(cluster) as client,
        ):
            os.environ["RENEWALS_DASK_ADDRESS"] = cluster.scheduler_address
            # The shards judge send windows on the workers: their clocks run as this process's does.
            client.run(shift_clock, clock)
            together = TogetherPeak()
            try:
                yield (lambda: sorted(client.run(peak_rss_mb).values())), together
            finally:
                together.stop()


def floor_copy(url: str, source: Path) -> tuple[float, int]:
    """COPY every source CSV into an unlogged text table and back out; return (seconds, rows)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    rows = 0
    start = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for path in sorted(source.glob("*.csv")):
            header = path.open().readline().strip().split(",")
            table = f"floor_{path.stem}"
            cols = ", ".join(f'"{c}" text' for c in header)
            conn.execute(f"CREATE UNLOGGED TABLE {table} ({cols})")
            with (
                conn.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
                path.open("rb") as fh,
            ):
                while chunk := fh.read(8 << 20):
                    copy.write(chunk)
            buf = io.BytesIO()
            with conn.cursor().copy(f"COPY {table} TO STDOUT WITH (FORMAT csv)") as copy:
                for data in copy:
                    buf.write(data)
            rows += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return time.perf_counter() - start, rows


def floor_render(messages: int) -> float:
    """Render `messages` SMS and emails (half each) with the real templates and context shape."""
    from tasks.channels.rendering import Renderer

    renderer = Renderer(ROOT / "templates")
    ctx = {
        "first_name": "Anna",
        "last_name": "Schmidt",
        "company": "Bench Bank",
        "product_name": "Kredit",
        "contract_ref": "K0000001",
        "term_end": "22. Dezember 2026",
        "days_left": 14,
        "days_overdue": 0,
        "price": "119,90 €",
        "renew_url": "https://example.invalid/renew/x",
        "unsubscribe_url": "https://example.invalid/u/x",
        "is_marketing": False,
        "offer_discount": "",
        "offer_deadline": "",
    }
    start = time.perf_counter()
    for i in range(messages):
        channel = "sms" if i % 2 else "email"
        renderer.render(channel, "renewal_reminder", "de-DE", {**ctx, "contract_ref": f"K{i:07d}"})
    return time.perf_counter() - start


def generate(customers: int, seed: int, as_of: date, out: Path) -> dict[str, int]:
    """Write the demo portfolio as CSV and return the rows per entity (run in a child process)."""
    from config.loader import load_markets
    from tasks.sources.demo_data import generate_portfolio, write_portfolio

    frames = generate_portfolio(customers, seed, as_of, load_markets(ROOT / "config"))
    write_portfolio(frames, out, "csv")
    return {e.value: len(f) for e, f in frames.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-22")
    parser.add_argument("--database-url", default=os.environ.get("RENEWALS_BENCH_DATABASE_URL"))
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="run the per-customer stages in this many shards (one after another without --workers)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the shards side by side on a local Dask cluster of this many worker processes",
    )
    parser.add_argument("--at", default="10:00", type=send_clock.hour, metavar="HH:MM", help=send_clock.HELP)
    args = parser.parse_args()
    if args.workers > 1 and args.shards < 2:
        parser.error("--workers needs --shards 2 or more")

    from tests.support.postgres import postgres_server, scratch_database

    as_of = date.fromisoformat(args.as_of)
    work = Path(tempfile.mkdtemp(prefix="renewals-bench-"))
    t0 = time.perf_counter()
    # A child process generates the data, so the peak RSS reported below is the cycle's alone.
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        source_rows = pool.submit(generate, args.customers, args.seed, as_of, work / "source").result()
    t_generate = time.perf_counter() - t0

    with postgres_server() as admin, scratch_database(args.database_url or admin) as url:
        os.environ.update(
            {
                "RENEWALS_DATABASE_URL": url,
                "RENEWALS_SOURCE_DIR": str(work / "source"),
                "RENEWALS_OUTBOX_DIR": str(work / "outbox"),
                "RENEWALS_HOME": str(work / "home"),
                "PREFECT_HOME": str(work / "prefect"),
            }
        )
        clock = send_clock.pin_hour(args.at)
        with dask_workers(args.workers, work, clock) as (workers_rss, together):
            # Imported once the cluster is up: Prefect reads PREFECT_API_URL on import, the runtime
            # RENEWALS_DASK_ADDRESS once per process.
            from flows.renewal_cycle import renewal_cycle
            from tasks.runtime import get_runtime
            from tasks.store.migrate import upgrade

            upgrade(get_runtime().engine)
            rss_before = peak_rss_mb()
            t0 = time.perf_counter()
            summary = renewal_cycle(as_of=as_of, shards=args.shards)
            t_cycle = time.perf_counter() - t0
            rss_cycle = peak_rss_mb()
            rss_workers = workers_rss()
            rss_together = together.stop() if together else rss_cycle
            at_peak = together.at_peak if together else []
        floor_io, floor_rows = floor_copy(url, work / "source")
        rendered = summary["stages"]["render"]["rendered"]
        floor_tpl = floor_render(rendered)
        get_runtime().close()

    st, secs = summary["stages"], summary["seconds"]
    total_rows = sum(source_rows.values())
    per_stage = [
        ("extract", total_rows),
        ("validate", total_rows),
        ("load", sum(st["validate"]["rows_valid"].values())),
        ("segment", st["segment"]["contracts"]),
        ("plan", st["plan"]["candidates"]),
        ("consent-gate", st["consent-gate"]["decided"]),
        ("render", rendered),
        ("dispatch", st["dispatch"]["sent"]),
    ]
    print(
        f"\nRenewal cycle benchmark: {args.customers:,} customers, seed {args.seed}, "
        f"as of {as_of}, {send_clock.described(args.at)}, PostgreSQL, {args.shards} shard(s)"
        + (f" on {args.workers} Dask worker processes" if args.workers > 1 else "")
    )
    print(f"source rows: {', '.join(f'{k} {v:,}' for k, v in source_rows.items())} (total {total_rows:,})")
    print(f"generate and write CSV {t_generate:.1f}s in a child process (not part of the cycle)\n")
    rss = summary.get("peak_rss_mb", {})
    print(f"{'stage':<14}{'seconds':>9}{'rows':>12}{'rows/s':>12}{'peak RSS after':>16}")
    for stage, rows in per_stage:
        s = secs.get(stage, 0.0)
        peak = rss.get(stage, rss.get(f"shard-{stage}", 0))
        # The load runs beside validate: its seconds are only what it took after validate ended.
        rate = "" if stage == "load" else f"{(rows / s if s else 0):,.0f}"
        name = "load*" if stage == "load" else stage
        print(f"{name:<14}{s:>9.2f}{rows:>12,}{rate:>12}{peak:>12,.0f} MiB")
    print("* copies each chunk while validate checks the next; seconds after validate ended")
    if "shards" in secs:
        # Per-stage figures of a sharded run are the slowest shard's.
        stage_sum = sum(secs.get(s, 0.0) for s in ("extract", "validate", "load")) + secs["shards"]
        print(
            f"{'all shards':<14}{secs['shards']:>9.2f}   "
            f"{args.shards} shards {'side by side' if args.workers > 1 else 'one after another'}; "
            "the stage rows above show the slowest shard's seconds"
        )
    else:
        stage_sum = sum(secs.values())
    print(f"{'stages':<14}{stage_sum:>9.2f}")
    print(f"{'flow (wall)':<14}{t_cycle:>9.2f}   includes Prefect start-up and bookkeeping")
    floor = floor_io + floor_tpl
    print(
        f"\nfloor: COPY in+out of {floor_rows:,} rows {floor_io:.2f}s "
        f"+ render {rendered:,} messages {floor_tpl:.2f}s"
    )
    print(
        f"       = {floor:.2f}s; cycle stages / floor = {stage_sum / floor:.2f}x; "
        f"flow wall / floor = {t_cycle / floor:.2f}x"
    )
    # With the shards on workers the cycle ingests in a child process: the ingest stages' RSS is its.
    rss_ingest = max(rss.get(s, 0.0) for s in INGEST) if rss_workers else 0.0
    print(f"peak RSS: {rss_cycle:,.0f} MiB (before the cycle {rss_before:,.0f} MiB)")
    if rss_workers:
        print(
            f"ingest child's peak RSS: {rss_ingest:,.0f} MiB; shard workers' peak RSS: "
            f"{', '.join(f'{w:,.0f}' for w in rss_workers)} MiB; this process and every process it "
            f"spawned together at most {rss_together:,.0f} MiB (their sum sampled every 0.2s; the sum of "
            f"each one's own peak is {rss_cycle + rss_ingest + sum(rss_workers):,.0f} MiB)"
        )
        if at_peak:
            # One spawned process more than there are workers: the ingest's child was alive at the peak.
            print(
                f"at that moment: this process {at_peak[0]:,.0f} MiB, spawned processes "
                f"{', '.join(f'{r:,.0f}' for r in at_peak[1:])} MiB"
            )
    print(f"messages: {rendered:,} rendered, {st['dispatch']['sent']:,} sent to the outbox")
    timed = [(s, secs.get(s, 0.0)) for s in INGEST]
    timed += (
        [("all shards", secs["shards"])]
        if "shards" in secs
        else [(s, secs.get(s, 0.0)) for s, _ in per_stage[3:]]
    )
    print()
    for line in verdicts(stage_sum / floor, rss_cycle, rss, timed, rss_workers, rss_together, rss_ingest):
        print(line)


def verdicts(
    ratio: float,
    peak_mb: float,
    rss_after: dict[str, float],
    timed: list[tuple[str, float]],
    workers: Sequence[float] = (),
    together_mb: float = 0.0,
    ingest_mb: float = 0.0,
) -> list[str]:
    """Return the issue's per-run targets, met or not, and where a missed one is lost."""
    total = sum(s for _, s in timed) or 1.0
    largest = sorted(timed, key=lambda pair: -pair[1])[:3]
    shares = ", ".join(f"{name} {s:.1f}s ({s / total:.0%})" for name, s in largest)
    lines = [
        f"target cycle <= 3x floor: {ratio:.2f}x, {'met' if ratio <= 3 else 'missed'}; largest: {shares}"
    ]
    where = "after the last stage (the cycle summary)"
    # On workers the shard stages' peaks are the workers' own and the ingest's its child's.
    own = {k: v for k, v in rss_after.items() if not (workers and (k.startswith("shard-") or k in INGEST))}
    for stage, after in sorted(own.items(), key=lambda pair: pair[1]):
        # ru_maxrss only grows, so by value is by time: the first stage within 1% of the end peaked.
        if after >= 0.99 * peak_mb:
            where = f"by the end of {stage}"
            break
    held = max(peak_mb, together_mb)
    # 2 GB read strictly as 2e9 bytes (1,907 MiB), not 2 GiB.
    met = "met" if held * 2**20 < 2e9 else "missed"
    if workers:
        peaks = ", ".join(f"{w:,.0f}" for w in workers)
        lines.append(
            f"target peak RSS < 2 GB: {held / 1024:.2f} GiB, {met}, this process, the ingest's child and "
            f"the shard workers together (this process {peak_mb:,.0f} MiB, reached {where}; ingest "
            f"{ingest_mb:,.0f} MiB; shard workers {peaks} MiB)"
        )
    else:
        lines.append(f"target peak RSS < 2 GB: {held / 1024:.2f} GiB, {met}; peak reached {where}")
    return lines


if __name__ == "__main__":
    main()
