"""Cancelled callers, callers whose deadline passes, and shutdown with groups in flight.

A caller that stops waiting never tears a write: its completion is recorded
whole or not at all, the callers it shared a transaction with are unaffected,
and recording it again completes the batch exactly (finalized once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    ManagerClosedError,
    MigrationMode,
    RetryExhaustedError,
)
from async_batchstate.testing import FaultPoint, batch_violations

from ..helpers import FaultGate, ManagerFactory

pytestmark = [
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
    pytest.mark.guarantee("cancellation"),
]


class Slow:
    """Stretch a write attempt by ``seconds`` at ``point`` (widens the windows to cancel in)."""

    def __init__(self, point: FaultPoint, seconds: float) -> None:
        self.point = point
        self.seconds = seconds

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is self.point:
            await asyncio.sleep(self.seconds)


@pytest.mark.parametrize("mode", [MigrationMode.DUAL_WRITE, MigrationMode.LEGACY])
async def test_random_cancellations_then_rerecording_completes_exactly(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """30% of callers cancelled at random moments (queued, mid-write): re-recording is exact."""
    rng = random.Random(99)
    finalized: list[str] = []
    manager = make_manager(
        mode=mode,
        max_group_size=10,
        fault_injector=Slow(FaultPoint.AFTER_READS, 0.01),
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": i % 6 for i in range(200)}
    await manager.create_batch("b", expected_players=list(counts))
    tasks = {
        p: asyncio.create_task(manager.record_completion("b", p, n)) for p, n in counts.items()
    }
    victims = rng.sample(sorted(counts), 60)
    for player in victims:
        await asyncio.sleep(rng.uniform(0, 0.01))
        tasks[player].cancel()
    gathered = await asyncio.gather(*tasks.values(), return_exceptions=True)
    outcomes = dict(zip(tasks, gathered, strict=True))

    survivors = {p: o for p, o in outcomes.items() if p not in victims}
    assert all(isinstance(o, CompletionResult) for o in survivors.values())
    # Mid-way, whatever the cancelled ones did, the structures agree with each other.
    assert [] == await batch_violations(firestore_client, batch_collection, "b", mode)

    again = await asyncio.gather(*(manager.record_completion("b", p, counts[p]) for p in victims))
    results = [o for o in outcomes.values() if isinstance(o, CompletionResult)] + again
    recorded = [r.player for r in results if r.status is CompletionStatus.RECORDED]
    assert len(set(recorded)) == len(recorded)
    assert 1 == sum(r.batch_completed for r in results)
    assert ["b"] == finalized
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", mode, expected=counts, require_finalized=True
    )


@pytest.mark.guarantee("deadline")
async def test_caller_deadline_passes_mid_write_then_redelivery_is_exact(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A caller whose timeout ends mid-write gets a typed "not confirmed in time" error in time
    (CompletionTimeoutError, or RetryExhaustedError when the group's budget, its callers'
    deadlines, runs out first); the attempt is abandoned uncommitted (never torn) and the
    redelivery records it exactly once."""
    stuck = FaultGate(FaultPoint.BEFORE_COMMIT, hold=True)
    manager = make_manager(fault_injector=stuck)
    await manager.create_batch("b", expected_count=1)

    started = time.monotonic()
    with pytest.raises((CompletionTimeoutError, RetryExhaustedError)):
        await manager.record_completion("b", "p", 4, timeout=0.2)
    assert time.monotonic() - started < 0.2 + 0.5

    # Nothing late: the staged attempt is cancelled before its commit, never left to finish.
    await stuck.wait_abandoned()
    stuck.release()
    assert 1 == stuck.abandoned
    assert 0 == (await manager.get_progress("b")).completed_count
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", manager.mode, expected={}
    )
    again = await manager.record_completion("b", "p", 4)
    assert (CompletionStatus.RECORDED, True) == (again.status, again.batch_completed)
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected={"p": 4},
        require_finalized=True,
    )


async def test_shutdown_with_groups_in_flight_fails_them_typed_and_rerecording_is_exact(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """aclose(drain_timeout) with slow groups in flight: ManagerClosedError within the drain
    time, no torn group; a new manager re-records everything exactly, finalized once."""
    finalized: list[str] = []
    stuck = FaultGate(FaultPoint.BEFORE_COMMIT, count=2, hold=True)
    slow = make_manager(
        max_group_size=15,
        max_in_flight_per_batch=2,
        fault_injector=stuck,
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": 1 + i % 3 for i in range(90)}
    await slow.create_batch("b", expected_players=list(counts))
    tasks = [asyncio.create_task(slow.record_completion("b", p, n)) for p, n in counts.items()]
    await stuck.wait()  # two groups staged and held before their commit, the rest queued

    started = time.monotonic()
    await slow.aclose(drain_timeout=0.2)
    closing = time.monotonic() - started
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert closing < 0.2 + 1.0
    assert len(stuck.arrivals) == stuck.abandoned  # every staged attempt cut before its commit
    assert all(isinstance(o, ManagerClosedError) for o in outcomes), outcomes[:3]
    with pytest.raises(ManagerClosedError):
        await slow.record_completion("b", "p0", 1)
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", slow.mode, expected={}
    )

    fresh = make_manager(on_complete=lambda b, _p: finalized.append(b))
    results = await asyncio.gather(*(fresh.record_completion("b", p, n) for p, n in counts.items()))
    assert {CompletionStatus.RECORDED} == {r.status for r in results}
    assert 1 == sum(r.batch_completed for r in results)
    assert ["b"] == finalized
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        fresh.mode,
        expected=counts,
        require_finalized=True,
    )


async def test_drained_shutdown_confirms_every_queued_completion(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """aclose() with a drain time long enough: every queued and in-flight caller is confirmed."""
    held = FaultGate(FaultPoint.BEFORE_COMMIT, hold=True)
    manager = make_manager(max_group_size=10, fault_injector=held)
    counts = {f"p{i}": i for i in range(60)}
    await manager.create_batch("b", expected_players=list(counts))
    tasks = [asyncio.create_task(manager.record_completion("b", p, n)) for p, n in counts.items()]
    await held.wait()  # a group is staged before its commit, the rest queued

    # aclose() stops new work before its first await; the held group goes on right after.
    asyncio.get_running_loop().call_soon(held.release)
    await manager.aclose(drain_timeout=30)
    results = await asyncio.gather(*tasks)

    assert {CompletionStatus.RECORDED} == {r.status for r in results}
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected=counts,
        require_finalized=True,
    )


async def test_no_write_starts_after_the_drain_timeout(make_manager: ManagerFactory) -> None:
    """Once the drain time is over, queued completions are failed, never started."""
    stuck = FaultGate(FaultPoint.BEFORE_COMMIT, count=2, hold=True)
    manager = make_manager(max_group_size=15, max_in_flight_per_batch=2, fault_injector=stuck)
    await manager.create_batch("b", expected_count=90)
    tasks = [asyncio.create_task(manager.record_completion("b", f"p{i}", 1)) for i in range(90)]
    await stuck.wait()

    await manager.aclose(drain_timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)

    assert 2 == len(stuck.arrivals)
