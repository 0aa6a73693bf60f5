"""Finalisation: flip a batch to ``complete`` exactly once, and owe its callback durably.

The flip is lock-free: a plain read of the batch document, then an update with
an ``update_time`` precondition that stores ``status=complete`` and the
finalising call's id (``finalised_by``). When the answer to that update is
lost, the retry reads the batch: its own id means this call flipped it. No
outcome is decided from error text, and exactly one call ever flips.

The completion callback is owed durably: when the flipping manager has an
``on_complete``, the flip records in the same write that the callback is owed
and leased to the flipper; it is marked done after ``on_complete`` returns.
If the process dies in between, any manager that later touches the batch
(``finalize``, ``wait_until_complete``, a completion, ``deliver_owed_callbacks``)
runs it once the lease has expired. So the flip is exactly once and the
callback at least once, with ``BatchProgress.finalisation_key`` to dedupe on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import BatchNotFoundError, ConfigurationError
from .._retry import Retrying
from .._store import schema as f
from .._store.refs import Refs
from .._store.roster import BatchInfoCache
from .._store.schema import progress_from
from .._types import BatchProgress
from ..instrumentation._events import BatchFinalised, Recorder
from .writer import BatchView, GroupOutcome, new_write_id

logger = logging.getLogger("async_batchstate")


OnComplete = Callable[[str, BatchProgress], Awaitable[None] | None]
"""``on_complete(batch_id, progress)``: sync or async; runs at least once per finalised
batch (``progress.finalisation_key`` is the same for every run)."""

_BASE_FIELDS = [
    f.EXPECTED_COUNT,
    f.STATUS,
    f.DEADLINE,
    f.CREATED_AT,
    f.COMPLETED_AT,
    f.EXPIRED_REASON,
    f.FINALISED_BY,
    f.TOTAL_PREDICTIONS_SUBCOLL,
    f.TOTAL_PREDICTIONS,
    f.CALLBACK_OWED,
    f.CALLBACK_CLAIMED_AT,
    *f.COUNT_FIELDS,
]


class Finaliser:
    """Flips batches to ``complete`` and runs (or owes) their completion callback."""

    def __init__(
        self,
        client: AsyncClient,
        refs: Refs,
        mode: MigrationMode,
        *,
        retrying: Retrying,
        recorder: Recorder,
        on_complete: OnComplete | None,
        callback_lease: float,
        owe_callbacks: bool | None = None,
        on_expired: OnComplete | None = None,
        retain_for: dt.timedelta | float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        infos: BatchInfoCache | None = None,
    ) -> None:
        if not (isinstance(callback_lease, int | float) and math.isfinite(callback_lease)):
            raise ConfigurationError("callback_lease must be a finite number of seconds")
        if callback_lease <= 0:
            raise ConfigurationError("callback_lease must be > 0 seconds")
        if isinstance(retain_for, int | float):
            retain_for = dt.timedelta(seconds=retain_for)
        if retain_for is not None and retain_for <= dt.timedelta(0):
            raise ConfigurationError("retain_for must be a positive duration")
        self._client = client
        self._clock = clock
        self._refs = refs
        self._mode = mode
        self._infos = infos
        self._retrying = retrying
        self._recorder = recorder
        self._callbacks = {f.STATUS_COMPLETE: on_complete, f.STATUS_EXPIRED: on_expired}
        self._runs_callbacks = on_complete is not None or on_expired is not None
        self._lease = float(callback_lease)
        self._retain_for = retain_for
        # Managers owe a callback when they have one (a fleet shares its settings);
        # backfill, which has none, owes it to the coordinators that do.
        self._owe = self._runs_callbacks if owe_callbacks is None else owe_callbacks
        self._waiters: dict[str, set[asyncio.Event]] = {}

    # -- waiting ---------------------------------------------------------------------

    @contextlib.contextmanager
    def waiter(self, batch_id: str) -> Iterator[asyncio.Event]:
        """An event set when this process finalises ``batch_id``; forgotten on exit."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(batch_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(batch_id) is waiters:
                del self._waiters[batch_id]

    @property
    def waiting_batches(self) -> int:
        """Batches some caller of this process is waiting on."""
        return len(self._waiters)

    # -- reading ---------------------------------------------------------------------

    def _fields(self, batch_id: str) -> list[str]:
        # The array counts only where completion documents may not guard the batch
        # (LEGACY writers of 0.1 kept no legacy_only_count): read it only there.
        if self._infos is None or not self._infos.known_guarded(batch_id):
            return [*_BASE_FIELDS, f.COMPLETED_PLAYERS]
        return _BASE_FIELDS

    async def read(self, batch_id: str) -> tuple[BatchProgress, Any]:
        """The batch's progress (without players) and the snapshot it came from."""
        snap = await self._refs.batch(batch_id).get(field_paths=self._fields(batch_id), retry=None)
        if not snap.exists:
            raise BatchNotFoundError(f"batch {batch_id!r} does not exist")
        progress = progress_from(batch_id, self._mode, snap.to_dict() or {})
        return dataclasses.replace(progress, completed_players=()), snap

    # -- the flip --------------------------------------------------------------------

    async def after_write(
        self,
        batch_id: str,
        outcome: GroupOutcome,
        expected_count: Callable[[str], Awaitable[int]],
    ) -> tuple[BatchProgress | None, bool]:
        """After a group's write: (the progress if this call flipped the batch, callback owed?).

        A write that reports the count compares it with the expected count (cached
        per batch) and reads nothing unless the batch is complete; a write that
        read the batch document (a group of redeliveries) decides from that read.
        A group that neither wrote nor read checks by reading: that is how a batch
        whose finaliser crashed gets finalised by a later redelivery.
        """
        batch: BatchView | None = outcome.batch
        if outcome.expired:
            return None, False  # the batch expired: a late completion never finalises it
        if batch is not None:
            if batch.status != f.STATUS_IN_PROGRESS:
                return None, batch.callback_owed
            assert outcome.completed_count is not None
            if outcome.completed_count < batch.expected_count:
                return None, False
        elif outcome.completed_count is not None and (
            outcome.completed_count < await expected_count(batch_id)
        ):
            return None, False
        return await self.flip(batch_id)

    async def flip(self, batch_id: str) -> tuple[BatchProgress | None, bool]:
        """Flip ``status`` to complete if every completion is recorded and nobody has yet.

        Returns:
            The final progress if this call flipped it (else None), and whether a
            completion callback is owed (finished earlier, never confirmed done).
        """
        return await self.finish(batch_id, f.STATUS_COMPLETE)

    async def finish(
        self,
        batch_id: str,
        status: str,
        fields: Callable[[BatchProgress, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> tuple[BatchProgress | None, bool]:
        """Move an in-progress batch to the terminal ``status``, exactly once across processes.

        ``complete`` only when every completion is recorded; ``expired`` only
        when not (a batch whose last completion just landed completes instead).
        Read, then an update with an ``update_time`` precondition: of two calls
        racing (an expiry and the last completion, or two processes), one wins
        and the other re-reads a terminal batch. The update stores this call's
        id, so when its answer is lost the retry recognises its own write.

        Args:
            batch_id: The batch.
            status: ``complete`` or ``expired``.
            fields: More fields for the update, from the progress and document read.

        Returns:
            The final progress if this call finished it (else None), and whether a
            callback is owed (finished earlier, never confirmed done).
        """
        finish_id = new_write_id()
        ref = self._refs.batch(batch_id)
        owed: list[bool] = [False]

        async def attempt() -> BatchProgress | None:
            progress, snap = await self.read(batch_id)
            data = snap.to_dict() or {}
            if progress.is_terminal:
                if progress.finaliser_id == finish_id:  # our answer was lost; we did it
                    return progress
                owed[0] = data.get(f.CALLBACK_OWED) is True
                return None
            if progress.is_complete != (status == f.STATUS_COMPLETE):
                return None
            update: dict[str, Any] = {
                f.STATUS: status,
                f.COMPLETED_AT: SERVER_TIMESTAMP,
                f.FINALISED_BY: finish_id,
            }
            if status == f.STATUS_EXPIRED:
                update[f.EXPIRED_FLAG] = 1
            if self._retain_for is not None:
                update[f.EXPIRE_AT] = self._clock.now() + self._retain_for
            if fields is not None:
                update |= await fields(progress, data)
            if self._owe:
                update[f.CALLBACK_OWED] = True
            if self._runs_callbacks:  # this process runs it: it holds the lease
                update |= {
                    f.CALLBACK_CLAIMED_BY: finish_id,
                    f.CALLBACK_CLAIMED_AT: SERVER_TIMESTAMP,
                }
            option = self._client.write_option(last_update_time=snap.update_time)
            try:
                await ref.update(update, option=option, retry=None)
            except gexc.FailedPrecondition:
                # The batch changed since the read (a commit landed): read again.
                raise gexc.Aborted("batch changed while finishing") from None  # type: ignore[no-untyped-call]
            return dataclasses.replace(
                progress,
                status=status,
                finaliser_id=finish_id,
                expired_reason=update.get(f.EXPIRED_REASON),
                missing_players=tuple(update.get(f.MISSING_PLAYERS, ())),
            )

        finished: BatchProgress | None = await self._retrying(
            attempt, f"finishing batch {batch_id!r} as {status}"
        )
        if finished is None:
            return None, owed[0]
        logger.info(
            "batch %r %s",
            batch_id,
            status,
            extra={"batch_id": batch_id, "completed_count": finished.completed_count},
        )
        self._recorder.emit(BatchFinalised(batch_id, finished))
        for event in self._waiters.get(batch_id, ()):
            event.set()
        return finished, False

    async def expire(
        self,
        batch_id: str,
        reason: str,
        missing: Callable[[dict[str, Any]], Awaitable[list[str]]],
    ) -> bool:
        """Finish an unfinished, incomplete batch as ``expired``; True for the one call that did.

        Stores the reason and the first ``MISSING_KEPT`` of ``missing(document)``.
        A complete batch is left to its completion's finaliser: one terminal status.
        """

        async def fields(progress: BatchProgress, data: dict[str, Any]) -> dict[str, Any]:
            return {
                f.EXPIRED_REASON: reason,
                f.MISSING_PLAYERS: (await missing(data))[: f.MISSING_KEPT],
                f.MISSING_COUNT: progress.remaining,
            }

        return await self.settle(batch_id, *await self.finish(batch_id, f.STATUS_EXPIRED, fields))

    async def finalize(self, batch_id: str) -> bool:
        """Flip the batch if it is complete; True for the one call that did."""
        return await self.settle(batch_id, *await self.flip(batch_id))

    async def settle(self, batch_id: str, finished: BatchProgress | None, owed: bool) -> bool:
        """After ``finish``: run the callback if this call finished the batch, else an owed one."""
        if finished is not None:
            await self.notify(batch_id, finished)
            return True
        if owed:
            await self.deliver_owed_logged(batch_id)
        return False

    # -- the callback ----------------------------------------------------------------

    async def notify(self, batch_id: str, progress: BatchProgress) -> bool:
        """Run ``on_complete`` / ``on_expired`` for a batch whose lease this process holds.

        Marked done when it returns. A callback that raises (or is cancelled) stays
        owed: another touch of the batch after the lease runs it again. With
        ``retain_for``, the batch's completion and roster documents are stamped
        for the TTL policy first.

        Returns:
            True if the callback ran and returned.
        """
        if self._retain_for is not None:
            await self._stamp_children(batch_id)
        callback = self._callbacks.get(progress.status)
        if callback is None:
            return False
        try:
            maybe = callback(batch_id, progress)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:
            logger.exception(
                "on_complete callback failed for batch %r; it stays owed",
                batch_id,
                extra={"batch_id": batch_id},
            )
            return False
        ref = self._refs.batch(batch_id)
        done = {
            f.CALLBACK_OWED: DELETE_FIELD,
            f.CALLBACK_CLAIMED_BY: DELETE_FIELD,
            f.CALLBACK_CLAIMED_AT: DELETE_FIELD,
            f.CALLBACK_DONE_AT: SERVER_TIMESTAMP,
        }
        try:
            await self._retrying(
                lambda: ref.update(done, retry=None), f"confirming the callback of {batch_id!r}"
            )
        except Exception:
            logger.exception(
                "could not mark the callback of batch %r done; it may run again",
                batch_id,
                extra={"batch_id": batch_id},
            )
        return True

    async def deliver_owed(self, batch_id: str) -> bool:
        """Run the batch's owed callback if its lease has expired (any process may).

        Returns:
            True if this call ran the callback.
        """
        if not self._runs_callbacks:
            return False
        progress, snap = await self._retrying(
            lambda: self.read(batch_id), f"reading batch {batch_id!r}"
        )
        data = snap.to_dict() or {}
        if not progress.is_terminal or data.get(f.CALLBACK_OWED) is not True:
            return False
        if self._callbacks.get(progress.status) is None:
            return False  # this manager has no callback for that ending
        claimed_at = data.get(f.CALLBACK_CLAIMED_AT)
        # The lease is judged on the server's clock (its read time against its own
        # claim stamp), not on the manager's Clock: it is held between processes.
        if claimed_at is not None:
            held = (snap.read_time - claimed_at).total_seconds()
            if held < self._lease:
                return False
        option = self._client.write_option(last_update_time=snap.update_time)
        claim = {f.CALLBACK_CLAIMED_BY: new_write_id(), f.CALLBACK_CLAIMED_AT: SERVER_TIMESTAMP}
        try:
            await self._refs.batch(batch_id).update(claim, option=option, retry=None)
        except (gexc.FailedPrecondition, gexc.Aborted):
            return False  # another process claimed it (or the batch changed): its turn
        logger.warning(
            "running the owed completion callback of batch %r",
            batch_id,
            extra={"batch_id": batch_id, "finaliser_id": progress.finaliser_id},
        )
        return await self.notify(batch_id, progress)

    async def deliver_owed_logged(self, batch_id: str) -> None:
        """``deliver_owed``, logging instead of raising: for touches that must not fail."""
        try:
            await self.deliver_owed(batch_id)
        except Exception:
            logger.exception(
                "running the owed callback of batch %r failed",
                batch_id,
                extra={"batch_id": batch_id},
            )

    async def _stamp_children(self, batch_id: str) -> None:
        """Stamp the batch's completion and roster documents with ``expire_at`` (TTL).

        Best effort, in bulk writes of 500: a failure is logged and the documents
        stay (reconcile-free: a TTL policy only ever deletes stamped documents).
        """
        assert self._retain_for is not None
        expire_at = self._clock.now() + self._retain_for
        batch_ref = self._refs.batch(batch_id)
        try:
            for name in (self._refs.layout.completions, f.ROSTER):
                stream = batch_ref.collection(name).select([FieldPath.document_id()]).stream()
                write = self._client.batch()
                staged = 0
                async for snap in stream:
                    write.update(snap.reference, {f.EXPIRE_AT: expire_at})
                    staged += 1
                    if staged == 500:
                        await write.commit()
                        write, staged = self._client.batch(), 0
                if staged:
                    await write.commit()
        except Exception:
            logger.exception(
                "could not stamp the documents of batch %r for retention",
                batch_id,
                extra={"batch_id": batch_id},
            )
