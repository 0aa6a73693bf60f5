"""``SystemClock`` (the real clock) and ``wait_event``, the polling wait on any clock (unit)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from async_batchstate import Clock, SystemClock
from async_batchstate._clock import SYSTEM_CLOCK, wait_event
from async_batchstate.testing import FakeClock


def test_system_clock_reads_the_real_monotonic_and_wall_clocks() -> None:
    """monotonic() is time.monotonic; now() an aware UTC datetime.now."""
    clock: Clock = SystemClock()
    before, wall_before = time.monotonic(), dt.datetime.now(dt.UTC)
    mono, wall = clock.monotonic(), clock.now()
    after, wall_after = time.monotonic(), dt.datetime.now(dt.UTC)

    assert before <= mono <= after
    assert wall_before <= wall <= wall_after
    assert dt.UTC == wall.tzinfo
    assert isinstance(SYSTEM_CLOCK, SystemClock)


async def test_system_clock_sleeps_and_times_out_in_real_time() -> None:
    """sleep() waits; timeout(s) cancels its body after s real seconds; None never."""
    clock = SystemClock()
    loop = asyncio.get_running_loop()

    started = loop.time()
    await clock.sleep(0.05)
    slept = loop.time() - started
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with clock.timeout(0.05):
            await asyncio.sleep(10)
    timed_out = loop.time() - started
    async with clock.timeout(None):
        await asyncio.sleep(0.01)

    assert slept >= 0.04
    assert 0.04 <= timed_out < 5.0


async def test_wait_event_returns_as_soon_as_the_event_is_set() -> None:
    """On the real clock: True when another task sets the event before the time is up."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, event.set)
    started = loop.time()

    assert await wait_event(SYSTEM_CLOCK, event, 10.0)
    assert loop.time() - started < 5.0
    assert await wait_event(SYSTEM_CLOCK, event, 10.0)  # already set: at once


async def test_wait_event_moves_a_fake_clock_instead_of_waiting() -> None:
    """On a fake clock the wait is the clock's sleep: False after the fake seconds."""
    clock = FakeClock()

    assert not await wait_event(clock, asyncio.Event(), 30.0)
    assert ([30.0], 1030.0) == (clock.sleeps, clock.monotonic())


async def test_wait_event_cancelled_leaves_no_task_running() -> None:
    """Cancelling the waiter cancels its event wait and its sleep."""
    before = asyncio.all_tasks()
    task = asyncio.create_task(wait_event(SYSTEM_CLOCK, asyncio.Event(), 60.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)

    assert before == asyncio.all_tasks()
