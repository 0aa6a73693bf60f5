"""Fleet pacing on the emulator: it changes when a process writes, never what is written.

Three managers (three processes' worth of clients, caches and pacers) pace one hot
batch, with redeliveries across them and answers lost on one: every player is
counted once, told RECORDED once, and the batch finishes once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionStatus,
    ConfigurationError,
    MigrationMode,
    SystemClock,
)
from async_batchstate._store import names as f
from async_batchstate.testing import (
    EmulatorInfo,
    LostAnswers,
    RpcCounter,
    aclose_client,
    make_client,
)

from ..helpers import read_completions

pytestmark = pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting")


@pytest.mark.parametrize("mode", [MigrationMode.DUAL_WRITE, MigrationMode.SUBCOLLECTION_ONLY])
async def test_paced_processes_record_every_player_once_and_finish_once(
    mode: MigrationMode,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    players = [f"p{i}" for i in range(240)]
    finished: list[str | None] = []
    clients = [make_client(firestore_emulator) for _ in range(3)]
    managers = [
        AsyncBatchStateManager(
            client,
            collection=batch_collection,
            mode=mode,
            validation_rate=0.0,
            document_write_rate=40.0,
            on_complete=lambda batch_id, progress: finished.append(progress.finalization_key),
        )
        for client in clients
    ]
    lost = LostAnswers(times=3).attach(clients[0])
    rng = random.Random(7)
    try:
        await managers[0].create_batch("hot", expected_count=len(players))
        deliveries = [(p, rng.randrange(3)) for p in players]
        deliveries += [(p, rng.randrange(3)) for p in rng.sample(players, 60)]  # redelivered
        rng.shuffle(deliveries)

        async def deliver(player: str, who: int, delay: float) -> object:
            await asyncio.sleep(delay)
            return await managers[who].record_completion("hot", player, 2)

        results = await asyncio.gather(
            *(deliver(p, who, i * 0.002) for i, (p, who) in enumerate(deliveries))
        )
        for manager in managers:
            await manager.aclose()
    finally:
        lost.armed = False
        for manager in managers:
            await manager.aclose()
        for client in clients:
            await aclose_client(client)

    recorded = Counter(r.player for r in results if r.status is CompletionStatus.RECORDED)  # type: ignore[attr-defined]
    assert {p: 1 for p in players} == dict(recorded)
    assert 1 == sum(r.batch_completed for r in results)  # type: ignore[attr-defined]
    assert 1 == len(finished)
    batch = (await firestore_client.collection(batch_collection).document("hot").get()).to_dict()
    assert batch is not None
    assert len(players) == batch[f.COMPLETED_COUNT]
    assert {p: 2 for p in players} == {
        p: doc["predictions_count"]
        for p, doc in (await read_completions(firestore_client, batch_collection, "hot")).items()
    }
    assert lost.total_lost > 0
    # The fleet's rate (about 500 completions/s against 40 Commits/s) was measured from
    # the counts the writes read back: each process was pacing, in groups of more than one.
    assert all(m._runner._pacers["hot"].group > 1 for m in managers)


async def _commits_for(
    client: AsyncClient, collection: str, batch_id: str, rate: float | None
) -> int:
    """Commits one manager sends for 600 completions arriving at 300/s."""
    manager = AsyncBatchStateManager(
        client, collection=collection, validation_rate=0.0, document_write_rate=rate
    )
    try:
        await manager.create_batch(batch_id, expected_count=1_000)
        with RpcCounter().attach(client) as rpcs:

            async def deliver(i: int) -> None:
                await asyncio.sleep(i / 300)
                await manager.record_completion(batch_id, f"p{i}", 1)

            await asyncio.gather(*(deliver(i) for i in range(600)))
    finally:
        await manager.aclose()
    return rpcs.counts["Commit"]


async def test_pacing_holds_writes_back_and_groups_grow(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The same load paced at 10 Commits/s and unpaced: once the rate is measured, the
    paced process writes a few large groups where the unpaced one writes one group per
    round trip (tens of Commits on loopback)."""
    unpaced = await _commits_for(firestore_client, batch_collection, "unpaced", None)
    paced = await _commits_for(firestore_client, batch_collection, "paced", 10.0)
    assert paced < unpaced / 2, (paced, unpaced)


class PausesForever(SystemClock):
    """Real time, but a pause (linger, pacing) never ends by itself."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


async def test_a_close_ends_a_pacing_pause_and_the_caller_is_recorded(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    manager = AsyncBatchStateManager(
        firestore_client,
        collection=batch_collection,
        validation_rate=0.0,
        document_write_rate=1.0,
        clock=PausesForever(),
        callback_sweep_interval=None,
    )
    await manager.create_batch("b", expected_count=1_000)
    for i in range(200):  # sequential: unpaced until the fleet's rate is measured
        await manager.record_completion("b", f"warm{i}", 1)
        if manager._runner._pacers["b"].group > 1:
            break
        await asyncio.sleep(0.005)
    assert manager._runner._pacers["b"].group > 1
    held = asyncio.ensure_future(manager.record_completion("b", "held", 1))
    await asyncio.sleep(0.2)
    assert not held.done()  # paused, with a sleep that never ends
    async with asyncio.timeout(30):
        await manager.aclose(drain_timeout=10.0)
    assert CompletionStatus.RECORDED is (await held).status


@pytest.mark.parametrize("rate", [10**400, -(10**400)])
def test_a_rate_beyond_floats_is_a_configuration_error(
    rate: int, firestore_client: AsyncClient
) -> None:
    with pytest.raises(ConfigurationError, match="document_write_rate"):
        AsyncBatchStateManager(firestore_client, document_write_rate=rate)
