"""Exactly-once outcomes around finalization: durable callbacks, shutdown, cancellation, memory.

The flip is exactly once; ``on_complete`` is at least once with one key, owed
in the batch document until it returns; every caller gets its result or
ManagerClosedError promptly; no per-batch state outlives the call needing it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    BatchProgress,
    CompletionStatus,
    InvalidCountError,
    ManagerClosedError,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.testing import EmulatorInfo, FaultPoint, batch_violations

from ..helpers import Keys, ManagerFactory, read_batch

pytestmark = [
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
    pytest.mark.guarantee("one-run-at-a-time-per-lease"),
]

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=20.0, attempt_timeout=10.0)

# A coordinator process whose on_complete kills it (SIGKILL) after the flip.
DIES_IN_CALLBACK = """
import asyncio, os, signal, sys
from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate._store.connect import client_from_env

async def main(collection):
    def die(batch_id, progress):
        print("FLIPPED", progress.finalization_key, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    manager = AsyncBatchStateManager(
        client_from_env(), collection=collection, mode=MigrationMode.DUAL_WRITE, on_complete=die
    )
    await manager.record_completion("b", "last", 1)

asyncio.run(main(sys.argv[1]))
"""


# A coordinator process whose on_complete (async) takes 2 s against a 0.5 s lease.
SLOW_CALLBACK = """
import asyncio, sys
from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate._store.connect import client_from_env

async def main(collection):
    async def slow(batch_id, progress):
        print("STARTED", progress.finalization_key, flush=True)
        await asyncio.sleep(2.0)
        print("RETURNING", flush=True)
    async with AsyncBatchStateManager(
        client_from_env(), collection=collection, mode=MigrationMode.DUAL_WRITE,
        on_complete=slow, callback_lease=0.5,
    ) as manager:
        result = await manager.record_completion("b", "last", 1)
        print("RECORDED", result.batch_completed, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_process_killed_between_flip_and_callback_leaves_it_owed_to_another(
    firestore_emulator: EmulatorInfo,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """SIGKILL inside on_complete: the flip stands, the callback stays owed, another process
    runs it once (with the same key), and it is then done."""
    keys = Keys()
    manager = make_manager(on_complete=keys, callback_lease=0.001)
    await manager.create_batch("b", expected_count=2)
    await manager.record_completion("b", "first", 1)
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "GOOGLE_CLOUD_PROJECT": firestore_emulator.project,
    }
    proc = subprocess.run(
        [sys.executable, "-c", DIES_IN_CALLBACK, batch_collection],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert -signal.SIGKILL == proc.returncode, proc.stderr
    key = proc.stdout.split()[-1]
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert ("complete", True) == (doc["status"], doc["callback_owed"])

    ran = await manager.deliver_owed_callbacks("b")
    again = await manager.deliver_owed_callbacks("b")

    assert (True, False) == (ran, again)
    assert [key] == keys.keys
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc


@pytest.mark.guarantee("callbacks-never-hold-a-caller")
async def test_a_callback_slower_than_its_lease_runs_once_across_two_processes(
    firestore_emulator: EmulatorInfo,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Another OS process finalizes the batch and runs a 2 s on_complete against a 0.5 s
    lease: it renews the lease, so this process's deliveries all find it held; its caller
    was answered before the callback ended, its close waited for it, and it is done once."""
    keys = Keys()
    manager = make_manager(on_complete=keys, callback_lease=0.5)
    await manager.create_batch("b", expected_count=2)
    await manager.record_completion("b", "first", 1)
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "GOOGLE_CLOUD_PROJECT": firestore_emulator.project,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SLOW_CALLBACK,
        batch_collection,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    tries: list[bool] = []
    async with asyncio.timeout(60):
        while not lines or not lines[-1].startswith("STARTED"):
            lines.append((await proc.stdout.readline()).decode().strip())
        reading = asyncio.ensure_future(proc.stdout.read())
        while not reading.done():
            tries.append(await manager.deliver_owed_callbacks("b"))
            await asyncio.sleep(0.05)
        lines.append((await reading).decode())
        assert 0 == await proc.wait()

    words = " ".join(lines).split()
    assert words.index("RECORDED") < words.index("RETURNING")  # the caller did not wait
    assert [] == keys.keys and len(tries) > 5 and not any(tries)
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc


async def test_an_owed_callback_waits_for_its_lease(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """While the finalizer's lease runs, nobody else runs its callback."""
    slow_started = asyncio.Event()

    async def slow(batch_id: str, progress: BatchProgress) -> None:
        slow_started.set()
        await asyncio.Event().wait()  # never returns: cut by the close below

    first = make_manager(on_complete=slow)
    await first.create_batch("b", expected_count=1)
    await first.record_completion("b", "p", 1)
    await slow_started.wait()
    keys = Keys()
    other = make_manager(on_complete=keys)  # the default 60 s lease

    assert False is await other.deliver_owed_callbacks("b")
    await first.aclose(drain_timeout=0.05)
    assert [] == keys.keys


async def test_close_with_a_slow_callback_answers_callers_and_leaves_it_owed(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """aclose(drain_timeout) with on_complete still running: the finalizing caller already
    has batch_completed, close returns promptly, the callback stays owed and runs later."""
    started = asyncio.Event()

    async def slow(batch_id: str, progress: BatchProgress) -> None:
        started.set()
        await asyncio.sleep(30)

    manager = make_manager(on_complete=slow)
    await manager.create_batch("b", expected_count=3)
    results = await asyncio.gather(*(manager.record_completion("b", f"p{i}", 1) for i in range(3)))
    await started.wait()

    async with asyncio.timeout(5):
        await manager.aclose(drain_timeout=0.1)

    assert 1 == sum(r.batch_completed for r in results)
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert True is doc["callback_owed"]
    keys = Keys()
    # Already finalized: finalize() flips nothing, and runs the owed callback.
    assert False is await make_manager(on_complete=keys, callback_lease=0.001).finalize("b")
    assert [f"b/{doc['finalised_by']}"] == keys.keys


async def test_close_while_a_group_is_being_split_fails_every_waiting_member_promptly(
    make_manager: ManagerFactory,
) -> None:
    """A group split after a fatal error, members retried one by one and slowly, when the
    manager closes: each caller gets its result or ManagerClosedError, never its timeout."""
    slow_alone = asyncio.Event()

    async def inject(point: FaultPoint, batch_id: str, players: Any) -> None:
        if point is FaultPoint.BEFORE_COMMIT and "bad" in players:
            if len(players) > 1:
                from google.api_core import exceptions as gexc

                raise gexc.PermissionDenied("injected: fatal for the whole group")
            slow_alone.set()
            await asyncio.sleep(30)

    manager = make_manager(fault_injector=inject, retry=FAST)
    await manager.create_batch("b", expected_count=10)
    calls = [
        asyncio.ensure_future(manager.record_completion("b", p, 1, timeout=60))
        for p in ["bad", "p1", "p2"]
    ]
    await slow_alone.wait()

    async with asyncio.timeout(5):
        await manager.aclose(drain_timeout=0.1)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert all(
        isinstance(o, ManagerClosedError) or o.status is CompletionStatus.RECORDED  # type: ignore[union-attr]
        for o in outcomes
    ), outcomes
    assert isinstance(outcomes[0], ManagerClosedError)


async def test_a_caller_cancelled_in_the_turn_its_group_resolves_hands_over_batch_completed(
    make_manager: ManagerFactory,
) -> None:
    """The finalizing caller is cancelled in the very turn its result arrives: the batch's
    next caller (a redelivery) is told batch_completed, so it is never lost."""
    callers: list[asyncio.Task[Any]] = []

    def cancel_on_flip(event: object) -> None:
        from async_batchstate.instrumentation import BatchFinalized

        if isinstance(event, BatchFinalized):
            callers[0].cancel()  # same turn: the group resolves right after this event

    manager = make_manager(hooks=[cancel_on_flip])
    await manager.create_batch("b", expected_count=1)
    callers.append(asyncio.ensure_future(manager.record_completion("b", "p", 1)))
    with pytest.raises(asyncio.CancelledError):
        await callers[0]

    again = await manager.record_completion("b", "p", 1)

    assert (CompletionStatus.DUPLICATE, True) == (again.status, again.batch_completed)


async def test_repeated_waits_on_finished_batches_leave_nothing_behind(
    make_manager: ManagerFactory,
) -> None:
    """wait_until_complete 10 times on each of 20 finalized batches: no Event (per-batch
    state) survives."""
    manager = make_manager(validation_rate=0.0)

    async def finished(batch_id: str) -> None:
        await manager.create_batch(batch_id, expected_count=1)
        await manager.record_completion(batch_id, "p", 1)

    await asyncio.gather(*(finished(f"b{i}") for i in range(20)))
    gc.collect()
    before = sum(isinstance(o, asyncio.Event) for o in gc.get_objects())

    for _ in range(10):
        await asyncio.gather(*(manager.wait_until_complete(f"b{i}") for i in range(20)))
    gc.collect()

    assert before == sum(isinstance(o, asyncio.Event) for o in gc.get_objects())


async def test_a_batch_spanning_the_rollout_finalizes_on_the_array_in_dual_write(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Players recorded by LEGACY writers, the last by a DUAL_WRITE writer before backfill:
    DUAL_WRITE counts the array, so that last completion finalizes the batch."""
    keys = Keys()
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_count=3)
    await legacy.record_completion("b", "p1", 1)
    await legacy.record_completion("b", "p2", 2)
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, on_complete=keys)

    last = await dual.record_completion("b", "p3", 3)

    assert last.batch_completed
    final = await dual.wait_until_complete("b", timeout=10)
    assert (True, 3, 6) == (final.is_finalized, final.completed_count, final.total_predictions)
    assert 1 == len(keys.keys)


async def test_counts_whose_total_could_overflow_are_refused_before_writing(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """With 2**31 expected completions, a count over (2**63 - 1) // 2**31 (and any count over
    2**32, the bound that keeps totals exact with extra players) is an InvalidCountError."""
    manager = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY)
    await manager.create_batch("b", expected_count=2**31)
    small = make_manager()
    await small.create_batch("s", expected_count=4)
    limit = (2**63 - 1) // 2**31

    with pytest.raises(InvalidCountError):
        await small.record_completion("s", "p", 2**32 + 1)
    with pytest.raises(InvalidCountError):
        await manager.record_completion("b", "p", limit + 1)
    ok = await manager.record_completion("b", "q", limit)

    assert CompletionStatus.RECORDED == ok.status
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert limit == doc["total_predictions_subcoll"]


async def test_a_rollout_batch_finalizes_on_every_mode_s_count_and_backfill_keeps_it(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """DUAL_WRITE_SUBCOLLECTION_READS counts completion docs plus legacy-only players: a batch
    whose first players were recorded by LEGACY writers completes with its last completion,
    which tells its caller and runs on_complete; backfill then finalizes nothing again."""
    from async_batchstate import Layout
    from async_batchstate.migration import backfill

    mode = MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_count=3)
    await legacy.record_completion("b", "p1", 1)
    await legacy.record_completion("b", "p2", 2)
    keys = Keys()
    dual = make_manager(mode=mode, on_complete=keys, callback_lease=0.001)
    last = await dual.record_completion("b", "p3", 3)
    final = await dual.wait_until_complete("b", timeout=10)
    async with asyncio.timeout(10):  # the wait starts the owed callback in the background
        while not keys.keys:
            await asyncio.sleep(0.02)

    summary = await backfill(firestore_client, Layout(batch_collection), mode)

    assert last.batch_completed
    assert 0 == summary.finalized
    assert (True, 3) == (final.is_finalized, final.completed_count)
    assert [final.finalization_key] == keys.keys
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", mode, require_finalized=True
    )
