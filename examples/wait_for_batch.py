"""A coordinator awaiting a batch with ``wait_until_complete`` while workers record.

The coordinator creates a batch, starts workers, and simply waits for the batch
to finish: ``wait_until_complete`` wakes as soon as this process finalizes it
(and polls, so it also sees a batch finalized by another process). The
``on_complete`` callback runs exactly once, for the one finalization.

Run it against the Firestore emulator::

    gcloud emulators firestore start --host-port=localhost:8080 &
    FIRESTORE_EMULATOR_HOST=localhost:8080 python examples/wait_for_batch.py

It exits 0 after checking the batch's final progress.
"""

from __future__ import annotations

import os
import random
import sys
import uuid

import anyio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, BatchProgress, MigrationMode
from async_batchstate.testing import aclose_client

PLAYERS = 25


async def worker(manager: AsyncBatchStateManager, batch_id: str, player: str, seed: int) -> None:
    """Pretend to compute predictions for ``player``, then report the completion."""
    rng = random.Random(seed)
    await anyio.sleep(rng.uniform(0.0, 0.2))
    await manager.record_completion(batch_id, player, predictions_count=seed % 3 + 1)


async def main() -> int:
    """Run the coordinator; 0 if the batch finished exactly as expected."""
    if not os.environ.get("FIRESTORE_EMULATOR_HOST") and not os.environ.get("GOOGLE_CLOUD_PROJECT"):
        print("set FIRESTORE_EMULATOR_HOST (or GOOGLE_CLOUD_PROJECT)", file=sys.stderr)
        return 2
    client = AsyncClient(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "demo-async-batchstate"))
    collection = f"example_wait_{uuid.uuid4().hex[:8]}"
    batch_id = "batch-1"
    players = [f"player-{i:03d}" for i in range(PLAYERS)]
    finalized: list[BatchProgress] = []

    async def on_complete(done_batch: str, progress: BatchProgress) -> None:
        print(f"on_complete: {done_batch} finished with {progress.total_predictions} predictions")
        finalized.append(progress)

    try:
        async with AsyncBatchStateManager(
            client, collection=collection, mode=MigrationMode.DUAL_WRITE, on_complete=on_complete
        ) as manager:
            await manager.create_batch(batch_id, expected_players=players)
            async with anyio.create_task_group() as tg:
                for seed, player in enumerate(players):
                    tg.start_soon(worker, manager, batch_id, player, seed)
                progress = await manager.wait_until_complete(batch_id, timeout=60)
                print(f"coordinator: {progress.completed_count}/{progress.expected_count} done")
    finally:
        await aclose_client(client)

    ok = (
        progress.is_finalized
        and progress.completed_players == tuple(players)
        and progress.total_predictions == sum(seed % 3 + 1 for seed in range(PLAYERS))
        and [progress.total_predictions] == [p.total_predictions for p in finalized]
    )
    print("OK" if ok else "UNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
