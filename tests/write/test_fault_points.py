"""Faults injected at every step of a write attempt, through the public ``fault_injector`` seam.

Steps (``FaultPoint``): before the transaction begins, after its reads, with
every write staged but not committed, and after the commit before any caller
is told. Whatever fails where, the batch's structures agree, a redelivery is
counted at most once, and the batch is finalized exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import CompletionStatus, MigrationMode, RetryPolicy, WriteFailedError
from async_batchstate.testing import FaultPoint, batch_violations

from ..helpers import Injector, ManagerFactory

pytestmark = pytest.mark.guarantee("atomicity")

FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=20.0, attempt_timeout=10.0)
BEFORE_ANY_COMMIT = [FaultPoint.BEFORE_BEGIN, FaultPoint.AFTER_READS, FaultPoint.BEFORE_COMMIT]


@pytest.mark.parametrize("point", list(FaultPoint), ids=lambda p: p.value)
async def test_transient_fault_at_every_point_keeps_counts_exact(
    point: FaultPoint,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """UNAVAILABLE at a step: every caller confirmed, counts exact, each player RECORDED once."""
    injector = Injector(point, gexc.ServiceUnavailable("injected"), times=6)
    finalized: list[str] = []
    manager = make_manager(
        fault_injector=injector,
        retry=FAST,
        max_group_size=8,
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": i % 4 for i in range(60)}
    await manager.create_batch("b", expected_players=list(counts))
    # Each player delivered once, a third twice at once (Pub/Sub redelivery).
    calls = [*counts, *list(counts)[::3]]
    results = await asyncio.gather(*(manager.record_completion("b", p, counts[p]) for p in calls))
    again = await asyncio.gather(*(manager.record_completion("b", p, 99) for p in counts))

    assert 6 == injector.raised
    recorded = Counter(r.player for r in results if r.status is CompletionStatus.RECORDED)
    assert [] == [p for p, n in recorded.items() if n > 1]
    assert set(counts) == set(recorded)
    assert {CompletionStatus.DUPLICATE} == {r.status for r in again}
    assert 1 == sum(r.batch_completed for r in [*results, *again])
    assert ["b"] == finalized
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected=counts,
        require_finalized=True,
    )


@pytest.mark.parametrize("point", BEFORE_ANY_COMMIT, ids=lambda p: p.value)
async def test_permanent_fault_before_commit_writes_nothing(
    point: FaultPoint,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A non-retryable fault before the commit: typed error, nothing written; redelivery exact."""
    injector = Injector(point, RuntimeError("injected bug"), times=None)
    manager = make_manager(fault_injector=injector, retry=FAST, max_group_size=5)
    counts = {f"p{i}": i for i in range(12)}
    await manager.create_batch("b", expected_players=list(counts))

    outcomes = await asyncio.gather(
        *(manager.record_completion("b", p, n) for p, n in counts.items()),
        return_exceptions=True,
    )
    assert all(isinstance(o, WriteFailedError) for o in outcomes), outcomes
    progress = await manager.get_progress("b")
    assert (0, 0, "in_progress") == (
        progress.completed_count,
        progress.total_predictions,
        progress.status,
    )
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", manager.mode, expected={}
    )

    injector.enabled = False
    again = await asyncio.gather(*(manager.record_completion("b", p, n) for p, n in counts.items()))
    assert {CompletionStatus.RECORDED} == {r.status for r in again}
    assert 1 == sum(r.batch_completed for r in again)
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected=counts,
        require_finalized=True,
    )


@pytest.mark.parametrize("mode", list(MigrationMode), ids=lambda m: m.value)
@pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting")
async def test_fault_after_commit_then_redelivery_is_duplicate(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Committed but the caller never told: its redelivery is DUPLICATE, counted once, finalizes."""
    injector = Injector(FaultPoint.AFTER_COMMIT, RuntimeError("crash after commit"), times=1)
    finalized: list[str] = []
    manager = make_manager(
        mode=mode,
        fault_injector=injector,
        retry=FAST,
        on_complete=lambda b, _p: finalized.append(b),
    )
    await manager.create_batch("b", expected_players=["p1", "p2"])
    injector.enabled = False
    first = await manager.record_completion("b", "p1", 5)

    injector.enabled = True
    with pytest.raises(WriteFailedError):
        await manager.record_completion("b", "p2", 7)
    redelivered = await manager.record_completion("b", "p2", 8)  # another count: first wins

    assert CompletionStatus.RECORDED is first.status
    assert (CompletionStatus.DUPLICATE, True) == (redelivered.status, redelivered.batch_completed)
    assert ["b"] == finalized
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        mode,
        expected={"p1": 5, "p2": 7},
        require_finalized=True,
    )
