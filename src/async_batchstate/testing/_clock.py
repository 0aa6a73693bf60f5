"""A clock for tests: time moves only when the code under test sleeps."""

from __future__ import annotations

import asyncio


class FakeClock:
    """An ``async_batchstate.Clock`` whose time only the code under test's sleeps advance.

    ``monotonic()`` starts at ``start`` and stays there until someone calls
    ``sleep(seconds)``, which adds ``seconds`` at once, records them in
    ``sleeps`` and yields to the event loop once (so other tasks still run, in
    order, but no real time passes). Pass it as ``clock=`` to
    ``AsyncBatchStateManager`` to test backoff and deadlines without waiting::

        clock = FakeClock()
        manager = AsyncBatchStateManager(client, clock=clock, ...)
        ...
        assert clock.sleeps == [0.1, 0.2]

    Args:
        start: The initial ``monotonic()`` value.

    Attributes:
        now: The current time, seconds; tests may also set it directly.
        sleeps: Every ``sleep`` requested, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current fake time, seconds."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the time by ``seconds`` at once, then yield to the loop once."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now}, sleeps={len(self.sleeps)})"
