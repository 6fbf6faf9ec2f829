"""A shard's process hands memory back: Arrow allocates from the C heap once a shard has begun."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.stages import release_memory, use_system_allocator


@pytest.fixture
def default_pool() -> Iterator[None]:
    before = pa.default_memory_pool()
    yield
    pa.set_memory_pool(before)


@pytest.mark.usefixtures("default_pool")
def test_arrow_allocates_from_the_c_heap_after_the_switch_and_older_buffers_stay_valid() -> None:
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    older = pa.array(["C0000001", "C0000002"] * 1000)
    use_system_allocator()
    newer = pc.binary_join_element_wise(older, older, "-")
    assert pa.default_memory_pool().backend_name == "system"
    assert newer.to_pylist()[:2] == ["C0000001-C0000001", "C0000002-C0000002"]
    del older
    release_memory()
    assert newer[1].as_py() == "C0000002-C0000002"
