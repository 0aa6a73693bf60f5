"""One process's share of an open-loop step: dispatch arrivals on their schedule."""

from __future__ import annotations

import asyncio
import resource
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.testing import RpcCounter

from ._load import _ABANDONED, note_error
from ._strategies import STRATEGIES
from ._worker import run_job, worker_client

Arrival = tuple[float, str, str, int]
"""``(seconds after the start, batch id, player, predictions)``: one message."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: gRPC's too
    return usage.ru_utime + usage.ru_stime


@dataclass
class OpenLoad:
    """What one process saw in one step (picklable)."""

    messages: int
    latencies: list[float] = field(default_factory=list)  # s from scheduled arrival, finished
    cut: list[float] = field(default_factory=list)  # unfinished: s from arrival to the cut
    lags: list[float] = field(default_factory=list)  # s each dispatch fell behind its schedule
    succeeded: dict[str, dict[str, int]] = field(default_factory=dict)  # batch -> player -> n
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    cpu_s: float = 0.0
    elapsed: float = 0.0
    rpcs: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    commits: int = 0
    grouped: int = 0
    duplicates: int = 0
    validation_reads: int | None = None


async def open_loop(
    client: AsyncClient,
    collection: str,
    strategy: str,
    arrivals: Sequence[Arrival],
    *,
    drain: float,
    grace: float,
    warm: bool = False,
    ceiling: float = 0.0,
) -> OpenLoad:
    """Dispatch ``arrivals`` on their schedule, each its own task; cut at ``drain`` s after.

    CPU is this process's (``getrusage``) from the first arrival until the
    recorder is closed (the manager's background work included). ``warm``: the
    recorder reads what it keeps per batch first, unmeasured (a slice of long
    batches, every one of which this process has written to before).
    """
    loop = asyncio.get_running_loop()
    recorder = STRATEGIES[strategy].recorder(client, collection, ceiling)
    if warm:
        await recorder.prepare(sorted({a[1] for a in arrivals}))
    rpcs = RpcCounter().attach(client)
    before = recorder.counters()
    load = OpenLoad(messages=len(arrivals))
    succeeded: defaultdict[str, dict[str, int]] = defaultdict(dict)
    ended = False  # the cut: what returns later is not counted

    async def one(due: float, batch_id: str, player: str, count: int) -> None:
        try:
            await recorder.record(batch_id, player, count)
        except Exception as exc:
            if ended:
                return
            note_error(load.errors, load.error_examples, exc)
        else:
            if not ended:
                load.latencies.append(loop.time() - due)
                succeeded[batch_id][player] = count

    cpu0, t0 = _cpu(), loop.time() + 0.05
    tasks: dict[asyncio.Task[None], float] = {}
    for offset, batch_id, player, count in arrivals:
        due = t0 + offset
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        load.lags.append(max(0.0, loop.time() - due))
        tasks[asyncio.create_task(one(due, batch_id, player, count))] = due
    try:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain)
            ended = True
            now = loop.time()
            load.cut = [now - tasks[task] for task in pending]
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=grace)
                _ABANDONED.update(stuck)
                for task in stuck:
                    task.add_done_callback(_ABANDONED.discard)
        load.elapsed = loop.time() - t0
    finally:
        await recorder.aclose()
        rpcs.detach()
    load.cpu_s = _cpu() - cpu0
    costs = recorder.counters()
    load.attempts = costs.attempts - before.attempts
    load.commits = costs.commits - before.commits
    load.grouped = costs.grouped - before.grouped
    load.duplicates = costs.duplicates - before.duplicates
    if costs.validation_reads is not None:
        load.validation_reads = costs.validation_reads - (before.validation_reads or 0)
    load.rpcs = {k: v for k, v in sorted(rpcs.counts.items()) if v}
    load.succeeded = dict(succeeded)
    return load


@dataclass(frozen=True)
class OpenJob:
    """One process's part of a step (picklable, for the process pool)."""

    host: str
    project: str
    collection: str
    strategy: str
    arrivals: tuple[Arrival, ...]
    drain: float
    grace: float
    warm: bool = False
    ceiling: float = 0.0


def open_worker(job: OpenJob) -> OpenLoad:
    """Run ``job`` in this (pool) process."""
    return run_job(_open_worker_load(job))


async def _open_worker_load(job: OpenJob) -> OpenLoad:
    async with worker_client(job.host, job.project, job.collection, "connect") as client:
        return await open_loop(
            client,
            job.collection,
            job.strategy,
            job.arrivals,
            drain=job.drain,
            grace=job.grace,
            warm=job.warm,
            ceiling=job.ceiling,
        )
