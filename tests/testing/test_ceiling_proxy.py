"""``WriteCeilingProxy``: a modelled per-document write ceiling between clients and the emulator.

The model's bookkeeping is checked on a clock the test passes; on the emulator, a
client through the proxy must work for everything it does, Commits on one document
must queue one slot apart (a lower bound on time only: performance belongs to
``benchmarks/``), an overload must be refused with ABORTED, and documents must not
wait for each other.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from google.api_core.exceptions import Aborted
from google.cloud import firestore
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionStatus,
    ConfigurationError,
    MigrationMode,
)
from async_batchstate.testing import (
    EmulatorInfo,
    WriteCeilingProxy,
    aclose_client,
    make_client,
)
from async_batchstate.testing._ceiling import CONTENTION, _Slots

from ..helpers import read_batch

CEILING = 20.0  # writes per second per document: one slot is 50 ms
MAX_WAIT = 0.3  # six slots


# -- the model, on a clock the test passes ---------------------------------------------


def test_commits_on_one_document_take_one_slot_after_the_other() -> None:
    """At 20 writes/s, four Commits arriving together start 50 ms apart."""
    slots = _Slots(20.0, None)
    assert [0.0, 0.05, 0.1, 0.15] == [pytest.approx(slots.reserve({"a"}, 0.0)) for _ in range(4)]


def test_a_commit_waits_for_the_busiest_document_it_touches() -> None:
    """A Commit on two documents starts when both are free, and holds both."""
    slots = _Slots(10.0, None)
    slots.reserve({"a"}, 0.0)
    slots.reserve({"a"}, 0.0)  # "a" busy until 0.2
    both, after = slots.reserve({"a", "b"}, 0.0), slots.reserve({"b"}, 0.0)
    assert (0.2, 0.3) == pytest.approx((both, after))


def test_different_documents_do_not_wait_for_each_other() -> None:
    """Commits on distinct documents all start at once."""
    slots = _Slots(1.0, 0.5)
    assert [0.0] * 50 == [slots.reserve({f"d{i}"}, 0.0) for i in range(50)]


def test_a_commit_that_would_wait_longer_than_max_wait_is_refused_and_reserves_nothing() -> None:
    """Over ``max_wait`` the answer is None (ABORTED), and the queue does not grow."""
    slots = _Slots(10.0, 0.25)
    assert [0.0, 0.1, 0.2, None, None] == [slots.reserve({"a"}, 0.0) for _ in range(5)]
    assert 0.3 == pytest.approx(slots.reserve({"a"}, 0.1))


def test_a_free_document_is_free_again_after_its_slot() -> None:
    """Once its last slot has passed, a document serves the next Commit at once."""
    slots = _Slots(10.0, None)
    slots.reserve({"a"}, 0.0)
    assert 5.0 == slots.reserve({"a"}, 5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"writes_per_second": -1.0},
        {"writes_per_second": math.inf},
        {"writes_per_second": math.nan},
        {"writes_per_second": 10.0, "max_wait": 0.0},
        {"writes_per_second": 10.0, "max_wait": math.inf},
        {"writes_per_second": 10.0, "listen_host": "0.0.0.0"},
    ],
    ids=["negative", "infinite", "nan", "zero-wait", "infinite-wait", "not-loopback"],
)
def test_bad_arguments_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    """Refused at construction, before any process starts."""
    with pytest.raises(ConfigurationError):
        WriteCeilingProxy("127.0.0.1:1", **kwargs)


def test_a_malformed_target_is_a_configuration_error() -> None:
    """``target`` must be ``host:port``."""
    with pytest.raises(ConfigurationError, match="host:port"):
        WriteCeilingProxy("no-port", writes_per_second=1.0)


# -- on the emulator -------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(firestore_emulator: EmulatorInfo) -> Iterator[WriteCeilingProxy]:
    """One proxy process for the module: 20 writes/s per document, refused beyond 0.3 s."""
    with WriteCeilingProxy(
        firestore_emulator.host, writes_per_second=CEILING, max_wait=MAX_WAIT
    ) as started:
        yield started


@pytest_asyncio.fixture
async def client(
    proxy: WriteCeilingProxy, firestore_emulator: EmulatorInfo
) -> AsyncIterator[AsyncClient]:
    """An ``AsyncClient`` whose every RPC crosses the proxy."""
    made = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
    yield made
    await aclose_client(made)


async def test_reads_writes_queries_and_transactions_work_through_the_proxy(
    client: AsyncClient, batch_collection: str
) -> None:
    """Unary and streaming RPCs of every kind the library uses pass through unchanged."""
    col = client.collection(batch_collection)
    await col.document("a").set({"n": 1})
    await col.document("b").create({"n": 2})
    await col.document("b").update({"n": firestore.Increment(3)})

    @async_transactional
    async def move(tx: AsyncTransaction) -> None:
        snaps = [
            s async for s in client.get_all([col.document("a"), col.document("b")], transaction=tx)
        ]
        tx.update(col.document("a"), {"n": sum(s.get("n") for s in snaps)})

    await move(client.transaction())
    totals = await col.count().get()  # RunAggregationQuery
    assert (
        {"a": 6, "b": 5},
        2,
    ) == ({d.id: d.get("n") async for d in col.stream()}, totals[0][0].value)
    await col.document("b").delete()
    assert not (await col.document("b").get()).exists


async def test_the_manager_records_through_the_proxy(
    proxy: WriteCeilingProxy, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """The library's own write path (group Commits on one hot document) under the ceiling."""
    client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
    try:
        async with AsyncBatchStateManager(
            client, collection=batch_collection, mode=MigrationMode.DUAL_WRITE
        ) as manager:
            await manager.create_batch("b", expected_count=30)
            results = await asyncio.gather(
                *(manager.record_completion("b", f"p{i}", 1) for i in range(30))
            )
        doc = await read_batch(client, batch_collection, "b")
    finally:
        await aclose_client(client)
    assert (30, 30, "complete") == (
        sum(r.status is CompletionStatus.RECORDED for r in results),
        doc["completed_count"],
        doc["status"],
    )


def test_a_listener_works_through_the_proxy(
    proxy: WriteCeilingProxy, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """``on_snapshot`` (the bidirectional Listen stream) sees a change written after it started."""
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = proxy.host
    try:
        client = firestore.Client(project=firestore_emulator.project)
    finally:
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST")
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous
    ref = client.collection(batch_collection).document("watched")
    ref.set({"n": 0})
    seen: list[int] = []
    changed = threading.Event()

    def on_snapshot(snaps: list[Any], changes: Any, read_time: Any) -> None:
        seen.extend(s.get("n") for s in snaps)
        if 1 in seen:
            changed.set()

    watch = ref.on_snapshot(on_snapshot)
    try:
        ref.set({"n": 1})
        assert changed.wait(30), f"no change seen through the proxy, saw {seen}"
    finally:
        watch.unsubscribe()
        client.close()


async def test_concurrent_commits_on_one_document_queue_one_slot_apart(
    proxy: WriteCeilingProxy, client: AsyncClient, batch_collection: str
) -> None:
    """Five Commits on one document at 20 writes/s take at least about 5/20 s (a lower bound)."""
    ref = client.collection(batch_collection).document("hot")
    before = proxy.commits
    t0 = time.perf_counter()
    await asyncio.gather(*(ref.set({"n": i}) for i in range(5)))
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.9 * 5 / CEILING
    assert proxy.commits - before == 5


async def test_an_overload_is_refused_with_aborted(
    proxy: WriteCeilingProxy, client: AsyncClient, batch_collection: str
) -> None:
    """40 Commits at once on one document: beyond ``max_wait`` they get ABORTED (contention)."""
    ref = client.collection(batch_collection).document("hot")
    before = proxy.aborted
    outcomes = await asyncio.gather(*(ref.set({"n": i}) for i in range(40)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, Aborted)]
    assert [] == [o for o in outcomes if isinstance(o, BaseException) and o not in refused]
    assert refused and len(refused) < 40
    assert CONTENTION in str(refused[0])
    assert proxy.aborted - before == len(refused)


async def test_different_documents_are_not_serialised(
    proxy: WriteCeilingProxy, client: AsyncClient, batch_collection: str
) -> None:
    """40 Commits at once on 40 documents: none waits for another, so none is refused."""
    col = client.collection(batch_collection)
    before = proxy.aborted
    await asyncio.gather(*(col.document(f"d{i}").set({"n": i}) for i in range(40)))
    assert proxy.aborted == before


def test_zero_forwards_without_a_ceiling(
    firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """``writes_per_second=0``: plain forwarding, nothing counted as a modelled Commit."""

    async def burst(host: str) -> None:
        client = make_client(EmulatorInfo(host, firestore_emulator.project, None))
        try:
            ref = client.collection(batch_collection).document("hot")
            await asyncio.gather(*(ref.set({"n": i}) for i in range(40)))
        finally:
            await aclose_client(client)

    with WriteCeilingProxy(firestore_emulator.host, writes_per_second=0) as off:
        asyncio.run(burst(off.host))
        assert (0, 0, True) == (off.commits, off.aborted, off.rpcs >= 40)
    with pytest.raises(Exception, match="not started"):
        off.host  # noqa: B018
