"""One injectable source of time, so every delay, timeout and deadline is testable.

Every use of time in the library goes through a ``Clock``: backoff sleeps,
per-attempt and caller timeouts, the lanes' linger, the drain on close,
deadlines of batches, retention stamps, checkpoint intervals. Replace it with
``async_batchstate.testing.FakeClock`` to test them without waiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    """Monotonic time, wall-clock time, sleeping and timeouts. Replace it in tests.

    A custom clock must implement all four methods; the library calls nothing
    else on it.
    """

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (durations, intervals, budgets)."""
        ...

    def now(self) -> dt.datetime:
        """The current instant as an aware UTC datetime.

        Batch deadlines and retention stamps are instants shared by every
        process (stored in Firestore), so they are judged on this clock, not
        on ``monotonic()``.
        """
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """A context manager that cancels its body after ``seconds``, like ``asyncio.timeout``.

        On expiry the body is cancelled and ``TimeoutError`` is raised out of the
        ``async with``; ``None`` never expires; ``seconds <= 0`` expires at the
        body's first suspension. Use it only for its scope: the value it gives
        to ``as`` is unspecified.
        """
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)``, asyncio's sleep and timeout."""

    def monotonic(self) -> float:
        """Seconds on ``time.monotonic``."""
        return time.monotonic()

    def now(self) -> dt.datetime:
        """``datetime.now(UTC)``."""
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> asyncio.Timeout:
        """``asyncio.timeout(seconds)``."""
        return asyncio.timeout(seconds)


SYSTEM_CLOCK = SystemClock()


async def wait_event(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` passed on ``clock``.

    A race of ``event.wait()`` with ``clock.sleep(seconds)`` rather than a
    ``clock.timeout``: on a fake clock the sleep is what moves time on, so a
    polling loop built on this advances fake time instead of waiting forever.

    Returns:
        Whether ``event`` is set.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    if sleeper.done() and not sleeper.cancelled():
        sleeper.result()  # a clock whose sleep failed: say so
    return event.is_set()
