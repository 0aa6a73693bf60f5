"""Per-batch lanes: completions that queue while a write is in flight go out together.

This is the database "group commit": every completion of a batch touches one
document, so instead of N transactions fighting over it, a lane keeps a few
transactions in flight and batches everything that arrived meanwhile into the
next one. 200 concurrent callers become a handful of large commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._types import CompletionResult
from .limits import AdaptiveLimit
from .writer import Completion

logger = logging.getLogger("async_batchstate.coalesce")


@dataclass(eq=False)
class Pending:
    """One caller's completion waiting in a lane."""

    completion: Completion
    deadline: float
    """Loop time after which the caller stops waiting."""
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


GroupRunner = Callable[[str, list[Pending], AdaptiveLimit], Awaitable[None]]


class Lane:
    """The queue and in-flight writes of one batch in this process."""

    def __init__(
        self,
        batch_id: str,
        run_group: GroupRunner,
        *,
        max_group_size: int,
        limit: AdaptiveLimit,
        linger: float,
        on_idle: Callable[[Lane], None],
    ) -> None:
        self.batch_id = batch_id
        self.limit = limit
        self._run_group = run_group
        self._max_group_size = max_group_size
        self._linger = linger
        self._on_idle = on_idle
        self.queue: deque[Pending] = deque()
        self.tasks: set[asyncio.Task[bool]] = set()
        self._writing: set[str] = set()
        """Players in groups now in flight."""

    @property
    def in_flight(self) -> int:
        """Groups being written now."""
        return len(self.tasks)

    def submit(self, pending: Pending) -> None:
        """Queue ``pending`` and start a write if the in-flight limit allows."""
        self.queue.append(pending)
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

    def _pump(self) -> None:
        while self.queue and len(self.tasks) < self.limit.limit:
            task = asyncio.get_running_loop().create_task(
                self._write_next(), name=f"async-batchstate lane {self.batch_id!r}"
            )
            self.tasks.add(task)
            task.add_done_callback(self._done)

    async def _write_next(self) -> bool:
        """Write one group; False if every queued completion had to wait."""
        if self._linger > 0:
            await asyncio.sleep(self._linger)
        group: list[Pending] = []
        deferred: list[Pending] = []
        while self.queue and len(group) < self._max_group_size:
            pending = self.queue.popleft()
            if pending.completion.player in self._writing:
                # A redelivery of a player in flight would make two of our own transactions
                # lock the same completion doc (the emulator resolves that with a ~2 s lock
                # timeout). It waits for the next group and comes back as a DUPLICATE.
                deferred.append(pending)
                continue
            pending.taken = True
            group.append(pending)
        self.queue.extendleft(reversed(deferred))
        if not group:
            return False
        players = {p.completion.player for p in group}
        self._writing |= players
        try:
            await self._run_group(self.batch_id, group, self.limit)
        finally:
            self._writing -= players
        return True

    def _done(self, task: asyncio.Task[bool]) -> None:
        self.tasks.discard(task)
        wrote = True
        if task.cancelled():
            pass
        elif task.exception() is not None:
            # The group runner resolves every member itself; reaching here is a bug.
            logger.error("lane writer of batch %r failed", self.batch_id, exc_info=task.exception())
        else:
            wrote = task.result()
        if wrote:  # a writer that found only deferred work waits for the one in flight
            self._pump()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.queue and not self.tasks:
            self._on_idle(self)

    async def drain(self) -> None:
        """Wait until the queue is empty and no write is in flight."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def cancel_all(self, error: BaseException) -> None:
        """Fail every queued caller with ``error`` and cancel in-flight writes."""
        while self.queue:
            self.queue.popleft().fail(error)
        for task in list(self.tasks):
            task.cancel()
