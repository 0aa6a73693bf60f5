"""A coordinator consuming completion messages from a queue with an anyio task group.

Workers report "player P of batch B finished with N predictions" on a queue
(an anyio memory object stream here, standing in for Pub/Sub, SQS or Redis).
Delivery is at least once, so some messages arrive twice. A few consumer tasks
record every message; redeliveries come back as DUPLICATE and count nothing,
and exactly one call sees ``batch_completed``.

Run it against the Firestore emulator::

    gcloud emulators firestore start --host-port=localhost:8080 &
    FIRESTORE_EMULATOR_HOST=localhost:8080 python examples/queue_coordinator.py

It exits 0 after checking the batch's final progress.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from collections import Counter
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, CompletionStatus, MigrationMode
from async_batchstate.testing import aclose_client

PLAYERS = 40
CONSUMERS = 8
REDELIVERED = 10


@dataclass(frozen=True)
class CompletionMessage:
    """One worker's report, as it would arrive from a message broker."""

    batch_id: str
    player: str
    predictions_count: int


async def deliver(
    send: MemoryObjectSendStream[CompletionMessage], messages: list[CompletionMessage]
) -> None:
    """The broker: every message once, then some again (at-least-once delivery)."""
    rng = random.Random(7)
    redeliveries = rng.sample(messages, REDELIVERED)
    async with send:
        for message in rng.sample(messages, len(messages)) + redeliveries:
            await send.send(message)


async def consume(
    name: str,
    receive: MemoryObjectReceiveStream[CompletionMessage],
    manager: AsyncBatchStateManager,
    statuses: Counter[CompletionStatus],
) -> None:
    """Record each message; acknowledge it (here: just move on) only after it is recorded."""
    async with receive:
        async for message in receive:
            result = await manager.record_completion(
                message.batch_id, message.player, message.predictions_count
            )
            statuses[result.status] += 1
            if result.batch_completed:
                print(f"{name}: batch {message.batch_id} completed with {message.player}")


async def main() -> int:
    """Run the coordinator; 0 if the batch finished exactly as expected."""
    if not os.environ.get("FIRESTORE_EMULATOR_HOST") and not os.environ.get("GOOGLE_CLOUD_PROJECT"):
        print("set FIRESTORE_EMULATOR_HOST (or GOOGLE_CLOUD_PROJECT)", file=sys.stderr)
        return 2
    client = AsyncClient(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "demo-async-batchstate"))
    collection = f"example_queue_{uuid.uuid4().hex[:8]}"
    batch_id = "batch-1"
    players = [f"player-{i:03d}" for i in range(PLAYERS)]
    messages = [CompletionMessage(batch_id, p, i % 5 + 1) for i, p in enumerate(players)]
    statuses: Counter[CompletionStatus] = Counter()
    try:
        async with AsyncBatchStateManager(
            client, collection=collection, mode=MigrationMode.DUAL_WRITE
        ) as manager:
            await manager.create_batch(batch_id, expected_players=players)
            send, receive = anyio.create_memory_object_stream[CompletionMessage](100)
            async with anyio.create_task_group() as tg:
                tg.start_soon(deliver, send, messages)
                for n in range(CONSUMERS):
                    tg.start_soon(consume, f"consumer-{n}", receive.clone(), manager, statuses)
                receive.close()  # the clones keep the stream open
            progress = await manager.get_progress(batch_id)
            print(f"statuses: {dict((s.value, n) for s, n in statuses.items())}")
            stats = manager.stats()
            print(
                f"progress: {progress.completed_count}/{progress.expected_count} players, "
                f"{progress.total_predictions} predictions, status {progress.status}; "
                f"{stats.commits} commits for {stats.recorded + stats.duplicates} "
                f"completions, p50 {stats.latency_p50 * 1000:.0f} ms"
            )
    finally:
        await aclose_client(client)

    expected_total = sum(m.predictions_count for m in messages)
    ok = (
        statuses == Counter({CompletionStatus.RECORDED: PLAYERS, CompletionStatus.DUPLICATE: 10})
        and progress.is_finalized
        and progress.completed_count == PLAYERS
        and progress.total_predictions == expected_total
    )
    print("OK" if ok else "UNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
