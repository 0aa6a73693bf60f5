"""A pull-consumer process for the Pub/Sub multi-process tests.

Usage: python -m tests._pubsub_worker COLLECTION SUBSCRIPTION WRITE_DELAY MAX_OUTSTANDING
(FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT come from the
environment). Prints ``ready`` once pulling, ``finalized BATCH`` from each ``on_complete``
as it runs (so a process killed later has told already), and on SIGTERM drains
(``drain_on_sigterm``, 8 s grace), then prints ``stats {json}`` and exits 0. Each write
attempt first sleeps WRITE_DELAY seconds, so that a load lasts long enough to be cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence

from async_batchstate import AsyncBatchStateManager, BatchProgress, MigrationMode
from async_batchstate._store.connect import client_from_env
from async_batchstate.pubsub import PullConsumer, drain_on_sigterm
from async_batchstate.testing import FaultPoint, aclose_client


async def main(collection: str, subscription: str, delay: float, outstanding: int) -> None:
    async def slow(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT:
            await asyncio.sleep(delay)

    def on_complete(batch_id: str, progress: BatchProgress) -> None:
        print(f"finalized {batch_id}", flush=True)

    client = client_from_env()
    async with AsyncBatchStateManager(
        client,
        collection=collection,
        mode=MigrationMode.DUAL_WRITE,
        on_complete=on_complete,
        callback_lease=2.0,
        fault_injector=slow,
    ) as manager:
        consumer = await PullConsumer(manager, subscription, max_outstanding=outstanding).start()
        drained = drain_on_sigterm(consumer, grace=8.0)
        print("ready", flush=True)
        await drained
        await consumer.aclose()
        print("stats " + json.dumps(dataclasses.asdict(consumer.stats())), flush=True)
    await aclose_client(client)


if __name__ == "__main__":
    c, s, d, n = sys.argv[1:5]
    asyncio.run(main(c, s, float(d), int(n)))
