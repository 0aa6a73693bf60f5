"""Backfill of many batches: resumable from a checkpoint, one failed batch never stops the run."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.cloud.firestore_v1.async_client import AsyncClient

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._retry import RetryPolicy, retried
from .._store.ids import Layout
from .._store.names import STATUS_COMPLETE
from .._store.refs import Refs
from .._types import renamed_attribute
from .._write.finalizer import Finalizer
from ..instrumentation._events import Recorder
from ._arguments import checked
from ._backfill_batch import BatchBackfill, _backfill_batch
from ._checkpoint import Checkpoint
from ._progress import MigrationError, ProgressCallback, _Tally
from ._walk import _checked_ids, _ids, _total, for_each_batch

logger = logging.getLogger("async_batchstate.migration")


@dataclass(frozen=True)
class BackfillSummary:
    """The outcome of a backfill run.

    Attributes:
        batches: Batches handled in this run.
        changed: Batches that got completion documents or the backfilled mark.
        completions_created: Completion documents created.
        predictions_backfilled: Sum of their counts.
        unknown_counts: ``(batch_id, player)`` left alone for lack of a count.
        failures: ``(batch_id, reason)`` of batches that failed, the reason on one
            line; the run went on with the others (re-run to retry them).
        resumed_after: The checkpoint's batch id this run started after, if any.
        dry_run: Nothing was written.
        finalized: Batches this run completed and finalized (their ``on_complete``
            is owed to the next coordinator that touches them).
    """

    batches: int
    changed: int
    completions_created: int
    predictions_backfilled: int
    unknown_counts: tuple[tuple[str, str], ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    resumed_after: str | None = None
    dry_run: bool = False
    finalized: int = 0

    if not typing.TYPE_CHECKING:  # hidden so type checkers flag the old name too

        def __getattr__(self, name: str) -> object:
            raise renamed_attribute(self, name, {"finalised": "finalized"})

    @property
    def ok(self) -> bool:
        """No batch failed and no count was missing."""
        return not self.failures and not self.unknown_counts


class Watermark:
    """The longest finished prefix of the dispatched batch ids: where a resumed run may start.

    Batches finish out of order (several run at once) and a failed one never
    finishes: the watermark is the last id of the longest run of dispatched ids,
    from the start, that all finished. Every batch at or below it is done.

    Args:
        start: The watermark before anything is dispatched (the checkpoint's).
    """

    def __init__(self, start: str | None = None) -> None:
        self.value = start
        self._dispatched: deque[str] = deque()
        self._finished: set[str] = set()

    def dispatched(self, batch_id: str) -> None:
        """``batch_id`` was started (ids are dispatched in order)."""
        self._dispatched.append(batch_id)

    def finished(self, batch_id: str) -> None:
        """``batch_id`` succeeded: the watermark moves past it once all before it did."""
        self._finished.add(batch_id)
        while self._dispatched and self._dispatched[0] in self._finished:
            self.value = self._dispatched.popleft()
            self._finished.discard(self.value)


class _CheckpointSaver:
    """Saves the watermark at most once per ``interval`` (or on demand); a failed save is logged."""

    def __init__(
        self,
        checkpoint: Checkpoint | None,
        watermark: Watermark,
        mode: MigrationMode,
        interval: float,
        clock: Clock,
    ) -> None:
        self._checkpoint = checkpoint
        self._watermark = watermark
        self._mode = mode
        self._interval = interval
        self._clock = clock
        self._saved = watermark.value
        self._last_save = clock.monotonic()
        self._lock = asyncio.Lock()

    async def save_if_due(self) -> None:
        """Save if ``interval`` has passed since the last save (or failed attempt)."""
        if self._clock.monotonic() - self._last_save >= self._interval:
            await self.save()

    async def save(self, *, finished: bool = False) -> None:
        """Save the watermark (if it moved), or that the run finished."""
        checkpoint = self._checkpoint
        if checkpoint is None:
            return
        async with self._lock:
            watermark = self._watermark.value
            if not finished and watermark == self._saved:
                return
            try:
                await checkpoint.save(
                    {"last_done": watermark, "finished": finished, "mode": self._mode.value}
                )
            except Exception:
                # Only work is lost: a later save, or the next run, covers it.
                logger.warning(
                    "saving the backfill checkpoint failed; the run goes on",
                    exc_info=True,
                    extra={"checkpoint": repr(checkpoint), "last_done": watermark},
                )
                self._last_save = self._clock.monotonic()  # retry after an interval, not per batch
                return
            self._saved, self._last_save = watermark, self._clock.monotonic()


class _BackfillRun:
    """One ``backfill`` call: the per-batch work, and the totals its batches add up to."""

    def __init__(
        self,
        client: AsyncClient,
        layout: Layout,
        mode: MigrationMode,
        *,
        dry_run: bool,
        retry: RetryPolicy | None,
        clock: Clock,
        tally: _Tally,
        watermark: Watermark,
        saver: _CheckpointSaver,
    ) -> None:
        self._client = client
        self._layout = layout
        self._dry_run = dry_run
        self._retry = retry
        self._clock = clock
        self._tally = tally
        self._watermark = watermark
        self._saver = saver
        self._finalizer = Finalizer(
            client,
            Refs(client, layout),
            mode,
            retrying=lambda call, what: retried(call, retry, what=what, clock=clock),
            recorder=Recorder(()),  # no callbacks: the batches it finishes owe theirs
            clock=clock,
        )
        self.changed = self.created = self.predictions = self.finalized = 0
        self.unknown: list[tuple[str, str]] = []

    async def tracked(self, ids: AsyncIterator[str]) -> AsyncIterator[str]:
        """``ids``, each marked dispatched on the watermark as it is handed out."""
        async for batch_id in ids:
            self._watermark.dispatched(batch_id)
            yield batch_id

    async def work(self, batch_id: str) -> BatchBackfill:
        """Backfill one batch, then finalize it if that completed it."""
        done = await _backfill_batch(
            self._client,
            self._layout,
            batch_id,
            dry_run=self._dry_run,
            retry=self._retry,
            clock=self._clock,
        )
        if self._dry_run or done.skipped is not None:
            return done
        # A batch recorded partly by LEGACY writers may be complete only now (as a
        # subcollection-reading mode counts): finalize it; its callback is owed.
        finished, _ = await self._finalizer.finish(batch_id, STATUS_COMPLETE)
        return dataclasses.replace(done, finalized=finished is not None)

    async def on_done(self, batch_id: str, result: BatchBackfill | Exception) -> None:
        """Add one batch's outcome, move the watermark, save the checkpoint when due."""
        if self._tally.record(batch_id, result) and isinstance(result, BatchBackfill):
            self._watermark.finished(batch_id)
            self.finalized += result.finalized
            self.changed += bool(result.created or result.marked)
            self.created += len(result.created)
            self.predictions += result.predictions
            self.unknown.extend((batch_id, p) for p in result.unknown_counts)
        await self._saver.save_if_due()


@checked
async def backfill(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    concurrency: int = 8,
    checkpoint: Checkpoint | None = None,
    checkpoint_interval: float = 1.0,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> BackfillSummary:
    """Backfill every batch with a legacy array (or only ``batch_ids``).

    Args:
        client: The Firestore client.
        layout: Where the batches live.
        mode: The mode every writer runs in now. ``LEGACY`` is refused: writers
            that do not create completion documents would undo the backfill.
        batch_ids: Only these batches (the checkpoint is then not used).
        dry_run: Report what would be created; write nothing (no checkpoint either).
        concurrency: Batches in flight at once.
        checkpoint: Where to resume from and save progress; None: always from the start.
            A finished run's checkpoint makes the next run start over (cheap:
            backfilled batches need no write).
        checkpoint_interval: Least seconds between checkpoint saves. A save that
            fails is logged and the run goes on (the checkpoint only saves work).
        progress: Called after each batch.
        retry: Retry policy of each transaction.
        clock: Time source of the retries and ``checkpoint_interval``.

    A batch that fails (after ``retry`` gave up) is listed in the summary's
    ``failures`` and the run goes on with the others.

    Raises:
        MigrationError: ``mode`` is ``LEGACY`` or ``concurrency < 1``.
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
    """
    batch_ids = _checked_ids(batch_ids)
    if not mode.writes_subcollection:
        raise MigrationError(
            "backfill needs every writer in a mode that writes the subcollection (DUAL_WRITE "
            "first): a LEGACY writer records players without completion documents"
        )
    if batch_ids is not None or dry_run:
        checkpoint = None
    start_after: str | None = None
    if checkpoint is not None:
        state = await checkpoint.load()
        if state and not state.get("finished"):
            start_after = state.get("last_done")
    watermark = Watermark(start_after)
    saver = _CheckpointSaver(checkpoint, watermark, mode, checkpoint_interval, clock)
    tally = _Tally(await _total(client, layout, batch_ids, start_after), progress)
    run = _BackfillRun(
        client,
        layout,
        mode,
        dry_run=dry_run,
        retry=retry,
        clock=clock,
        tally=tally,
        watermark=watermark,
        saver=saver,
    )
    ids = run.tracked(_ids(client, layout, batch_ids, start_after))
    await for_each_batch(ids, run.work, concurrency=concurrency, on_done=run.on_done)
    await saver.save(finished=not tally.failures)
    summary = BackfillSummary(
        batches=tally.done,
        changed=run.changed,
        completions_created=run.created,
        predictions_backfilled=run.predictions,
        unknown_counts=tuple(run.unknown),
        failures=tuple(tally.failures),
        resumed_after=start_after,
        dry_run=dry_run,
        finalized=run.finalized,
    )
    logger.info(
        "backfill %s: %d batches, %d changed, %d completion docs",
        "dry run" if dry_run else "done",
        summary.batches,
        summary.changed,
        summary.completions_created,
        extra={"batches": summary.batches, "completions_created": run.created},
    )
    return summary
