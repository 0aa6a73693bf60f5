"""Multi-process cells: each worker is a spawned process with its own client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.testing import EmulatorInfo, aclose_client, make_client

from ._load import Load, Player, drive

_barrier: Any = None


def init_worker(barrier: Any) -> None:
    """Pool initializer: the barrier every job of the pool waits at before it starts."""
    global _barrier
    _barrier = barrier


@dataclass(frozen=True)
class Job:
    """One process's part of a cell (picklable, for the process pool)."""

    host: str
    project: str
    collection: str
    strategy: str
    batch_id: str
    work: tuple[Player, ...]
    concurrency: int
    budget: float
    grace: float


def worker(job: Job) -> Load:
    """Run ``job`` in this (pool) process."""
    return asyncio.run(_worker_load(job))


@contextlib.asynccontextmanager
async def worker_client(
    host: str, project: str, collection: str, document: str
) -> AsyncIterator[AsyncClient]:
    """A worker process's client, connected before the clock starts as a running instance
    is (one read of ``document`` opens the channel: TCP, HTTP/2, several round trips
    through the delay proxy), yielded once every process is ready: they start together."""
    client = make_client(EmulatorInfo(host, project, None))
    try:
        await client.collection(collection).document(document).get()
        await asyncio.to_thread(_barrier.wait, 120)
        yield client
    finally:
        await aclose_client(client)


async def _worker_load(job: Job) -> Load:
    async with worker_client(job.host, job.project, job.collection, job.batch_id) as client:
        return await drive(
            client,
            job.collection,
            job.strategy,
            job.batch_id,
            job.work,
            concurrency=job.concurrency,
            budget=job.budget,
            grace=job.grace,
        )
