"""What a caller is promised about time and about being told: the timeout bounds the whole call,
and a close that cuts a finalization still tells exactly one caller across processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchStateError,
    CompletionStatus,
    CompletionTimeoutError,
    InvalidInputError,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.instrumentation import BatchFinalized, GroupCommitted
from async_batchstate.testing import (
    EmulatorInfo,
    FakeClock,
    FaultyProxy,
    aclose_client,
    make_client,
)

from ..helpers import ManagerFactory

pytestmark = [
    pytest.mark.guarantee("rolling-deploys-and-rollbacks"),
    pytest.mark.guarantee("deadline"),
]


async def test_a_timeout_bounds_reading_the_batch_settings_under_a_black_hole(
    firestore_emulator: EmulatorInfo, batch_collection: str, firestore_client: AsyncClient
) -> None:
    """The batch's settings are not cached and the network black-holes: the call ends with a
    CompletionTimeoutError once its timeout passes, not after the retry deadline (60 s),
    whether it waits on the settings read or on the first touch's Commit beside it."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=2)
    await creator.aclose()
    clock = FakeClock()
    async with FaultyProxy(firestore_emulator.host) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        manager = AsyncBatchStateManager(client, collection=batch_collection, clock=clock)
        try:
            await proxy.blackhole()
            call = asyncio.ensure_future(manager.record_completion("b", "p1", 1, timeout=1.0))
            await asyncio.sleep(0.2)  # the read is sent and hangs
            clock.advance(1.1)
            done, _ = await asyncio.wait([call], timeout=5.0)

            assert call in done
            # A first touch's Commit may be on the wire beside the read: "whole or not at all".
            with pytest.raises(CompletionTimeoutError, match=r"within 1\.0s"):
                call.result()
        finally:
            await proxy.restore()
            await manager.aclose(drain_timeout=0)
            await aclose_client(client)


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), "1"])
async def test_a_bad_timeout_is_refused_before_anything_is_read(
    timeout: Any, make_manager: ManagerFactory
) -> None:
    """A negative, NaN or non-number timeout is an InvalidInputError, before any I/O."""
    manager = make_manager()
    with pytest.raises(InvalidInputError, match="timeout"):
        await manager.record_completion("no-such-batch", "p", 1, timeout=timeout)


@pytest.mark.parametrize("mode", [MigrationMode.DUAL_WRITE, MigrationMode.LEGACY])
async def test_closing_while_the_flip_is_in_flight_still_tells_exactly_one_caller(
    mode: MigrationMode,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
) -> None:
    """A close whose drain runs out while the last group's flip is on the wire (every RPC
    takes ~0.5 s through a latency proxy; the drain is 0.9 s: the flip's update is on the wire). Across this process and
    another that gets the redelivery, exactly one caller is told batch_completed=True, and
    the batch is finalized."""
    closing: list[asyncio.Task[None]] = []
    async with FaultyProxy(firestore_emulator.host, latency=0.25) as proxy:
        slow = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))

        def close_on_last_commit(event: Any) -> None:
            if isinstance(event, GroupCommitted) and event.recorded and not closing:
                closing.append(asyncio.ensure_future(manager.aclose(drain_timeout=0.9)))

        manager = AsyncBatchStateManager(
            slow,
            collection=batch_collection,
            mode=mode,
            validation_rate=0.0,
            hooks=[close_on_last_commit],
        )

        try:
            await manager.create_batch("b", expected_count=1)
            try:
                told_here = (await manager.record_completion("b", "p1", 1)).batch_completed
            except Exception:
                told_here = False
            await asyncio.gather(*closing)
        finally:
            await manager.aclose()
            await aclose_client(slow)

    client = make_client(firestore_emulator)
    other = AsyncBatchStateManager(client, collection=batch_collection, mode=mode)
    try:
        again = await other.record_completion("b", "p1", 1)
        final = await other.wait_until_complete("b", timeout=10)
    finally:
        await other.aclose()
        await aclose_client(client)

    assert CompletionStatus.DUPLICATE == again.status
    assert 1 == told_here + again.batch_completed
    assert final.is_finalized


@pytest.mark.parametrize("reason", ["bad \ud800 surrogate", 42, "x" * 10_001])
async def test_a_bad_expiry_reason_is_refused_before_anything_is_written(
    reason: Any, make_manager: ManagerFactory
) -> None:
    """A reason that is not a str, not UTF-8 or too long is an InvalidInputError; the batch
    stays in progress."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=2)

    with pytest.raises(InvalidInputError, match="reason"):
        await manager.expire("b", reason=reason)
    assert "in_progress" == (await manager.get_progress("b")).status


@pytest.mark.parametrize(
    ("call", "arguments"),
    [
        ("create_batch", {"expected_count": 2, "deadline": dt.timedelta(days=999_999_999)}),
        ("wait_until_complete", {"timeout": float("nan")}),
        ("wait_until_complete", {"timeout": -1}),
        ("wait_until_complete", {"poll_interval": 0}),
        ("wait_until_complete", {"poll_interval": float("inf")}),
    ],
)
async def test_hostile_durations_are_refused_with_one_typed_error(
    call: str, arguments: dict[str, Any], make_manager: ManagerFactory
) -> None:
    """Durations that overflow, are NaN, negative or zero where a wait needs a period: an
    InvalidInputError (never OverflowError, ValueError or a busy loop), nothing written."""
    manager = make_manager()
    with pytest.raises(InvalidInputError):
        await getattr(manager, call)("b", **arguments)


@pytest.mark.parametrize("older_than", [float("nan"), -1.0, 1e300, dt.timedelta(days=999_999_999)])
async def test_hostile_stalled_ages_are_refused(
    older_than: Any, make_manager: ManagerFactory
) -> None:
    """stalled(older_than=...) that is NaN, negative or beyond the calendar: InvalidInputError."""
    manager = make_manager()
    with pytest.raises(InvalidInputError):
        async for _ in manager.stalled(older_than):
            pass


CLOSE_ACTIVITIES = [
    "write",
    "settings read",
    "failed settings read",
    "waited-for settings read",
    "sampled check",
    "final check",
    "callback",
]


@pytest.mark.parametrize("activity", CLOSE_ACTIVITIES)
async def test_a_close_returns_within_its_drain_timeout_whatever_runs_in_the_background(
    activity: str, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """Firestore stops answering while the manager has ``activity`` in flight: a group's
    write, a caller's first read of a batch's settings (the caller still waits for it; or it
    timed out and left, and the read hangs, or fails on its own with nobody left to hear
    it), a
    sampled consistency check, the final check of a finished batch, or an ``on_complete``
    callback. ``aclose(drain_timeout=1)`` returns within its budget (plus slack for a
    loaded machine), not after the 60 s retry deadline, and leaves no task whose
    exception nobody retrieved nor any task of its own running. (Cloud Run SIGKILLs 10 s after SIGTERM: a shutdown that
    waited on a monitor's retries lost the process's owed work.)"""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    creator = AsyncBatchStateManager(
        make_client(firestore_emulator), collection=batch_collection, validation_rate=0.0
    )
    for batch_id in ("b", "cold"):
        await creator.create_batch(batch_id, expected_count=1 if activity == "final check" else 3)
    await creator.aclose()

    # A delaying proxy reads its latency per chunk: raised from a hook, it silences the
    # very next RPC (a black hole set from a task could come too late).
    async with FaultyProxy(firestore_emulator.host, latency=0.001) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        silence_on = BatchFinalized if activity == "final check" else GroupCommitted

        def blackhole_after_the_commit(event: Any) -> None:
            if isinstance(event, silence_on) and activity != "callback":
                proxy.latency = 3600.0  # from now on nothing is answered

        async def hang(batch_id: str, progress: Any) -> None:
            await asyncio.sleep(3600)

        manager = AsyncBatchStateManager(
            client,
            collection=batch_collection,
            validation_rate=1.0 if activity.endswith("check") else 0.0,
            validation_interval=0.0,
            # The failing read gives up on its own after 1 s, with nobody waiting for it.
            retry=RetryPolicy(deadline=1.0, attempt_timeout=0.3) if "failed" in activity else None,
            hooks=[blackhole_after_the_commit],
            on_complete=hang if activity == "callback" else None,
        )
        calls: list[asyncio.Future[Any]] = []
        try:
            if activity == "sampled check":
                await manager.create_batch("s", expected_count=2)
                await manager.record_completion("s", "p1", 1)
            elif activity == "waited-for settings read":
                await manager.record_completion("b", "p1", 1)
                calls.append(asyncio.ensure_future(manager.record_completion("cold", "p1", 1)))
            elif activity.endswith("settings read"):
                await manager.record_completion("b", "p1", 1)
                with pytest.raises(CompletionTimeoutError):
                    await manager.record_completion("cold", "p1", 1, timeout=0.3)
                if activity == "failed settings read":
                    await asyncio.sleep(1.0)  # the read's own retries give up meanwhile
            else:
                await manager.record_completion("b", "p1", 1)
            if activity == "write":
                calls.append(asyncio.ensure_future(manager.record_completion("b", "p2", 1)))
            await asyncio.sleep(0.5)  # whatever was started now waits on the silence
            started = loop.time()
            await manager.aclose(drain_timeout=1.0)
            took = loop.time() - started
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await manager.aclose(drain_timeout=0)
            await aclose_client(client)
    del calls
    gc.collect()
    await asyncio.sleep(0)
    left_running = [
        t.get_coro()
        for t in asyncio.all_tasks()
        if not t.done()
        and "async_batchstate/_"
        in getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "")
    ]

    assert took < 1.0 + 3.0, f"close took {took:.1f} s with a {activity} in flight"
    # Told, not left waiting, and told by a typed error (never a CancelledError it did not ask for).
    assert all(isinstance(o, BatchStateError) for o in outcomes), outcomes
    assert [] == [c.get("message") for c in reported]
    assert [] == left_running  # a closed manager has nothing of its own still running
