"""RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED from the server: backoff, bounded attempts, typed error.

The errors are the exact exceptions the client raises for those gRPC codes
(``google.api_core.exceptions.ResourceExhausted`` / ``DeadlineExceeded``),
raised through the public ``fault_injector`` seam right before the commit,
i.e. after a real transaction began and read from the emulator. Time is a
virtual clock (backoff sleeps advance it instantly), so the tests check the
exact delays without sleeping through them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import CompletionStatus, RetryExhaustedError, RetryPolicy
from async_batchstate.instrumentation import AttemptFailed, ErrorKind, Event
from async_batchstate.testing import FakeClock, FaultPoint, batch_violations

from ..helpers import ManagerFactory

pytestmark = pytest.mark.guarantee("deadline")


class ServerError:
    """Raise ``error`` before every commit (or only the first ``times``)."""

    def __init__(self, error: Exception, times: int | None = None) -> None:
        self.error = error
        self.times = times
        self.raised = 0

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT and (self.times is None or self.raised < self.times):
            self.raised += 1
            raise self.error


def failures(events: list[Event]) -> list[AttemptFailed]:
    return [e for e in events if isinstance(e, AttemptFailed)]


async def test_resource_exhausted_backs_off_max_delay_until_deadline(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Overload: every retry waits max_delay, attempts = deadline/max_delay, typed error, no write."""
    clock = FakeClock()
    events: list[Event] = []
    policy = RetryPolicy(base_delay=0.01, max_delay=0.25, max_attempts=100, deadline=2.0)
    manager = make_manager(
        retry=policy,
        clock=clock,
        hooks=[events.append],
        fault_injector=ServerError(gexc.ResourceExhausted("quota")),
    )
    await manager.create_batch("b", expected_count=1)
    clock.sleeps.clear()

    with pytest.raises(RetryExhaustedError) as caught:
        await manager.record_completion("b", "p", 3, timeout=2.0)

    error = caught.value
    assert isinstance(error.last_cause, gexc.ResourceExhausted)
    assert 2.0 / 0.25 == error.attempts  # one attempt per max_delay of the budget, no storm
    assert error.elapsed <= 2.0
    assert [0.25] * (error.attempts - 1) == clock.sleeps
    assert {ErrorKind.OVERLOADED} == {f.kind for f in failures(events)}
    assert None is failures(events)[-1].delay  # the last failure gave up instead of sleeping
    progress = await manager.get_progress("b")
    assert (0, "in_progress") == (progress.completed_count, progress.status)
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", manager.mode, expected={}
    )


async def test_deadline_exceeded_full_jitter_bounded_by_max_attempts(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """DEADLINE_EXCEEDED: full-jitter delays under the doubling ceiling, exactly max_attempts."""
    clock = FakeClock()
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, max_attempts=6, deadline=60.0)
    manager = make_manager(
        retry=policy, clock=clock, fault_injector=ServerError(gexc.DeadlineExceeded("slow"))
    )
    await manager.create_batch("b", expected_count=1)
    clock.sleeps.clear()

    with pytest.raises(RetryExhaustedError) as caught:
        await manager.record_completion("b", "p", 3)

    assert 6 == caught.value.attempts
    assert isinstance(caught.value.last_cause, gexc.DeadlineExceeded)
    assert 5 == len(clock.sleeps)
    for n, delay in enumerate(clock.sleeps):
        assert 0.0 <= delay <= min(1.0, 0.1 * 2**n)
    assert 0 == (await manager.get_progress("b")).completed_count


async def test_transient_overload_then_success_reports_attempts(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Three RESOURCE_EXHAUSTED then success: recorded once, attempts=4, three max_delay waits."""
    clock = FakeClock()
    policy = RetryPolicy(base_delay=0.01, max_delay=0.5, deadline=30.0)
    manager = make_manager(
        retry=policy, clock=clock, fault_injector=ServerError(gexc.ResourceExhausted("q"), 3)
    )
    await manager.create_batch("b", expected_count=1)
    clock.sleeps.clear()

    result = await manager.record_completion("b", "p", 3)

    assert (CompletionStatus.RECORDED, 4, True) == (
        result.status,
        result.attempts,
        result.batch_completed,
    )
    assert [0.5, 0.5, 0.5] == clock.sleeps
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected={"p": 3},
        require_finalized=True,
    )


async def test_many_callers_under_overload_cause_no_retry_storm(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """100 callers, server always RESOURCE_EXHAUSTED: attempts per group, not per caller."""
    clock = FakeClock()
    policy = RetryPolicy(base_delay=0.01, max_delay=0.5, max_attempts=100, deadline=3.0)
    injector = ServerError(gexc.ResourceExhausted("quota"))
    events: list[Event] = []
    manager = make_manager(
        retry=policy, clock=clock, fault_injector=injector, hooks=[events.append]
    )
    await manager.create_batch("b", expected_count=100)

    outcomes = await asyncio.gather(
        *(manager.record_completion("b", f"p{i}", 1) for i in range(100)),
        return_exceptions=True,
    )

    assert all(isinstance(o, RetryExhaustedError) for o in outcomes), outcomes[:3]
    per_group = math.ceil(3.0 / 0.5)
    max_in_flight = 2  # the default with coalescing: at most 2 groups of one batch at once
    assert injector.raised <= max_in_flight * per_group, "one retry loop per group, not per caller"
    assert injector.raised == manager.stats().attempts
    assert {ErrorKind.OVERLOADED} == {f.kind for f in failures(events)}
    assert 0 == (await manager.get_progress("b")).completed_count
