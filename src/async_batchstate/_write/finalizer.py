"""Finalization: flip a batch to ``complete`` exactly once, and owe its callback durably.

The flip is lock-free: a plain read of the batch document, then an update with
an ``update_time`` precondition that stores ``status=complete`` and the
finalizing call's id (``finalised_by``). When the answer to that update is
lost, the retry reads the batch: its own id means this call flipped it. No
outcome is decided from error text, and exactly one call ever flips.

The finishing write always records the callback as owed; what happens to it
after (the lease, running it, delivering it elsewhere) is ``callbacks.Callbacks``.
So the flip is exactly once and the callback at least once, with
``BatchProgress.finalization_key`` to dedupe on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import batch_not_found
from .._retry import Retrying
from .._store import names as f
from .._store.decode import progress_from
from .._store.refs import Refs
from .._store.roster import BatchInfoCache
from .._types import BatchProgress
from ..instrumentation._events import BatchFinalized, Recorder
from .callbacks import Callbacks
from .callbacks import OnComplete as OnComplete  # re-exported
from .group import BatchView, GroupOutcome, new_write_id
from .retention import Retention

logger = logging.getLogger("async_batchstate")

Missing = Callable[[dict[str, Any]], Awaitable[list[str]]]
"""``missing(batch document)``: the batch's missing players (an expiry stores them)."""

_BASE_FIELDS = [
    f.EXPECTED_COUNT,
    f.STATUS,
    f.DEADLINE,
    f.CREATED_AT,
    f.COMPLETED_AT,
    f.EXPIRED_REASON,
    f.FINALIZED_BY,
    f.TOTAL_PREDICTIONS_SUBCOLL,
    f.TOTAL_PREDICTIONS,
    f.CALLBACK_OWED,
    f.CALLBACK_CLAIMED_BY,
    f.CALLBACK_CLAIMED_AT,
    *f.COUNT_FIELDS,
]


class Finalizer:
    """Flips batches to a terminal status, exactly once; ``callbacks`` runs what that owes."""

    def __init__(
        self,
        client: AsyncClient,
        refs: Refs,
        mode: MigrationMode,
        *,
        retrying: Retrying,
        recorder: Recorder,
        on_complete: OnComplete | None = None,
        on_expired: OnComplete | None = None,
        callback_lease: float = 60.0,
        callback_sweep_interval: float | None = None,
        retain_for: dt.timedelta | None = None,
        clock: Clock = SYSTEM_CLOCK,
        infos: BatchInfoCache | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._refs = refs
        self._mode = mode
        self._infos = infos
        self._retrying = retrying
        self._recorder = recorder
        self._retention = Retention(client, refs, retain_for, clock)
        self.callbacks = Callbacks(
            client,
            refs,
            read=self.read,
            retrying=retrying,
            on_complete=on_complete,
            on_expired=on_expired,
            lease=callback_lease,
            retention=self._retention,
            sweep_interval=callback_sweep_interval,
            clock=clock,
        )
        """Owed callbacks: the lease, running them, delivering them, the sweep."""
        self._waiters: dict[str, set[asyncio.Event]] = {}

    # -- waiting ---------------------------------------------------------------------

    @contextlib.contextmanager
    def waiter(self, batch_id: str) -> Iterator[asyncio.Event]:
        """An event set when this process finalizes ``batch_id``; forgotten on exit."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(batch_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(batch_id) is waiters:
                del self._waiters[batch_id]

    # -- reading ---------------------------------------------------------------------

    def _fields(self, batch_id: str) -> list[str]:
        # The array counts only where completion documents may not guard the batch
        # (LEGACY writers of 0.1 kept no legacy_only_count): read it only there.
        if self._infos is None or not self._infos.known_guarded(batch_id):
            return [*_BASE_FIELDS, f.COMPLETED_PLAYERS]
        return _BASE_FIELDS

    async def read(self, batch_id: str, more: tuple[str, ...] = ()) -> tuple[BatchProgress, Any]:
        """The batch's progress (without players) and the snapshot it came from."""
        fields = [*self._fields(batch_id), *more]
        snap = await self._refs.batch(batch_id).get(field_paths=fields, retry=None)
        if not snap.exists:
            raise batch_not_found(batch_id, self._refs.layout.collection)
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
        whose finalizer crashed gets finalized by a later redelivery.
        """
        known = self.settled(batch_id, outcome)
        if known is not None:
            return known
        count = outcome.completed_count
        if outcome.batch is None and count is not None and count < await expected_count(batch_id):
            return None, False
        return await self.finish(batch_id, f.STATUS_COMPLETE)

    def settled(self, batch_id: str, outcome: GroupOutcome) -> tuple[None, bool] | None:
        """``after_write``'s answer when no flip is due and it is known without I/O, else None.

        The common case (a batch not yet complete whose settings this process holds)
        costs no task and no read.
        """
        batch: BatchView | None = outcome.batch
        if outcome.expired:
            return None, False  # the batch expired: a late completion never finalizes it
        if batch is not None:
            if batch.status != f.STATUS_IN_PROGRESS:
                return None, batch.callback_owed
            assert outcome.completed_count is not None
            return (None, False) if outcome.completed_count < batch.expected_count else None
        info = None if self._infos is None else self._infos.cached(batch_id)
        if outcome.completed_count is not None and info is not None:
            return (None, False) if outcome.completed_count < info.expected else None
        return None

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
            expiring = status == f.STATUS_EXPIRED
            progress, snap = await self.read(batch_id, (f.OPEN_WRITES,) if expiring else ())
            data = snap.to_dict() or {}
            if progress.is_terminal:
                if progress.finalizer_id == finish_id:  # our answer was lost; we did it
                    return progress
                owed[0] = data.get(f.CALLBACK_OWED) is True
                return None
            if progress.is_complete != (status == f.STATUS_COMPLETE):
                return None
            update: dict[str, Any] = {
                f.STATUS: status,
                f.COMPLETED_AT: SERVER_TIMESTAMP,
                f.FINALIZED_BY: finish_id,
            }
            if expiring:
                update[f.EXPIRED_FLAG] = 1
                # The writes that landed before the expiry, as this (conditional) update
                # read them: a retry after a lost answer tells RECORDED from LATE by them.
                landed = data.get(f.OPEN_WRITES)
                update[f.CLOSED_WRITES] = landed if isinstance(landed, dict) else {}
                update[f.OPEN_WRITES] = DELETE_FIELD
            update |= self._retention.fields()
            if fields is not None:
                update |= await fields(progress, data)
            update |= self.callbacks.finishing_fields(status, finish_id)
            option = self._client.write_option(last_update_time=snap.update_time)
            try:
                await ref.update(update, option=option, retry=None)
            except gexc.FailedPrecondition:
                # The batch changed since the read (a commit landed): read again.
                raise gexc.Aborted("batch changed while finishing") from None  # type: ignore[no-untyped-call]
            return dataclasses.replace(
                progress,
                status=status,
                finalizer_id=finish_id,
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
        self._recorder.emit(BatchFinalized(batch_id, finished))
        for event in self._waiters.get(batch_id, ()):
            event.set()
        return finished, False

    # -- deadlines: the one home of the expiry policy ----------------------------------

    def overdue(self, deadline: dt.datetime | None, terminal: bool) -> bool:
        """Whether an unfinished batch with ``deadline`` has passed it (on the clock's now).

        Any touch of such a batch (a completion, a progress read, a wait) expires it
        first, with ``expire_overdue``.
        """
        return deadline is not None and not terminal and self._clock.now() >= deadline

    async def expire_overdue(self, batch_id: str, missing: Missing) -> None:
        """Expire a batch whose deadline passed (once per process: then it is terminal).

        ``on_expired`` runs in the background: a caller that only touched the batch
        never runs a callback. The batch is terminal afterwards whoever finished it
        (this call, another process, or its last completion).
        """
        await self.expire(batch_id, "deadline passed", missing, background=True)
        if self._infos is not None:
            self._infos.mark_terminal(batch_id)

    async def expire(
        self,
        batch_id: str,
        reason: str,
        missing: Missing,
        *,
        background: bool = False,
    ) -> bool:
        """Finish an unfinished, incomplete batch as ``expired``; True for the one call that did.

        Stores the reason and the first ``MISSING_KEPT`` of ``missing(document)``.
        A complete batch is left to its completion's finalizer: one terminal status.
        ``background``: run ``on_expired`` in a background task instead of awaiting it.
        """

        async def fields(progress: BatchProgress, data: dict[str, Any]) -> dict[str, Any]:
            return {
                f.EXPIRED_REASON: reason,
                f.MISSING_PLAYERS: _kept(await missing(data)),
                f.MISSING_COUNT: progress.remaining,
            }

        finished, owed = await self.finish(batch_id, f.STATUS_EXPIRED, fields)
        if finished is not None and self._infos is not None:
            self._infos.mark_terminal(batch_id)
        return await self.settle(batch_id, finished, owed, background=background)

    async def finalize(self, batch_id: str, *, background: bool = False) -> bool:
        """Flip the batch if it is complete; True for the one call that did."""
        finished, owed = await self.finish(batch_id, f.STATUS_COMPLETE)
        return await self.settle(batch_id, finished, owed, background=background)

    async def settle(
        self,
        batch_id: str,
        finished: BatchProgress | None,
        owed: bool,
        *,
        background: bool = False,
    ) -> bool:
        """After ``finish``: its callback (or an owed one), awaited or in the background.

        Returns:
            True if this call finished the batch.
        """
        if background:
            self.callbacks.settle_soon(batch_id, finished, owed)
        else:
            await self.callbacks.settle(batch_id, finished, owed)
        return finished is not None


def _kept(missing: list[str]) -> list[str]:
    """The first ``MISSING_KEPT`` missing players, within ``MISSING_KEPT_BYTES`` of ids.

    1,000 ids of 1,500 bytes would take the batch document past its 1 MiB.
    """
    kept: list[str] = []
    size = 0
    for player in missing[: f.MISSING_KEPT]:
        size += len(player.encode("utf-8")) + 1
        if size > f.MISSING_KEPT_BYTES:
            break
        kept.append(player)
    return kept
