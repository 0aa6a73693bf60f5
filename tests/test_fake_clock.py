"""``async_batchstate.testing.FakeClock``: a ``Clock`` whose time only sleeps advance."""

from __future__ import annotations

import asyncio

from async_batchstate import Clock
from async_batchstate.testing import FakeClock


def test_fake_clock_is_a_clock() -> None:
    """It satisfies the ``Clock`` protocol the manager accepts (checked by mypy here too)."""
    clock: Clock = FakeClock()
    assert 1000.0 == clock.monotonic()


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
