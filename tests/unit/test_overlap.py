"""Reads ahead and writes behind keep the order and the errors of doing them in line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasks.sources.overlap import BackgroundWrites, prefetch


def _numbers(n: int, fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"cannot read item {i}")
        yield i


class TestPrefetch:
    def test_items_come_in_their_order(self) -> None:
        assert list(prefetch(_numbers(5))) == [0, 1, 2, 3, 4]

    def test_an_empty_source_yields_nothing(self) -> None:
        assert list(prefetch(_numbers(0))) == []

    def test_an_error_reading_an_item_reaches_the_caller_after_the_items_before_it(self) -> None:
        seen: list[int] = []
        with pytest.raises(ValueError, match="cannot read item 2"):
            for item in prefetch(_numbers(5, fail_at=2)):
                seen.append(item)
        assert seen == [0, 1]


class TestBackgroundWrites:
    def test_writes_run_one_after_another_in_submission_order(self) -> None:
        done: list[int] = []
        writes = BackgroundWrites()
        for i in range(4):
            writes.submit(lambda i=i: done.append(i))
        writes.close()
        assert done == [0, 1, 2, 3]

    def test_a_failed_write_is_raised_by_the_next_wait(self) -> None:
        def fail() -> None:
            raise OSError("disk full")

        writes = BackgroundWrites()
        writes.submit(fail)
        with pytest.raises(OSError, match="disk full"):
            writes.wait()
        writes.close()
