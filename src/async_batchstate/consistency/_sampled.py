"""Sampled validation: O(1) reads per completion, and an alert only for a confirmed mismatch.

After a commit, a sampled check reads ONE masked batch document and applies
the rules that document can check (``document_problems``). Only a
disagreement that persists on a re-read after ``confirm_delay`` starts a deep
check (aggregation and ids from one snapshot), and only a deep check that
still disagrees when run again after the delay is logged as ``CONSISTENCY
MISMATCH`` and alerted, saying how it was confirmed. When a batch finishes,
``on_finished`` checks it once against the aggregation of its completion
documents (a few reads, not one per completion), confirmed the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import BatchStateError, ConfigurationError
from .._retry import RetryPolicy, run_with_retry
from .._store.ids import Layout
from .._store.refs import Refs
from ..instrumentation._events import ValidationRan
from ._alerts import AlertHook, log_mismatch, run_alert_hooks
from ._read import confirm_unchanged, read_aggregation, read_document, read_report
from ._report import ConsistencyReport, aggregate_problems, document_problems

logger = logging.getLogger("async_batchstate.consistency")

T = TypeVar("T")

DEEP_CHECKS = 2
"""Deep checks that must all find a mismatch before it is alerted."""


def _is_mismatch(report: ConsistencyReport) -> bool:
    return not report.is_consistent and not report.awaiting_backfill


_MAX_FINISHING = 1_000
"""Finished batches waiting for their check, at most (beyond, they go unchecked)."""


class SampledValidator:
    """Validates a random sample of batches in the background after their commits.

    A sampled check costs ONE document read: the batch document, masked to the
    fields the rules compare (``document_problems``). A disagreement is read
    again after ``confirm_delay``; one that persists is checked in full (the
    aggregation and ids of the completion documents, one snapshot), twice,
    ``confirm_delay`` apart, and only then logged at ERROR as ``CONSISTENCY
    MISMATCH`` and passed to the alert hooks, ``report.confirmation`` saying
    how it was confirmed. ``on_finished`` checks a finished batch once against
    the aggregation of its completion documents (1 read per 1,000 of them),
    confirmed the same way. A batch whose only gap is legacy players without
    completion documents, not marked backfilled, awaits backfill: not alerted.

    ``maybe_validate`` never blocks, never raises and never delays the caller:
    a sampled validation runs in a task this object owns, at most one per batch
    at a time, at most one per batch per ``min_interval`` seconds, and at most
    ``max_outstanding`` in all (beyond that, samples are dropped: validation is a
    monitor, not a queue). ``aclose`` awaits them.

    Args:
        client: The Firestore client.
        layout: Where batches live.
        mode: The writers' mode (whose rules apply).
        rate: Probability in ``[0, 1]`` that a call schedules a validation (0
            also disables ``on_finished``).
        rng: Random source for the sampling (inject a seeded one in tests).
        alert_hooks: Called with the report of each confirmed mismatch.
        retry: Retry policy for the validation reads.
        max_outstanding: Most sampled validations in flight.
        min_interval: Least seconds between two validations of one batch here.
        clock: Time source for ``min_interval``, ``confirm_delay`` and the retries.
        confirm_delay: Seconds between a disagreement and the read that confirms it.
        emit: Receives a ``ValidationRan`` after each check (its billed reads).

    Raises:
        ConfigurationError: ``rate`` outside ``[0, 1]``, ``max_outstanding < 1``, or
            a negative ``min_interval`` or ``confirm_delay``.
    """

    def __init__(
        self,
        client: AsyncClient,
        layout: Layout,
        mode: MigrationMode,
        *,
        rate: float = 0.1,
        rng: random.Random | None = None,
        alert_hooks: Iterable[AlertHook] = (),
        retry: RetryPolicy | None = None,
        max_outstanding: int = 8,
        min_interval: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        confirm_delay: float = 1.0,
        emit: Callable[[ValidationRan], None] | None = None,
    ) -> None:
        if not min_interval >= 0.0:
            raise ConfigurationError(f"validation interval must be >= 0 s, got {min_interval}")
        if not confirm_delay >= 0.0:
            raise ConfigurationError(f"confirm delay must be >= 0 s, got {confirm_delay}")
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"validation rate must be in [0, 1], got {rate}")
        if max_outstanding < 1:
            raise ConfigurationError("max_outstanding must be >= 1")
        self._refs = Refs(client, layout)
        self._mode = mode
        self.rate = rate
        self._rng = rng or random.Random()
        self._hooks = tuple(alert_hooks)
        self._retry = retry or RetryPolicy(max_attempts=5, deadline=30.0)
        self._max = max_outstanding
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_outstanding)
        self._interval = min_interval
        self._clock = clock
        self._confirm_delay = confirm_delay
        self._emit = emit
        self._last: OrderedDict[str, float] = OrderedDict()
        """When each recently validated batch was last scheduled (bounded)."""
        self._closed = False
        self.validated = 0
        self.mismatches = 0
        self.reads = 0

    def __repr__(self) -> str:
        return (
            f"<SampledValidator rate={self.rate} outstanding={len(self._tasks)} "
            f"validated={self.validated} mismatches={self.mismatches} reads={self.reads}"
            f"{' closed' if self._closed else ''}>"
        )

    def maybe_validate(self, batch_id: str) -> bool:
        """With probability ``rate``, start a background validation of ``batch_id``.

        Returns:
            Whether a validation was scheduled.
        """
        if self._closed or self.rate <= 0.0 or self._rng.random() >= self.rate:
            return False
        if batch_id in self._tasks or len(self._tasks) >= self._max:
            return False
        now = self._clock.monotonic()
        last = self._last.get(batch_id)
        if last is not None and now - last < self._interval:
            return False
        try:
            task = asyncio.get_running_loop().create_task(self._run(batch_id, finished=False))
        except RuntimeError:  # no running loop: nothing to schedule on
            return False
        self._tasks[batch_id] = task
        self._last[batch_id] = now
        self._last.move_to_end(batch_id)
        if len(self._last) > 10_000:
            self._last.popitem(last=False)
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))
        return True

    def on_finished(self, batch_id: str) -> bool:
        """Check ``batch_id`` once in the background now that it is finished.

        Not sampled (but off when ``rate`` is 0): the batch document and the
        aggregation of its completion documents, confirmed as a sampled check is.
        It waits for a sampled check of the batch in flight here.

        Returns:
            Whether a check was scheduled.
        """
        if self._closed or self.rate <= 0.0:
            return False
        sampled = self._tasks.get(batch_id)

        if len(self._finishing) >= _MAX_FINISHING:
            return False  # a monitor, not a queue: a burst of finishes drops the excess

        async def after_sampled() -> None:
            if sampled is not None:
                await asyncio.gather(sampled, return_exceptions=True)
            async with self._slots:  # at most max_outstanding aggregations at a time
                await self._run(batch_id, finished=True)

        try:
            task = asyncio.get_running_loop().create_task(after_sampled())
        except RuntimeError:
            return False
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return True

    async def check(self, batch_id: str, *, finished: bool = False) -> ValidationRan:
        """Validate ``batch_id`` now; log and alert a mismatch once confirmed.

        Args:
            batch_id: The batch.
            finished: Check as ``on_finished`` does (with the aggregation of the
                completion documents) rather than as a sample (the document only).

        Returns:
            What the check found and cost (also passed to ``emit``).

        Raises:
            BatchNotFoundError: No such batch.
        """
        check = _Check(
            self._refs,
            self._mode,
            self._retry,
            self._clock,
            self._confirm_delay,
            batch_id,
            finished=finished,
        )
        try:
            outcome, report = await check.run()
        except BaseException:
            self._ran(ValidationRan(batch_id, check.reads, suspected=check.suspected))
            raise
        if report is not None:
            self.mismatches += 1
            log_mismatch(report)
            await run_alert_hooks(self._hooks, report)
        self._ran(outcome)
        return outcome

    def _ran(self, outcome: ValidationRan) -> None:
        self.validated += 1
        self.reads += outcome.reads
        if self._emit is not None:
            self._emit(outcome)

    async def _run(self, batch_id: str, *, finished: bool) -> None:
        try:
            await self.check(batch_id, finished=finished)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a monitor must not crash anything; say so and move on
            logger.warning(
                "%s validation of batch %r failed: %s",
                "final" if finished else "sampled",
                batch_id,
                exc,
                # The library's own errors say what failed; anything else gets its traceback.
                exc_info=not isinstance(exc, BatchStateError),
                extra={"batch_id": batch_id},
            )

    async def wait_idle(self) -> None:
        """Wait until no validation is in flight."""
        while self._tasks or self._finishing:
            await asyncio.gather(*self._tasks.values(), *self._finishing, return_exceptions=True)

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop sampling; wait for the validations in flight, up to ``timeout`` seconds.

        A monitor never holds a shutdown up: what is still running after ``timeout``
        is cancelled (None: wait for it).
        """
        self._closed = True
        try:
            async with self._clock.timeout(timeout):
                await self.wait_idle()
        except TimeoutError:
            running = [*self._tasks.values(), *self._finishing]
            logger.info("closing: cancelling %d validation(s) still in flight", len(running))
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


class _Check:
    """One check of one batch, and the reads it costs as Firestore bills them."""

    def __init__(
        self,
        refs: Refs,
        mode: MigrationMode,
        retry: RetryPolicy,
        clock: Clock,
        delay: float,
        batch_id: str,
        *,
        finished: bool,
    ) -> None:
        self._refs = refs
        self._mode = mode
        self._retry = retry
        self._clock = clock
        self._delay = delay
        self._batch_id = batch_id
        self._finished = finished
        self.reads = 0
        self.suspected = False

    async def run(self) -> tuple[ValidationRan, ConsistencyReport | None]:
        """Probe; confirm a disagreement by a re-read, then by deep checks.

        Returns:
            The outcome, and the confirmed mismatch's report (None if none).
        """
        batch_id, delay = self._batch_id, self._delay
        if not await self._probe():
            return ValidationRan(batch_id, self.reads), None
        self.suspected = True
        await self._clock.sleep(delay)
        if not await self._probe():
            logger.info(
                "batch %r disagreed on one read and agreed on the next (a transient state)",
                batch_id,
                extra={"batch_id": batch_id},
            )
            return ValidationRan(batch_id, self.reads, suspected=True), None
        report = await self._deep()
        for _ in range(DEEP_CHECKS - 1):
            if not _is_mismatch(report):
                break
            await self._clock.sleep(delay)
            report = await self._deep()
        if report.awaiting_backfill:
            # Players recorded by LEGACY writers, not yet backfilled: expected until backfill.
            logger.debug("batch %r awaits backfill", batch_id, extra={"batch_id": batch_id})
        if not _is_mismatch(report):
            logger.info(
                "batch %r disagreed on two reads; its full check agrees: %s",
                batch_id,
                report.summary(),
                extra={"batch_id": batch_id},
            )
            return ValidationRan(batch_id, self.reads, suspected=True), None
        first = "count re-read" if self._finished else "document re-read"
        report = dataclasses.replace(report, confirmation=f"{first} + {DEEP_CHECKS} deep reads")
        outcome = ValidationRan(
            batch_id,
            self.reads,
            suspected=True,
            confirmed=True,
            confirmation=report.confirmation,
            problems=report.problems,
        )
        return outcome, report

    async def _probe(self) -> tuple[str, ...]:
        """The rules one document read can check (with the aggregation, at finish)."""

        async def attempt() -> tuple[tuple[str, ...], int]:
            reading = await read_document(self._refs, self._batch_id)
            if not self._finished:
                return document_problems(self._mode, reading.data), reading.reads
            reading = await confirm_unchanged(
                self._refs, await read_aggregation(self._refs, reading)
            )
            problems = aggregate_problems(
                self._mode, reading.data, reading.completion_docs or 0, reading.completion_sum or 0
            )
            return problems, reading.reads

        return await self._counted(attempt)

    async def _deep(self) -> ConsistencyReport:
        """The full rules, from one snapshot."""
        return await self._counted(lambda: read_report(self._refs, self._mode, self._batch_id))

    async def _counted(self, attempt: Callable[[], Awaitable[tuple[T, int]]]) -> T:
        (value, reads), _ = await run_with_retry(
            attempt,
            self._retry,
            what=f"validating batch {self._batch_id!r}",
            clock=self._clock,
        )
        self.reads += reads
        return value
