"""Validated chunks reach a load running beside as each is written, and a stopped validation stops it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tasks.domain.contract import ENTITY_ORDER, Entity
from tasks.load import load_beside
from tasks.sources.raw import SourceError
from tasks.sources.validation import Handoff, StagedValidation

WAIT = 30.0


def _result(entities: list[Entity]) -> StagedValidation:
    return StagedValidation(
        directory="/staging/validated",
        clean={e: (f"/staging/validated/{e.value}-0.parquet",) for e in entities},
        quarantine={},
        rows_read=dict.fromkeys(entities, 1),
        rows_valid=dict.fromkeys(entities, 1),
        quarantined_rows={},
        problems_by_reason={},
    )


class _Reader:
    """A load stand-in: takes each chunk as it comes and says so."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.arrived = threading.Semaphore(0)

    def __call__(self, handoff: Handoff) -> StagedValidation:
        for chunks in handoff.entities():
            for i in chunks.indices():
                self.taken.append(chunks[i])
                self.arrived.release()
        return handoff.result()

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.arrived.acquire(timeout=WAIT), "the load never got the chunk handed over"


def test_the_load_takes_each_chunk_as_soon_as_it_is_written_and_ends_with_the_validation() -> None:
    reader = _Reader()
    result = _result([Entity.CUSTOMERS, Entity.CONTRACTS])
    with load_beside(reader) as (handoff, loading):
        customers = handoff.start(Entity.CUSTOMERS)
        customers.add("customers-0")
        reader.wait_for(1)
        assert reader.taken == ["customers-0"]
        customers.add("customers-1")
        reader.wait_for(1)
        customers.close(["customers-0", "customers-1", "customers-held-back"])
        reader.wait_for(1)
        assert not loading.done()
        handoff.start(Entity.CONTRACTS).close(["contracts-0"])
        reader.wait_for(1)
        assert not loading.done()
        handoff.finish(result)
        assert loading.result(timeout=WAIT) is result
    assert reader.taken == ["customers-0", "customers-1", "customers-held-back", "contracts-0"]


def test_all_waits_for_the_entity_to_be_validated_and_gives_its_final_chunks() -> None:
    with load_beside(lambda handoff: next(handoff.entities()).all()) as (handoff, loading):
        consents = handoff.start(Entity.CONSENTS)
        consents.add("consents-0")
        assert not loading.done()
        # Consents come whole: held-back rows go back into their chunks in file order at the end.
        consents.close(["consents-0", "consents-1"])
        assert loading.result(timeout=WAIT) == ("consents-0", "consents-1")


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda handoff: handoff.fail(), id="validation says it failed"),
        pytest.param(lambda handoff: None, id="validation raises"),
    ],
)
def test_a_validation_that_stops_stops_the_load_waiting_beside_it(stop: Callable[[Handoff], None]) -> None:
    reader = _Reader()
    with pytest.raises(RuntimeError, match="bad source"), load_beside(reader) as (handoff, loading):
        handoff.start(Entity.CUSTOMERS).add("/staging/validated/customers-0.parquet")
        reader.wait_for(1)
        stop(handoff)
        raise RuntimeError("bad source")
    with pytest.raises(SourceError, match="validate: stopped before every entity was validated; nothing"):
        loading.result(timeout=WAIT)
    assert reader.taken == ["/staging/validated/customers-0.parquet"]


def test_a_finished_validation_is_handed_over_whole_in_dependency_order_as_often_as_asked() -> None:
    result = _result(list(reversed(ENTITY_ORDER)))
    handoff = Handoff.of(result)
    first = [(chunks.entity, chunks.all()) for chunks in handoff.entities()]
    assert [e for e, _ in first] == list(ENTITY_ORDER)
    assert first == [(chunks.entity, chunks.all()) for chunks in handoff.entities()]
    assert dict(first) == result.clean
    assert handoff.result() is result
