"""Per-batch lanes: completions that queue while a write is in flight go out together.

This is the database "group commit": every completion of a batch touches one
document, so instead of N transactions fighting over it, a lane keeps one write
in flight (a second only when what queues fills a whole group) and batches
everything that arrived meanwhile into the next one. 200 concurrent callers
become a handful of large commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._clock import SYSTEM_CLOCK, Clock, wait_event
from .._types import CompletionResult
from .group import PlayerCompletion
from .limits import AdaptiveLimit
from .pacing import Pacer

logger = logging.getLogger("async_batchstate.coalesce")


@dataclass(eq=False)
class Pending:
    """One caller's completion waiting in a lane."""

    completion: PlayerCompletion
    deadline: float
    """Time on the manager's clock (``monotonic()``) after which the caller stops waiting."""
    future: asyncio.Future[CompletionResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    taken: bool = False
    """Whether a group has taken it; from then on it may be written."""

    def resolve(self, result: CompletionResult) -> None:
        """Give the caller its result, unless it stopped waiting."""
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        """Give the caller an error, unless it stopped waiting."""
        if not self.future.done():
            self.future.set_exception(error)


RunGroup = Callable[[str, list[Pending], AdaptiveLimit], Awaitable[None]]


class Lane:
    """The queue and in-flight writes of one batch in this process."""

    def __init__(
        self,
        batch_id: str,
        run_group: RunGroup,
        *,
        max_group_size: int,
        limit: AdaptiveLimit,
        linger: float,
        on_idle: Callable[[Lane], None],
        clock: Clock = SYSTEM_CLOCK,
        pacer: Pacer | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.limit = limit
        self._run_group = run_group
        self._max_group_size = max_group_size
        self._linger = linger
        self._on_idle = on_idle
        self._clock = clock
        self.pacer = pacer
        self._closing = asyncio.Event()
        """Set by a close: writers stop lingering and pacing."""
        self._wake = asyncio.Event()
        """Ends a writer's pacing pause: a close, twice a paced group queued, or a caller
        with less time left than twice what remains of the pause."""
        self._paused_until: float | None = None
        """When the pacing pause in progress ends (``monotonic``), if one is."""
        self.queue: deque[Pending] = deque()
        self.tasks: set[asyncio.Task[bool]] = set()
        self._writing: set[str] = set()
        """Players in groups now in flight."""
        self._starting = 0
        """Writers created that have not taken their group yet."""
        self._stopped = False

    @property
    def in_flight(self) -> int:
        """Groups being written now."""
        return len(self.tasks)

    def submit(self, pending: Pending) -> None:
        """Queue ``pending`` and start a write if the in-flight limit allows."""
        self.queue.append(pending)
        if self.pacer is not None:
            self.pacer.arrived()
            group = self.pacer.group
            if group > 1.0 and len(self.queue) >= min(2.0 * group, self._max_group_size):
                self._wake.set()  # arrivals outran the pacer's estimate: its writer goes now
            until = self._paused_until
            if until is not None:
                now = self._clock.monotonic()
                if pending.deadline - now < 2.0 * (until - now):
                    self._wake.set()  # the pause would take more than half its time left
        self._pump()

    def withdraw(self, pending: Pending) -> bool:
        """Remove a caller that stopped waiting; False if a group already took it."""
        if pending.taken:
            return False
        try:
            self.queue.remove(pending)
        except ValueError:
            return False
        pending.future.cancel()
        self._maybe_idle()
        return True

    def _takeable_beyond(self, count: int) -> bool:
        """Whether more than ``count`` queued completions could go in a new group.

        Redeliveries of players in flight wait; it stops looking as soon as it knows.
        """
        if len(self.queue) <= count:
            return False
        for pending in self.queue:
            if pending.completion.player not in self._writing:
                count -= 1
                if count < 0:
                    return True
        return False

    def _pump(self) -> None:
        while (
            not self._stopped
            and len(self.tasks) < self.limit.limit
            and self._takeable_beyond(self._carried())
        ):
            self._starting += 1
            task = asyncio.get_running_loop().create_task(
                self._write_next(), name=f"async-batchstate lane {self.batch_id!r}"
            )
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _carried(self) -> int:
        """Queued completions the writers already there will take: a new writer needs more.

        A writer not yet started takes up to a full group. While a group is in flight, a
        second one starts only for a full group: the batch's writes all land on one
        document, whose writes Firestore serialises, so a second Commit in flight only
        waits there (behind a per-document write ceiling, it queues and is refused)
        where, held back, its completions join the next group. Pipelining pays only
        when what queues does not fit in one group.
        """
        carried = self._starting * self._max_group_size
        if len(self.tasks) > self._starting:
            carried += self._max_group_size - 1
        return carried

    async def _write_next(self) -> bool:
        """Write one group; False if every queued completion had to wait."""
        try:
            if self.pacer is not None or self._linger > 0:  # no coroutine on the hot path
                await self._pause()
        finally:
            self._starting -= 1
        group: list[Pending] = []
        deferred: list[Pending] = []
        while self.queue and len(group) < self._max_group_size:
            pending = self.queue.popleft()
            if pending.completion.player in self._writing:
                # A redelivery of a player in flight waits for the next group and comes
                # back as a DUPLICATE, instead of costing its group a conflict round.
                deferred.append(pending)
                continue
            pending.taken = True
            group.append(pending)
        self.queue.extendleft(reversed(deferred))
        if not group:
            return False
        if self.pacer is not None:
            self.pacer.started()
        players = {p.completion.player for p in group}
        self._writing |= players
        try:
            await self._run_group(self.batch_id, group, self.limit)
        finally:
            self._writing -= players
        return True

    async def _pause(self) -> None:
        """Linger, and pace: never past half the earliest queued caller's time left."""
        begun = self._clock.monotonic()
        if self.pacer is not None and 0 < len(self.queue) < self._max_group_size:
            pace = self.pacer.delay(len(self.queue))
            if pace > self._linger:
                # A pause must not be what times a caller out: leave the write half the time.
                left = min(p.deadline for p in self.queue) - begun
                pace = min(pace, left / 2)
            if pace > self._linger and not self._closing.is_set():
                self._wake.clear()
                self._paused_until = begun + pace
                try:
                    await wait_event(self._clock, self._wake, pace)
                finally:
                    self._paused_until = None
        rest = self._linger - (self._clock.monotonic() - begun)
        if rest > 0 and not self._closing.is_set():
            await wait_event(self._clock, self._closing, rest)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The group runner resolves every member itself; reaching here is a bug.
            logger.error("lane writer of batch %r failed", self.batch_id, exc_info=task.exception())
        self._pump()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.queue and not self.tasks:
            self._on_idle(self)

    def hurry(self) -> None:
        """Writers waiting to start (linger, pacing) start now: the manager is closing."""
        self._closing.set()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until the queue is empty and no write is in flight.

        Cancelling the wait (a drain timeout) cancels no write: ``asyncio.wait``,
        unlike ``gather``, leaves its tasks alone.
        """
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    def cancel_all(self, error: BaseException) -> None:
        """Start no more writes, fail every queued caller with ``error``, cancel those in flight."""
        self._stopped = True
        while self.queue:
            self.queue.popleft().fail(error)
        for task in list(self.tasks):
            task.cancel()
