"""Drive one strategy at a fixed concurrency, check the documents, and the raw-write ceiling."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager
from async_batchstate.testing import RpcCounter

from ._strategies import (
    BY_PLAYER,
    COMPLETIONS,
    COUNT,
    MODE,
    PLAYERS,
    STRATEGIES,
    TOTAL,
    TOTAL_SUB,
    Recorder,
    completion_doc,
    counters_update,
    legacy_update,
)

Advance = Callable[[int], None]
Player = tuple[str, int]

CANCEL_GRACE = 2.0
"""Seconds a stalled cell's cancelled callers get to finish before they are abandoned
(the default of ``drive``'s ``grace``)."""
_ABANDONED: set[asyncio.Task[None]] = set()  # referenced until their client is closed


def players(ops: int, prefix: str = "p") -> list[Player]:
    """``ops`` distinct players with 1-5 predictions each."""
    return [(f"{prefix}{i:06d}", i % 5 + 1) for i in range(ops)]


def deliveries(
    work: Sequence[Player], processes: int, redeliver: float, *, window: int, seed: int = 1
) -> list[list[Player]]:
    """Split ``work`` over ``processes`` as Pub/Sub push would, with redeliveries.

    Message ``i`` goes to process ``i % processes``. A ``redeliver`` share of the
    players (chosen with ``seed``) is delivered once more, to a random process, within
    ``window`` messages after the first delivery: with ``window`` about the callers in
    flight, the same player is often in flight in two processes at once. Each
    process takes its messages in that global order, so the processes move through
    the sequence together.
    """
    rng = random.Random(seed)
    slots: list[tuple[float, int, Player]] = [(i, i % processes, p) for i, p in enumerate(work)]
    again = rng.sample(range(len(work)), round(redeliver * len(work)))
    slots += [(i + rng.uniform(0, window), rng.randrange(processes), work[i]) for i in again]
    slots.sort(key=lambda slot: slot[0])
    out: list[list[Player]] = [[] for _ in range(processes)]
    for _, process, player in slots:
        out[process].append(player)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q / 100) - 1))]


@dataclass
class Load:
    """What one process saw while driving one strategy (picklable, mergeable)."""

    started: float  # wall clock, to merge processes
    elapsed: float
    stalled: bool
    latencies: list[float] = field(default_factory=list)
    attempts_each: list[int] = field(default_factory=list)
    succeeded: dict[str, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    commits: int = 0
    aborts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    rpcs: dict[str, int] = field(default_factory=dict)  # RPCs on the wire, by method


async def create_batch(client: AsyncClient, collection: str, batch_id: str, expected: int) -> None:
    """Create the batch document through the library, so every strategy starts alike."""
    async with AsyncBatchStateManager(client, collection=collection, mode=MODE) as manager:
        await manager.create_batch(batch_id, expected_count=expected)


def note_error(errors: Counter[str], examples: dict[str, str], exc: Exception) -> None:
    """Count ``exc`` by its type; keep the first message of each type (300 characters)."""
    name = type(exc).__name__
    errors[name] += 1
    examples.setdefault(name, str(exc)[:300])


async def drive(
    client: AsyncClient,
    collection: str,
    strategy: str,
    batch_id: str,
    work: Sequence[Player],
    *,
    concurrency: int,
    budget: float,
    advance: Advance = lambda n: None,
    recorder: Recorder | None = None,
    grace: float = CANCEL_GRACE,
) -> Load:
    """``concurrency`` callers record ``work`` in a closed loop; stop them after ``budget`` s.

    Callers still running then are cancelled, and abandoned if they have not ended
    ``grace`` s later.

    Every RPC the strategy makes on ``client`` meanwhile is counted, by method (for
    the manager that includes its background validation reads). A ``recorder`` given
    is used (and left open) instead of a new one of ``strategy``; the costs are this
    drive's share of its counters.
    """
    rpcs = RpcCounter().attach(client) if client is not None else RpcCounter()
    own = recorder is None
    recorder = recorder or STRATEGIES[strategy].open(client, collection)
    before = recorder.counters()
    load = Load(started=time.time(), elapsed=0.0, stalled=False)
    queue = iter(work)  # shared: each completion is taken by exactly one caller
    cut = False  # the budget ran out: what callers see from now on is not counted

    async def caller() -> None:
        for player, count in queue:
            t0 = time.perf_counter()
            try:
                attempts = await recorder.record(batch_id, player, count)
            except Exception as exc:
                if cut:
                    return
                note_error(load.errors, load.error_examples, exc)
            else:
                if cut:
                    return
                load.latencies.append(time.perf_counter() - t0)
                load.attempts_each.append(attempts)
                load.succeeded[player] = count
            advance(1)

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(caller()) for _ in range(min(concurrency, len(work)))]
    try:
        done, pending = await asyncio.wait(tasks, timeout=budget)
        load.elapsed = time.perf_counter() - t0
        load.stalled = bool(pending)
        cut = True
        for task in pending:  # a stalled strategy is reported, not waited for
            task.cancel()
        if pending:
            # A cancelled plain transaction sends a Rollback, and the emulator can hold a
            # Rollback behind the lock waits of the very reads that were cancelled: do not
            # wait for those for ever. Closing the client (after the cell) ends them.
            _, stuck = await asyncio.wait(pending, timeout=grace)
            _ABANDONED.update(stuck)
            for task in stuck:
                task.add_done_callback(_ABANDONED.discard)
        for task in done:
            task.result()  # a bug in the harness must not pass silently
    finally:
        if own:
            await recorder.aclose()
        rpcs.detach()
    costs = recorder.counters()  # this drive's share only
    load.attempts = costs.attempts - before.attempts
    load.commits = costs.commits - before.commits
    aborts = Counter(costs.aborts)
    aborts.subtract(before.aborts)
    load.aborts = {k: v for k, v in aborts.items() if v}
    load.duplicates = costs.duplicates - before.duplicates
    load.rpcs = {k: v for k, v in sorted(rpcs.counts.items()) if v}
    return load


async def check_batch(
    client: AsyncClient, collection: str, batch_id: str, succeeded: dict[str, int]
) -> dict[str, Any]:
    """Every structure agrees, exactly, and no confirmed completion is missing."""
    ref = client.collection(collection).document(batch_id)
    doc = (await ref.get()).to_dict() or {}
    docs = {
        snap.id: int((snap.to_dict() or {}).get("predictions_count", -1))
        async for snap in ref.collection(COMPLETIONS).stream()
    }
    array = list(doc.get(PLAYERS, []))
    total = sum(docs.values())
    checks = {
        "completed_count == completion docs": doc.get(COUNT) == len(docs),
        "completed_players == completion docs": sorted(array) == sorted(docs),
        "predictions_by_player == completion docs": doc.get(BY_PLAYER, {}) == docs,
        "total_predictions exact": doc.get(TOTAL) == total,
        "total_predictions_subcoll exact": doc.get(TOTAL_SUB) == total,
        "no confirmed completion lost": all(docs.get(p) == n for p, n in succeeded.items()),
    }
    return {
        "ok": all(checks.values()),
        "failed_checks": [name for name, ok in checks.items() if not ok],
        "recorded": len(docs),
        "confirmed": len(succeeded),
    }


async def ceiling(
    client: AsyncClient,
    collection: str,
    batch_id: str,
    docs: int,
    *,
    group: int = 250,
    in_flight: int = 4,
    advance: Advance = lambda n: None,
) -> dict[str, Any]:
    """Raw ``WriteBatch``es of ``group`` completion docs + one transform update of the batch."""
    await create_batch(client, collection, batch_id, docs)
    ref = client.collection(collection).document(batch_id)
    work = players(docs)
    chunks = iter([dict(work[i : i + group]) for i in range(0, docs, group)])

    async def writer() -> None:
        for chunk in chunks:
            wb = client.batch()
            for player, count in chunk.items():
                wb.set(ref.collection(COMPLETIONS).document(player), completion_doc(player, count))
            wb.update(ref, {**legacy_update(chunk), **counters_update(chunk)})
            await wb.commit()
            advance(len(chunk))

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(in_flight)))
    elapsed = time.perf_counter() - t0
    return {
        "docs": docs,
        "group": group,
        "in_flight": in_flight,
        "elapsed_s": elapsed,
        "docs_per_s": docs / elapsed,
        "consistency": await check_batch(client, collection, batch_id, dict(work)),
    }


def summarise(
    loads: list[Load],
    *,
    scenario: str,
    strategy: str,
    concurrency: int,
    ops: int,
    consistency: dict[str, Any],
    processes: int = 1,
    parallel: bool = True,
    redeliver: float = 0.0,
) -> dict[str, Any]:
    """One result cell from the loads of one or more processes (or sequential rounds).

    ``ops`` counts messages (a redelivery is a second message of the same player);
    ``succeeded`` counts calls that returned normally, duplicates included.
    """
    latencies = [x for load in loads for x in load.latencies]
    attempts_each = Counter(a for load in loads for a in load.attempts_each)
    succeeded = len(latencies)
    errors = sum((load.errors for load in loads), Counter[str]())
    aborts = sum((Counter(load.aborts) for load in loads), Counter[str]())
    rpcs = sum((Counter(load.rpcs) for load in loads), Counter[str]())
    if parallel:
        elapsed = max(x.started + x.elapsed for x in loads) - min(x.started for x in loads)
    else:
        elapsed = sum(load.elapsed for load in loads)
    attempts = sum(load.attempts for load in loads)
    commits = sum(load.commits for load in loads)
    failed = sum(errors.values())
    return {
        "scenario": scenario,
        "strategy": strategy,
        "label": STRATEGIES[strategy].label,
        "processes": processes,
        "concurrency": concurrency,
        "redeliver": redeliver,
        "ops": ops,
        "succeeded": succeeded,
        "failed": failed,
        "unfinished": ops - succeeded - failed,
        "stalled": any(load.stalled for load in loads),
        "elapsed_s": elapsed,
        "completions_per_s": succeeded / elapsed if elapsed else 0.0,
        "fraction_of_ceiling": None,  # filled in once the run's ceiling is known
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=0.0) * 1e3,
        "attempts": attempts,
        "attempts_per_completion": attempts / max(1, succeeded + failed),
        "aborts": sum(aborts.values()),
        "aborts_by_cause": dict(aborts),
        "commits": commits,
        "commits_per_completion": commits / max(1, succeeded),
        "duplicates": sum(load.duplicates for load in loads),
        "rpcs": dict(sorted(rpcs.items())),
        "rpcs_per_completion": sum(rpcs.values()) / max(1, succeeded),
        "commit_rpcs_per_commit": rpcs["Commit"] / commits if commits else 0.0,
        "attempts_histogram": {str(k): v for k, v in sorted(attempts_each.items())},
        "errors": dict(errors),
        "error_examples": {k: v for load in loads for k, v in load.error_examples.items()},
        "consistency": consistency,
        "latencies_ms": [round(x * 1e3, 2) for x in latencies],
    }
