"""Multi-process cells: each worker is a spawned process with its own client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.testing import EmulatorInfo, aclose_client, make_client

from ._load import Load, Player, drive

_barrier: Any = None
T = TypeVar("T")


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


_loop: asyncio.AbstractEventLoop | None = None


def run_job(job: Coroutine[Any, Any, T]) -> T:
    """Run one job on this pool process's event loop, the same loop for every job.

    grpc.aio binds its completion-queue poller to the first loop it runs on: a new
    ``asyncio.run`` per job left it posting to a closed loop ("Event loop is closed").
    """
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(job)


def worker(job: Job) -> Load:
    """Run ``job`` in this (pool) process."""
    return run_job(_worker_load(job))


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
