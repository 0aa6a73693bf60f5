"""Group commit, exactly-once finalization, cancellation, shutdown and observability on the emulator."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    BatchProgress,
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    ManagerClosedError,
    MigrationMode,
    WriteFailedError,
)
from async_batchstate.instrumentation import BatchFinalized, Event, GroupCommitted
from async_batchstate.testing import FaultPoint

from ..helpers import FaultGate, ManagerFactory, read_batch, read_completions

pytestmark = [
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
    pytest.mark.guarantee("cancellation"),
]


async def exact(client: AsyncClient, collection: str, batch_id: str, n: int) -> None:
    """The batch holds players 0..n-1 with count i % 5, in every structure, finalized once."""
    doc = await read_batch(client, collection, batch_id)
    completions = await read_completions(client, collection, batch_id)
    total = sum(i % 5 for i in range(n))
    assert n == len(completions) == doc["completed_count"] == len(doc["completed_players"])
    assert total == doc["total_predictions"] == doc["total_predictions_subcoll"]
    assert total == sum(c["predictions_count"] for c in completions.values())
    assert "complete" == doc["status"]


async def test_1000_completions_from_200_tasks(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Zero failures, exact counters, one batch_completed=True, one on_complete call."""
    calls: list[tuple[str, BatchProgress]] = []
    manager = make_manager(on_complete=lambda b, p: calls.append((b, p)))
    await manager.create_batch("b", expected_count=1000)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(1000):
        queue.put_nowait(i)
    results = []

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            results.append(await manager.record_completion("b", f"p{i}", predictions_count=i % 5))

    await asyncio.gather(*[worker() for _ in range(200)])

    assert 1000 == sum(r.status is CompletionStatus.RECORDED for r in results)
    assert 1 == sum(r.batch_completed for r in results)
    assert [("b", 1000)] == [(b, p.completed_count) for b, p in calls]
    assert calls[0][1].is_finalized
    await exact(firestore_client, batch_collection, "b", 1000)
    stats = manager.stats()
    assert (1000, 0, 0, 1) == (
        stats.recorded,
        stats.duplicates,
        stats.failed,
        stats.batches_finalized,
    )
    # Group commit: far fewer transactions than completions.
    assert stats.commits < 100


async def test_groups_share_transactions_and_each_caller_gets_its_own_outcome(
    make_manager: ManagerFactory,
) -> None:
    """Concurrent callers, some duplicates of each other in one group: per-caller outcomes."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=10)
    players = [f"p{i % 10}" for i in range(30)]
    results = await asyncio.gather(
        *[manager.record_completion("b", p, predictions_count=1) for p in players]
    )
    assert [p for p in players] == [r.player for r in results]
    assert 10 == sum(r.status is CompletionStatus.RECORDED for r in results)
    assert 20 == sum(r.status is CompletionStatus.DUPLICATE for r in results)
    assert max(r.group_size for r in results) > 1


async def test_coalescing_off_runs_one_transaction_per_completion(
    make_manager: ManagerFactory,
) -> None:
    """coalesce=False: every committed transaction carries exactly one completion."""
    manager = make_manager(coalesce=False)
    await manager.create_batch("b", expected_count=20)
    await asyncio.gather(
        *[manager.record_completion("b", f"p{i}", predictions_count=1) for i in range(20)]
    )
    assert {1: 20} == dict(manager.stats().group_sizes)


async def test_wait_until_complete_returns_final_progress(make_manager: ManagerFactory) -> None:
    """A waiter started before the completions wakes with the finalized progress."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["a", "b", "c"])
    waiter = asyncio.create_task(manager.wait_until_complete("b", timeout=30, poll_interval=5))
    for p in ["a", "b", "c"]:
        await manager.record_completion("b", p, predictions_count=2)
    progress = await waiter
    assert ("complete", 3, 6, ("a", "b", "c")) == (
        progress.status,
        progress.completed_count,
        progress.total_predictions,
        progress.completed_players,
    )


async def test_wait_until_complete_times_out_with_a_typed_error(
    make_manager: ManagerFactory,
) -> None:
    """An incomplete batch: CompletionTimeoutError after the timeout."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=2)
    with pytest.raises(CompletionTimeoutError):
        await manager.wait_until_complete("b", timeout=0.3, poll_interval=0.05)


async def test_a_missed_finalization_is_recovered_by_a_redelivery(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The finalizer fails after the last commit; a redelivery finalizes the batch exactly once."""
    calls: list[str] = []
    fail = True

    async def inject(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        nonlocal fail
        if at is FaultPoint.AFTER_COMMIT and fail:
            fail = False
            raise gexc.InvalidArgument("lost after commit")

    manager = make_manager(fault_injector=inject, on_complete=lambda b, p: calls.append(b))
    await manager.create_batch("b", expected_count=1)
    with pytest.raises(WriteFailedError):
        await manager.record_completion("b", "p", predictions_count=1)
    assert "in_progress" == (await read_batch(firestore_client, batch_collection, "b"))["status"]

    again = await manager.record_completion("b", "p", predictions_count=1)

    assert (CompletionStatus.DUPLICATE, True) == (again.status, again.batch_completed)
    assert ["b"] == calls


async def test_cancelled_callers_do_not_disturb_others_and_can_record_again(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """20% of callers cancelled at random points: state consistent; re-recording completes exactly."""
    rng = random.Random(1234)
    manager = make_manager()
    await manager.create_batch("b", expected_count=400)
    tasks = [
        asyncio.create_task(manager.record_completion("b", f"p{i}", predictions_count=i % 5))
        for i in range(400)
    ]
    cancelled = rng.sample(range(400), 80)
    for i in cancelled:
        await asyncio.sleep(rng.random() * 0.002)
        tasks[i].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    survivors = [o for i, o in enumerate(outcomes) if i not in set(cancelled)]
    assert all(not isinstance(o, BaseException) for o in survivors)
    # A task may have finished before its cancel() arrived: its result counts too.
    answered = [o for o in outcomes if isinstance(o, CompletionResult)]

    # Whatever the cancelled ones did, the structures agree with each other.
    doc = await read_batch(firestore_client, batch_collection, "b")
    completions = await read_completions(firestore_client, batch_collection, "b")
    assert len(completions) == doc["completed_count"] == len(doc["completed_players"])

    again = await asyncio.gather(
        *[manager.record_completion("b", f"p{i}", predictions_count=i % 5) for i in cancelled]
    )
    assert 1 == sum(r.batch_completed for r in [*again, *answered])
    await exact(firestore_client, batch_collection, "b", 400)


async def test_closing_drains_in_flight_groups(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """aclose() while completions are queued: they are written, then new calls are refused."""
    started = FaultGate(FaultPoint.BEFORE_BEGIN)
    manager = make_manager(fault_injector=started)
    await manager.create_batch("b", expected_count=100)
    tasks = [
        asyncio.create_task(manager.record_completion("b", f"p{i}", predictions_count=i % 5))
        for i in range(100)
    ]
    await started.wait()  # the first group is being written, the rest queued
    await manager.aclose()
    results = await asyncio.gather(*tasks)
    assert 100 == sum(r.status is CompletionStatus.RECORDED for r in results)
    await exact(firestore_client, batch_collection, "b", 100)
    with pytest.raises(ManagerClosedError):
        await manager.record_completion("b", "late", predictions_count=1)


async def test_closing_with_a_short_drain_fails_the_rest_cleanly(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A stuck write past the drain timeout: callers get ManagerClosedError, nothing half-written."""
    stuck = FaultGate(FaultPoint.BEFORE_COMMIT, hold=True)  # never released
    manager = make_manager(fault_injector=stuck)
    await manager.create_batch("b", expected_count=50)
    tasks = [
        asyncio.create_task(manager.record_completion("b", f"p{i}", predictions_count=1))
        for i in range(50)
    ]
    await stuck.wait()
    await manager.aclose(drain_timeout=0.2)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ManagerClosedError) for o in outcomes)
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert (0, []) == (doc["completed_count"], doc["completed_players"])
    assert {} == await read_completions(firestore_client, batch_collection, "b")


async def test_hooks_receive_events_and_stats_add_up(make_manager: ManagerFactory) -> None:
    """GroupCommitted per transaction and one BatchFinalized; stats agree with the events."""
    events: list[Event] = []
    manager = make_manager(hooks=[events.append])
    await manager.create_batch("b", expected_count=30)
    await asyncio.gather(
        *[manager.record_completion("b", f"p{i}", predictions_count=1) for i in range(30)]
    )
    await manager.record_completion("b", "p0", predictions_count=1)

    committed = [e for e in events if isinstance(e, GroupCommitted)]
    finalized = [e for e in events if isinstance(e, BatchFinalized)]
    stats = manager.stats()
    assert 1 == len(finalized)
    assert 31 == sum(e.group_size for e in committed)
    assert len(committed) == stats.commits
    assert (30, 1) == (stats.recorded, stats.duplicates)
    assert sum(stats.group_sizes.values()) == stats.commits
    assert 0 < stats.latency_p50 <= stats.latency_p99 <= stats.latency_max
    assert "recorded=30" in repr(manager)


async def test_a_failing_hook_never_fails_a_completion(make_manager: ManagerFactory) -> None:
    """Hook exceptions are logged and ignored."""

    def bad_hook(event: Event) -> None:
        raise RuntimeError("hook bug")

    manager = make_manager(hooks=[bad_hook])
    await manager.create_batch("b", expected_count=1)
    result = await manager.record_completion("b", "p", predictions_count=1)
    assert result.batch_completed


async def test_a_member_that_breaks_its_group_fails_alone(make_manager: ManagerFactory) -> None:
    """A non-retryable error for one member: the group is split and only that caller fails."""

    async def reject_bad(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if at is FaultPoint.AFTER_READS and "bad" in players:
            raise gexc.InvalidArgument("this member is bad")

    manager = make_manager(fault_injector=reject_bad)
    await manager.create_batch("b", expected_count=21)
    players = [*(f"p{i}" for i in range(10)), "bad", *(f"q{i}" for i in range(10))]
    outcomes = await asyncio.gather(
        *[manager.record_completion("b", p, predictions_count=1) for p in players],
        return_exceptions=True,
    )
    failed = [p for p, o in zip(players, outcomes, strict=True) if isinstance(o, BaseException)]
    assert ["bad"] == failed
    assert isinstance(outcomes[10], WriteFailedError)


async def test_rate_limit_bounds_attempts_per_second(make_manager: ManagerFactory) -> None:
    """With rate_limit=5/s and coalescing off, 15 completions need over a second of wall time."""
    manager = make_manager(coalesce=False, rate_limit=5)
    await manager.create_batch("b", expected_count=15)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(
        *[manager.record_completion("b", f"p{i}", predictions_count=1) for i in range(15)]
    )
    # Burst of 5 admitted at once, then 5 per second: the last 10 need >= 2 s minus slack.
    assert loop.time() - start >= 1.5


@pytest.mark.parametrize("mode", [MigrationMode.LEGACY, MigrationMode.SUBCOLLECTION_ONLY])
async def test_finalization_in_every_counting_structure(
    mode: MigrationMode, make_manager: ManagerFactory
) -> None:
    """LEGACY counts by the array, SUBCOLLECTION_ONLY by the counter: both finalize once."""
    finalized: list[str] = []
    manager = make_manager(mode=mode, on_complete=lambda b, p: finalized.append(b))
    await manager.create_batch("b", expected_count=20)
    results = await asyncio.gather(
        *[manager.record_completion("b", f"p{i % 20}", predictions_count=1) for i in range(40)]
    )
    assert 1 == sum(r.batch_completed for r in results)
    assert ["b"] == finalized
    assert (await manager.get_progress("b")).is_finalized
