"""``async_batchstate.testing.FakeClock``: a ``Clock`` whose time only sleeps (or the test) move.

The unit tests need no emulator: sleeps, ``advance``, ``now`` and timeouts in
fake time. The last ones run a manager on the emulator and show that its
timeouts and batch deadlines follow the fake clock, not the real one.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from async_batchstate import (
    BatchProgress,
    Clock,
    CompletionStatus,
    CompletionTimeoutError,
    InvalidInputError,
)
from async_batchstate.testing import FakeClock

from ..helpers import ManagerFactory

WALL_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_fake_clock_is_a_clock() -> None:
    """It satisfies the ``Clock`` protocol the manager accepts (checked by mypy here too)."""
    clock: Clock = FakeClock()
    assert 1000.0 == clock.monotonic()
    assert WALL_START == clock.now()


async def test_time_advances_only_through_sleeps_and_each_sleep_yields_once() -> None:
    """sleep(s) adds s at once and is recorded; other tasks run between, no real time passes."""
    clock = FakeClock(start=5.0)
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    task = asyncio.create_task(other())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await clock.sleep(30.0)
    order.append("after sleep")
    await clock.sleep(0.5)
    await task

    assert ["other", "after sleep"] == order
    assert (35.5, [30.0, 0.5]) == (clock.monotonic(), clock.sleeps)
    assert loop.time() - started < 1.0


async def test_now_is_the_wall_start_plus_the_fake_seconds_elapsed() -> None:
    """now() moves with monotonic(): by sleeps and by advance(), which is not a sleep."""
    clock = FakeClock(
        wall_start=dt.datetime(2030, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    )
    start = clock.now()

    await clock.sleep(1.5)
    clock.advance(60.0)

    assert dt.datetime(2030, 6, 1, 10, tzinfo=dt.UTC) == start
    assert dt.UTC == start.tzinfo
    assert start + dt.timedelta(seconds=61.5) == clock.now()
    assert 1061.5 == clock.monotonic()
    assert [1.5] == clock.sleeps


async def test_time_never_goes_back() -> None:
    """advance() refuses a negative step; a negative sleep moves no time (as asyncio.sleep)."""
    clock = FakeClock()

    with pytest.raises(InvalidInputError):
        clock.advance(-1.0)
    await clock.sleep(-2.0)

    assert (1000.0, [-2.0]) == (clock.monotonic(), clock.sleeps)


def test_a_naive_wall_start_is_refused() -> None:
    """A datetime without a time zone is no instant."""
    with pytest.raises(InvalidInputError):
        FakeClock(wall_start=dt.datetime(2030, 1, 1))


# -- timeouts in fake time ---------------------------------------------------------------


async def test_a_timeout_fires_when_a_sleep_passes_its_deadline_not_before() -> None:
    """Inside timeout(5): a 3 s sleep is fine; the sleep reaching 5 s expires it at once."""
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    started = loop.time()
    reached: list[float] = []

    with pytest.raises(TimeoutError):
        async with clock.timeout(5.0):
            await clock.sleep(3.0)
            reached.append(clock.monotonic())
            await clock.sleep(2.0)
            reached.append(clock.monotonic())  # never: cancelled at the sleep's yield

    assert [1003.0] == reached
    assert 1005.0 == clock.monotonic()
    assert loop.time() - started < 1.0


async def test_a_timeout_fires_in_its_own_task_when_another_task_moves_time() -> None:
    """A task waiting on something else in timeout(2) expires when the test advances 2 s."""
    clock = FakeClock()
    never = asyncio.Event()

    async def wait() -> str:
        try:
            async with clock.timeout(2.0):
                await never.wait()
        except TimeoutError:
            return "timed out"
        return "finished"

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    clock.advance(1.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)

    assert "timed out" == await asyncio.wait_for(task, 5)


async def test_nested_timeouts_each_raise_only_for_their_own_expiry() -> None:
    """The inner one expiring is caught inside the outer; the outer one passes the inner."""
    clock = FakeClock()
    inner_caught: list[str] = []

    with pytest.raises(TimeoutError):
        async with clock.timeout(10.0):
            try:
                async with clock.timeout(1.0):
                    await clock.sleep(2.0)
            except TimeoutError:
                inner_caught.append("inner")
            await clock.sleep(5.0)  # t = 7: the outer one still runs
            inner_caught.append("outer alive")
            try:
                async with clock.timeout(100.0):
                    await clock.sleep(5.0)  # t = 12: the outer one expires
            except TimeoutError:
                inner_caught.append("wrong: the inner one caught the outer expiry")

    assert ["inner", "outer alive"] == inner_caught


async def test_a_timeout_of_zero_or_less_expires_at_the_first_suspension() -> None:
    """As asyncio.timeout(0): the body runs until it first waits, then it is cancelled."""
    clock = FakeClock()

    for seconds in (0.0, -1.0):
        with pytest.raises(TimeoutError):
            async with clock.timeout(seconds):
                await asyncio.sleep(0)
        async with clock.timeout(seconds):
            pass  # never waits: nothing to cancel
    assert [] == clock.sleeps


async def test_none_never_expires() -> None:
    """timeout(None) is no timeout, however far time moves."""
    clock = FakeClock()

    async with clock.timeout(None):
        await clock.sleep(1e9)
        clock.advance(1e9)
        await asyncio.sleep(0)

    assert 2e9 + 1000.0 == clock.monotonic()


async def test_a_timeout_left_in_time_or_by_an_error_leaves_nothing_behind() -> None:
    """Exited early (done, or by an exception), a timeout never fires later nor eats errors."""
    clock = FakeClock()
    task = asyncio.current_task()
    assert task is not None

    async with clock.timeout(1.0):
        await clock.sleep(0.5)
    with pytest.raises(KeyError):
        async with clock.timeout(1.0):
            raise KeyError("x")
    await clock.sleep(10.0)  # past both deadlines
    await asyncio.sleep(0)

    assert 0 == task.cancelling()
    assert "timeouts=0" in repr(clock)


async def test_cancelling_a_task_in_a_timeout_is_a_cancellation_not_a_timeout() -> None:
    """A cancel from outside comes out as CancelledError, as with asyncio.timeout."""
    clock = FakeClock()
    entered = asyncio.Event()

    async def body() -> None:
        async with clock.timeout(5.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert "timeouts=0" in repr(clock)


# -- a manager on the fake clock (emulator) ----------------------------------------------


async def test_wait_until_complete_times_out_in_fake_time(make_manager: ManagerFactory) -> None:
    """wait_until_complete(timeout=5) polls with the clock's sleeps: 10 polls of 0.5 fake
    seconds, then CompletionTimeoutError, without waiting 5 real seconds."""
    clock = FakeClock()
    manager = make_manager(clock=clock)
    await manager.create_batch("b", expected_count=2)
    await manager.record_completion("b", "p1", 1)
    clock.sleeps.clear()
    loop = asyncio.get_running_loop()
    started, real_start = clock.monotonic(), loop.time()

    with pytest.raises(CompletionTimeoutError):
        await manager.wait_until_complete("b", timeout=5, poll_interval=0.5)

    assert 5.0 == clock.monotonic() - started
    assert [0.5] * 10 == clock.sleeps
    assert loop.time() - real_start < 4.0


async def test_a_batch_deadline_is_judged_on_the_clocks_now(make_manager: ManagerFactory) -> None:
    """deadline=timedelta(30 s) counts from clock.now(); the batch expires when fake time
    reaches it (its fixed 2026-01-01 start is long past in real time: real time plays no part)."""
    clock = FakeClock()
    expired: list[str] = []

    def on_expired(batch_id: str, progress: BatchProgress) -> None:
        expired.append(progress.status)

    manager = make_manager(clock=clock, on_expired=on_expired)
    await manager.create_batch(
        "b", expected_players=["p1", "p2"], deadline=dt.timedelta(seconds=30)
    )
    first = await manager.record_completion("b", "p1", 1)
    clock.advance(29.0)
    before = await manager.get_progress("b")
    clock.advance(1.0)
    late = await manager.record_completion("b", "p2", 1)
    after = await manager.get_progress("b")

    assert WALL_START + dt.timedelta(seconds=30) == before.deadline
    assert CompletionStatus.RECORDED == first.status
    assert "in_progress" == before.status
    assert CompletionStatus.LATE == late.status
    assert ("expired", "deadline passed") == (after.status, after.expired_reason)
    assert ["expired"] == expired


async def test_wait_until_complete_sees_a_deadline_pass_in_fake_time(
    make_manager: ManagerFactory,
) -> None:
    """A wait on an unfinished batch: its polls move fake time past the deadline, the wait
    expires the batch and returns it."""
    clock = FakeClock()
    manager = make_manager(clock=clock)
    await manager.create_batch("b", expected_count=2, deadline=dt.timedelta(seconds=3))

    progress = await manager.wait_until_complete("b", timeout=60, poll_interval=1.0)

    assert ("expired", "deadline passed") == (progress.status, progress.expired_reason)
    assert 3.0 <= clock.monotonic() - 1000.0 < 60.0
