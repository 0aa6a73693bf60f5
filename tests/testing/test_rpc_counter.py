"""``RpcCounter`` on the plain client: RPCs counted by method, detached, summed, delayed.

What the manager's write paths cost is in ``test_rpcs.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional

from async_batchstate.testing import (
    EmulatorInfo,
    FaultyProxy,
    RpcCounter,
    aclose_client,
    make_client,
)


@pytest_asyncio.fixture
async def slow_client(firestore_emulator: EmulatorInfo) -> AsyncIterator[AsyncClient]:
    """A client whose connection to the emulator crosses a proxy with 20 ms each way."""
    async with FaultyProxy(firestore_emulator.host, latency=0.02) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        try:
            yield client
        finally:
            await aclose_client(client)


async def test_counter_counts_each_method(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A batched write, a document read and a query are one RPC each, by method."""
    rpcs = RpcCounter().attach(firestore_client)
    ref = firestore_client.collection(batch_collection).document("d")
    batch = firestore_client.batch()
    batch.set(ref, {"n": 1})
    await batch.commit()
    await ref.get()
    _ = [snap async for snap in firestore_client.collection(batch_collection).stream()]
    assert {"BatchGetDocuments": 1, "Commit": 1, "RunQuery": 1} == dict(rpcs.counts)


async def test_a_plain_transaction_costs_three_rpcs(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A transaction that reads one document: BeginTransaction, BatchGetDocuments, Commit."""
    ref = firestore_client.collection(batch_collection).document("d")

    async def body(tx: AsyncTransaction) -> None:
        await ref.get(transaction=tx)
        tx.set(ref, {"n": 1})

    with RpcCounter().attach(firestore_client) as rpcs:
        await async_transactional(body)(firestore_client.transaction())
    assert {"BatchGetDocuments": 1, "BeginTransaction": 1, "Commit": 1} == dict(rpcs.counts)


async def test_a_detached_counter_stops_counting(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """After ``detach`` (or leaving the ``with``) the client's RPCs are no longer counted."""
    ref = firestore_client.collection(batch_collection).document("d")
    with RpcCounter().attach(firestore_client) as rpcs:
        await ref.get()
    await ref.get()
    assert {"BatchGetDocuments": 1} == dict(rpcs.counts)


async def test_one_counter_sums_its_clients(
    firestore_emulator: EmulatorInfo, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A counter attached to two clients counts the RPCs of both; attaching twice is a no-op."""
    other = make_client(firestore_emulator)
    try:
        rpcs = RpcCounter().attach(firestore_client).attach(other).attach(other)
        for client in (firestore_client, other):
            await client.collection(batch_collection).document("d").get()
        assert 2 == rpcs.counts["BatchGetDocuments"]
    finally:
        await aclose_client(other)


async def test_counts_survive_the_proxy_delay(
    slow_client: AsyncClient, batch_collection: str
) -> None:
    """Concurrent writes through a delaying proxy are each one Commit (nothing lost or added)."""
    col = slow_client.collection(batch_collection)
    rpcs = RpcCounter().attach(slow_client)
    await asyncio.gather(*(col.document(f"d{i}").set({"n": i}) for i in range(20)))
    assert {"Commit": 20} == dict(rpcs.counts)
