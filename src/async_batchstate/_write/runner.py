"""The group runner: lanes per batch, ONE write per group with retries, every caller told.

``AsyncBatchStateManager`` validates a completion and hands it here. A lane
(``lanes.Lane``) queues it with the batch's other completions; each group goes
out as ONE write (``writer.GroupWriter``) under the retry loop, the finalizer
checks the batch, and every member's caller gets its own outcome, or an error,
whatever happens (cancellation and shutdown included).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter

from .._clock import Clock
from .._errors import (
    BatchStateError,
    CompletionTimeoutError,
    ConfigurationError,
    ManagerClosedError,
    WriteFailedError,
)
from .._retry import AttemptFailure, ErrorKind, RetryPolicy, run_with_retry
from .._types import BatchProgress, CompletionResult, CompletionStatus
from ..consistency._sampled import SampledValidator
from ..instrumentation._events import AttemptFailed, GroupCommitted, GroupFailed, Recorder
from .finalizer import Finalizer
from .group import GroupOutcome, GroupState, PlayerCompletion, SettingsNeeded
from .lanes import Lane, Pending
from .limits import AdaptiveLimit
from .pacing import Pacer
from .writer import GroupWriter

logger = logging.getLogger("async_batchstate")

_CONTENTION = (ErrorKind.CONTENTION, ErrorKind.OVERLOADED)
FLIP_GRACE = 2.0
"""Seconds a close that cut a group waits for its finalization flip (a read and an update)."""
MAX_GROUP_SIZE = 1500
"""Largest group: 1,500 completions of the longest ids stay under the 10 MiB request limit."""


class GroupRunner:
    """Lanes, group writes and outcomes for one manager."""

    def __init__(
        self,
        writer: GroupWriter,
        finalizer: Finalizer,
        recorder: Recorder,
        validator: SampledValidator,
        *,
        retry: RetryPolicy,
        clock: Clock,
        rng: random.Random,
        rate: AsyncLimiter | None,
        max_group_size: int,
        max_in_flight: int,
        linger: float,
        expected_count: Callable[[str], Awaitable[int]],
        write_rate: float | None = None,
    ) -> None:
        if not 1 <= max_group_size <= MAX_GROUP_SIZE:
            raise ConfigurationError(
                f"max_group_size must be in [1, {MAX_GROUP_SIZE}]: a group is one request, "
                "and Firestore caps a request at 10 MiB (~6 KB per completion with 1,500-byte ids)"
            )
        if linger < 0:
            raise ConfigurationError("linger must be >= 0 seconds")
        self._writer = writer
        self._finalizer = finalizer
        self._recorder = recorder
        self._validator = validator
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._rate = rate
        self._group_size = max_group_size
        self._max_in_flight = max_in_flight
        self._linger = linger
        self._expected_count = expected_count
        self._lanes: dict[str, Lane] = {}
        self._write_rate = write_rate
        self._pacers: dict[str, Pacer] = {}
        """Per batch, kept while its lane comes and goes (bounded like ``_untold``)."""
        self._untold: set[str] = set()
        """Batches this process finalized while the finalizing caller had stopped waiting."""

    @property
    def lanes(self) -> int:
        """Batches with completions queued or in flight."""
        return len(self._lanes)

    @property
    def queued(self) -> int:
        """Completions waiting for a group."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    @property
    def in_flight(self) -> int:
        """Group writes in flight."""
        return sum(lane.in_flight for lane in self._lanes.values())

    async def aclose(self, drain_timeout: float) -> None:
        """Drain writes in flight for ``drain_timeout`` seconds, then fail what is left."""
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.hurry()
        try:
            async with self._clock.timeout(drain_timeout):
                for lane in lanes:
                    await lane.drain()
        except TimeoutError:
            logger.warning("closing with writes still in flight; failing them")
        error = ManagerClosedError(
            "the manager closed before this completion was confirmed; it was recorded "
            "whole or not at all: record it again to be sure"
        )
        for lane in lanes:
            lane.cancel_all(error)
        for lane in lanes:
            await lane.drain()

    async def record(
        self, batch_id: str, completion: PlayerCompletion, deadline: float
    ) -> CompletionResult:
        """Queue ``completion`` in its batch's lane; its outcome by ``deadline`` (``monotonic``).

        Raises:
            CompletionTimeoutError: No outcome by ``deadline``.
            BatchStateError: The group's write failed for this completion.
        """
        lane = self._lane(batch_id)
        pending = Pending(completion, deadline=deadline)
        player = completion.player
        wait = max(deadline - self._clock.monotonic(), 0.0)
        lane.submit(pending)
        try:
            async with self._clock.timeout(wait):
                result = await asyncio.shield(pending.future)
        except TimeoutError:
            arrived = self._settle(lane, pending)
            if arrived is None:
                raise CompletionTimeoutError(
                    f"no confirmation for player {player!r} of batch {batch_id!r} within "
                    f"{wait}s; it was recorded whole or not at all: record it again to be sure"
                ) from None
            result = arrived  # the answer came in the very turn the timeout fired
        except asyncio.CancelledError:
            arrived = self._settle(lane, pending)
            if arrived is not None and arrived.batch_completed:
                self._hand_over(batch_id)  # never lost: the batch's next caller is told
            raise
        return result

    @staticmethod
    def _settle(lane: Lane, pending: Pending) -> CompletionResult | None:
        """Stop waiting for ``pending``; its result if one arrived meanwhile."""
        future = pending.future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        lane.withdraw(pending)
        future.cancel()
        return None

    def _hand_over(self, batch_id: str) -> None:
        if len(self._untold) >= 10_000:  # bounded: a long-lived coordinator sees many batches
            self._untold.clear()
        self._untold.add(batch_id)

    async def _run_group(
        self,
        batch_id: str,
        group: list[Pending],
        limit: AdaptiveLimit,
        state: GroupState | None = None,
    ) -> None:
        """Write one group with retries and give every member its own outcome.

        Whatever happens (a cancellation included), every member's caller gets
        its result or an error before this returns.
        """
        try:
            await self._write_group(batch_id, group, limit, state or GroupState())
        finally:
            self._fail(
                batch_id,
                [p for p in group if not p.future.done()],
                ManagerClosedError(
                    "the manager closed while this completion was being written; it was "
                    "recorded whole or not at all: record it again to be sure"
                ),
            )

    async def _write_group(
        self, batch_id: str, group: list[Pending], limit: AdaptiveLimit, state: GroupState
    ) -> None:
        completions = [p.completion for p in group]
        started = self._clock.monotonic()
        budget = max(p.deadline for p in group) - started
        lane = self._lanes.get(batch_id)  # the lane writing this group: it is not idle
        pacer = lane.pacer if lane is not None else None

        async def attempt() -> Any:
            if self._rate is not None:
                await self._rate.acquire()
            begun, commits = self._clock.monotonic(), state.commits
            try:
                outcome = await self._writer.write(batch_id, completions, state)
            finally:
                if pacer is not None:
                    pacer.sent(state.commits - commits)
            limit.on_success(self._clock.monotonic() - begun)
            if pacer is not None:
                pacer.landed(outcome.completed_count, outcome.new_count)
            return outcome

        def on_failure(failure: AttemptFailure) -> None:
            if isinstance(failure.error, SettingsNeeded):
                return  # not a failure: its callers check the batch's settings and go again
            if failure.kind in _CONTENTION:
                limit.on_contention()
            logger.debug(
                "attempt %d for %d completion(s) of batch %r failed: %s",
                failure.attempt,
                len(group),
                batch_id,
                failure.kind.value,
                extra={
                    "batch_id": batch_id,
                    "attempt": failure.attempt,
                    "kind": failure.kind.value,
                    "delay": failure.delay,
                },
            )
            self._recorder.emit(
                AttemptFailed(
                    batch_id=batch_id,
                    group_size=len(group),
                    attempt=failure.attempt,
                    kind=failure.kind,
                    error=failure.error,
                    delay=failure.delay,
                )
            )

        try:
            outcome, attempts = await run_with_retry(
                attempt,
                self._retry,
                what=f"recording {len(group)} completion(s) of batch {batch_id!r}",
                deadline=max(budget, 0.001),
                clock=self._clock,
                rng=self._rng,
                on_failure=on_failure,
            )
        except BatchStateError as exc:
            if isinstance(exc, WriteFailedError) and len(group) > 1:
                await self._split(batch_id, group, limit, state)
            else:
                self._fail(batch_id, group, exc)
            return
        except Exception as exc:  # an unexpected error must still reach every caller
            if len(group) > 1:
                await self._split(batch_id, group, limit, state)
            else:
                wrapped = WriteFailedError(f"writing to batch {batch_id!r} failed: {exc!r}")
                wrapped.__cause__ = exc
                self._fail(batch_id, group, wrapped)
            return

        recorded = outcome.new_count
        self._recorder.emit(
            GroupCommitted(
                batch_id=batch_id,
                group_size=len(group),
                recorded=recorded,
                duplicates=len(group) - recorded,
                attempts=attempts,
                seconds=self._clock.monotonic() - started,
            )
        )
        flipped: BatchProgress | None = None
        owed = False
        known = self._finalizer.settled(batch_id, outcome)
        if known is not None:  # no flip due: tell the callers now, no task, no read
            self._resolve(batch_id, group, outcome, attempts, False)
            await self._after(batch_id, outcome, None, known[1])
            return
        check = asyncio.ensure_future(
            self._finalizer.after_write(batch_id, outcome, self._expected_count)
        )
        try:
            flipped, owed = await asyncio.shield(check)
        except asyncio.CancelledError:
            # A close cut this group while its flip was in flight. The flip is not cut
            # with it: waiting a moment for it tells the finishing caller the truth; a
            # flip still unanswered after that leaves its callback owed (to any process).
            flipped = await self._flip_within_grace(batch_id, check)
            raise
        except Exception:
            # The completions are committed; a later completion, redelivery,
            # wait_until_complete() or finalize() finalizes the batch.
            logger.exception(
                "finalization check of batch %r failed", batch_id, extra={"batch_id": batch_id}
            )
        finally:
            # Tell every caller, even when cancelled mid-check: their writes are committed.
            self._resolve(batch_id, group, outcome, attempts, flipped is not None)
        await self._after(batch_id, outcome, flipped, owed)

    async def _after(
        self, batch_id: str, outcome: GroupOutcome, flipped: BatchProgress | None, owed: bool
    ) -> None:
        """After the callers are told: a consistency check, and the callback if owed."""
        if flipped is not None:
            self._validator.on_finished(batch_id)  # one full check of a finished batch
        elif outcome.new_count:
            # Sampled per commit, not per completion: a hot batch commits groups of
            # hundreds, and a check per completion would rescan it continuously.
            self._validator.maybe_validate(batch_id)
        # The callback runs in a background task of the manager, never in a caller's
        # call; a close cuts it after the drain timeout, and then it stays owed.
        owed = owed or (outcome.batch is not None and outcome.batch.callback_owed)
        await self._finalizer.settle(batch_id, flipped, owed, background=True)

    async def _flip_within_grace(
        self, batch_id: str, check: asyncio.Future[tuple[BatchProgress | None, bool]]
    ) -> BatchProgress | None:
        """The flip's progress if it finishes within ``FLIP_GRACE``; else cancel it."""
        try:
            async with self._clock.timeout(FLIP_GRACE):
                flipped, _ = await asyncio.shield(check)
                return flipped
        except (TimeoutError, asyncio.CancelledError):
            check.cancel()
            logger.warning(
                "closing with the finalization of batch %r unanswered; if it landed, its "
                "callback stays owed",
                batch_id,
                extra={"batch_id": batch_id},
            )
        except Exception:
            logger.exception(
                "finalization check of batch %r failed", batch_id, extra={"batch_id": batch_id}
            )
        return None

    def _resolve(
        self,
        batch_id: str,
        group: list[Pending],
        outcome: GroupOutcome,
        attempts: int,
        flipped: bool,
    ) -> None:
        """Give each caller its result; ``batch_completed`` to one if this group flipped."""
        waiting = [i for i, p in enumerate(group) if not p.future.done()]
        completer: int | None = None
        if flipped:
            new = [i for i in waiting if outcome.recorded[i]]
            candidates = new or waiting
            completer = candidates[-1] if candidates else None
            if completer is None:  # every caller stopped waiting: tell the batch's next one
                self._hand_over(batch_id)
        elif waiting and batch_id in self._untold:
            self._untold.discard(batch_id)
            completer = waiting[-1]
        late = outcome.late or (False,) * len(group)
        for index, (pending, is_new) in enumerate(zip(group, outcome.recorded, strict=True)):
            if pending.future.done():
                continue
            status = CompletionStatus.DUPLICATE
            if is_new:
                status = CompletionStatus.LATE if late[index] else CompletionStatus.RECORDED
            pending.resolve(
                CompletionResult(
                    batch_id=batch_id,
                    player=pending.completion.player,
                    status=status,
                    batch_completed=index == completer,
                    attempts=attempts,
                    group_size=len(group),
                )
            )

    async def _split(
        self, batch_id: str, group: list[Pending], limit: AdaptiveLimit, state: GroupState
    ) -> None:
        """Retry each member alone, so one bad completion fails only its own caller.

        The members keep the group's write id: one its failed write recorded after
        all (an answer lost before the failure) is still this caller's RECORDED.
        """
        logger.warning(
            "a group of %d completions of batch %r failed; retrying each alone",
            len(group),
            batch_id,
            extra={"batch_id": batch_id, "group_size": len(group)},
        )
        state.split = True  # its ids stay in open_writes: a member's retry may need them
        seen: set[str] = set()
        for pending in group:
            player = pending.completion.player
            # A later caller of the same player gets a write of its own: sharing the
            # group's write id, it would find the first caller's write and be told
            # RECORDED too (it is a DUPLICATE).
            await self._run_group(
                batch_id, [pending], limit, state if player not in seen else GroupState()
            )
            seen.add(player)

    def _fail(self, batch_id: str, group: list[Pending], error: BaseException) -> None:
        if not group:
            return
        if not isinstance(error, SettingsNeeded):  # not a failure: each caller checks, again
            self._recorder.emit(GroupFailed(batch_id=batch_id, group_size=len(group), error=error))
        for pending in group:
            pending.fail(error)

    def _lane(self, batch_id: str) -> Lane:
        lane = self._lanes.get(batch_id)
        if lane is None:
            lane = Lane(
                batch_id,
                self._run_group,
                max_group_size=self._group_size,
                limit=AdaptiveLimit(self._max_in_flight),
                linger=self._linger,
                on_idle=self._drop_lane,
                clock=self._clock,
                pacer=self._pacer(batch_id),
            )
            self._lanes[batch_id] = lane
        return lane

    def _pacer(self, batch_id: str) -> Pacer | None:
        if self._write_rate is None:
            return None
        pacer = self._pacers.get(batch_id)
        if pacer is None:
            if len(self._pacers) >= 10_000:  # bounded: keep those of batches being written
                self._pacers = {b: p for b, p in self._pacers.items() if b in self._lanes}
            pacer = self._pacers[batch_id] = Pacer(self._write_rate, self._clock)
        return pacer

    def _drop_lane(self, lane: Lane) -> None:
        if self._lanes.get(lane.batch_id) is lane:
            del self._lanes[lane.batch_id]
