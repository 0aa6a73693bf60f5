"""A worker process for the multi-process test: records players and prints its results as JSON.

Usage: python -m tests._mp_worker COLLECTION BATCH_ID FIRST COUNT REDELIVER_FIRST [MODE]
(MODE: a ``MigrationMode`` value, default dual_write; FIRESTORE_EMULATOR_HOST,
GOOGLE_CLOUD_PROJECT and MP_WORKER_DOCUMENT_WRITE_RATE come from the environment). Once its
manager is open it prints ``ready`` and waits for a line on stdin, so that the test starts
every process's load together; then it prints its results as one line of JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate._store.connect import client_from_env
from async_batchstate.testing import aclose_client


async def main(
    collection: str, batch_id: str, first: int, count: int, redeliver: int, mode: MigrationMode
) -> None:
    client = client_from_env()
    finalized: list[str] = []
    players = [f"p{i}" for i in range(first, first + count)]
    players += [f"p{i}" for i in range(redeliver, redeliver + count)]  # another process's share
    async with AsyncBatchStateManager(
        client,
        collection=collection,
        mode=mode,
        on_complete=lambda b, p: finalized.append(b),
        document_write_rate=float(os.environ.get("MP_WORKER_DOCUMENT_WRITE_RATE") or 0) or None,
    ) as manager:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # start together
        sem = asyncio.Semaphore(100)

        async def one(player: str) -> dict[str, object]:
            async with sem:
                r = await manager.record_completion(
                    batch_id, player, predictions_count=int(player[1:]) % 5
                )
                return {"player": player, "status": r.status.value, "completed": r.batch_completed}

        results = await asyncio.gather(*[one(p) for p in players])
        stats = manager.stats()
    await aclose_client(client)
    print(
        json.dumps(
            {
                "results": results,
                "finalized": finalized,
                "failed": stats.failed,
                "attempts": stats.attempts,
            }
        )
    )


if __name__ == "__main__":
    c, b, f, n, r = sys.argv[1:6]
    m = MigrationMode(sys.argv[6]) if len(sys.argv) > 6 else MigrationMode.DUAL_WRITE
    asyncio.run(main(c, b, int(f), int(n), int(r), m))
