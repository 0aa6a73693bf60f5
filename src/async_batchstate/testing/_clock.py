"""A clock for tests: time moves only when the code under test sleeps (or the test says so)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from .._errors import InvalidInputError

_WALL_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class _Deadline:
    """One entered ``FakeClock.timeout``: its fake deadline and the asyncio scope it fires."""

    __slots__ = ("at", "loop", "scope")

    def __init__(self, at: float, scope: asyncio.Timeout) -> None:
        self.at = at
        self.scope = scope
        self.loop = asyncio.get_running_loop()

    def fire(self) -> None:
        """Expire the scope at its loop's next iteration (unless it has exited)."""
        if self.scope.expired():
            return
        with contextlib.suppress(RuntimeError):  # exited meanwhile: nothing to expire
            self.scope.reschedule(self.loop.time())


class FakeClock:
    """An ``async_batchstate.Clock`` whose time only sleeps and ``advance`` move.

    ``monotonic()`` starts at ``start`` and stays there until someone calls
    ``sleep(seconds)``, which adds ``seconds`` at once, records them in
    ``sleeps`` and yields to the event loop once (so other tasks still run, in
    order, but no real time passes), or ``advance(seconds)``. ``now()`` is
    ``wall_start`` plus the fake seconds elapsed since. A ``timeout(seconds)``
    expires when fake time reaches its deadline: the task in it is cancelled
    at its next suspension and ``TimeoutError`` comes out of the ``async
    with``, as with ``asyncio.timeout``. Real time never expires one.

    Pass it as ``clock=`` to ``AsyncBatchStateManager`` to test backoff,
    timeouts and deadlines without waiting::

        clock = FakeClock()
        manager = AsyncBatchStateManager(client, clock=clock, ...)
        ...
        assert clock.sleeps == [0.1, 0.2]

    Time is shared by every task: two tasks each sleeping 1 s advance it by
    2 s. Real work (an RPC to the emulator) takes real time but no fake time,
    so a timeout around an RPC that hangs fires only when some other task
    sleeps, or the test advances the clock.

    Args:
        start: The initial ``monotonic()`` value.
        wall_start: The initial ``now()``, an aware datetime. Server timestamps
            (``created_at``, ``finished_at``) stay real: compare them with a
            fake ``now()`` only if ``wall_start`` is the real time.

    Attributes:
        sleeps: Every ``sleep`` requested, in order.

    Raises:
        InvalidInputError: ``wall_start`` is a naive datetime.
    """

    def __init__(self, start: float = 1000.0, *, wall_start: dt.datetime = _WALL_START) -> None:
        if wall_start.tzinfo is None:
            raise InvalidInputError("wall_start must be an aware datetime (e.g. UTC)")
        self._time = start
        self._start = start
        self._wall_start = wall_start.astimezone(dt.UTC)
        self._deadlines: set[_Deadline] = set()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current fake time, seconds."""
        return self._time

    def now(self) -> dt.datetime:
        """``wall_start`` plus the fake seconds elapsed, in UTC."""
        return self._wall_start + dt.timedelta(seconds=self._time - self._start)

    async def sleep(self, seconds: float) -> None:
        """Advance the time by ``seconds`` at once, then yield to the loop once.

        A negative ``seconds`` (as ``asyncio.sleep`` allows) moves no time; it is
        recorded as requested.
        """
        self.sleeps.append(seconds)
        self._move(max(seconds, 0.0))
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds`` without sleeping (not recorded in ``sleeps``).

        Timeouts whose deadline it passes expire at the next loop iteration of
        their tasks.

        Raises:
            InvalidInputError: ``seconds`` is negative (monotonic time never goes back).
        """
        if not seconds >= 0.0:
            raise InvalidInputError(f"a clock only moves forward; got {seconds} s")
        self._move(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        """A timeout of ``seconds`` fake seconds, as ``asyncio.timeout`` in fake time.

        ``None`` never expires; ``seconds <= 0`` expires at the body's first
        suspension. Each one is an ``asyncio.timeout(None)`` rescheduled to fire
        at once when fake time reaches its deadline, so nesting, cancellation
        and ``TimeoutError`` behave exactly as asyncio's.
        """
        return self._timeout(seconds)

    @contextlib.asynccontextmanager
    async def _timeout(self, seconds: float | None) -> AsyncIterator[None]:
        async with asyncio.timeout(None) as scope:
            if seconds is None:
                yield
                return
            deadline = _Deadline(self._time + seconds, scope)
            self._deadlines.add(deadline)
            try:
                if deadline.at <= self._time:
                    self._fire(deadline)
                yield
            finally:
                self._deadlines.discard(deadline)

    def _move(self, seconds: float) -> None:
        self._time += seconds
        for deadline in [d for d in self._deadlines if d.at <= self._time]:
            self._fire(deadline)

    def _fire(self, deadline: _Deadline) -> None:
        self._deadlines.discard(deadline)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is deadline.loop:
            deadline.fire()
        else:  # moved from outside the timeout's loop (another loop or thread)
            with contextlib.suppress(RuntimeError):  # that loop is closed
                deadline.loop.call_soon_threadsafe(deadline.fire)

    def __repr__(self) -> str:
        return (
            f"FakeClock(monotonic={self._time}, now={self.now().isoformat()}, "
            f"sleeps={len(self.sleeps)}, timeouts={len(self._deadlines)})"
        )
