"""Overlap the staged ingest's file reads and writes with its work on rows, one chunk ahead at most.

Parquet and CSV I/O spend most of their time in Arrow's C++ code (compression, encoding, parsing)
with the GIL released, so a thread can run it on the second core while the main thread validates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetch(items: Iterator[T]) -> Iterator[T]:
    """Yield `items`, producing the next one in a thread while the caller works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item  # type: ignore[misc]


class BackgroundWrites:
    """Run writes one at a time in a thread; a write waits for the one before, so one chunk is queued."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="background-write")
        self.pending: Future[object] | None = None

    def submit(self, write: Callable[[], object]) -> None:
        """Start `write` once the previous write is done (its error, if any, is raised here)."""
        self.wait()
        self.pending = self.pool.submit(write)

    def wait(self) -> None:
        """Return when every submitted write is done; raise the error of one that failed."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the writes, then stop the thread (also after an error)."""
        try:
            self.wait()
        finally:
            self.pool.shutdown()
