"""Completion and expiry callbacks: owed durably, run under a renewed lease, delivered anywhere.

Finishing a batch (``complete`` or ``expired``) ALWAYS stores ``callback_owed``
in the finishing write, whatever the finishing process has: a manager without
callbacks, the CLI, backfill. A process that has the callback for that ending
also claims its lease in the same write (``callback_claimed_by`` = the
finisher's id, ``callback_claimed_at`` = the server's time).

The lease holder runs the callback and renews ``callback_claimed_at`` every
``lease / 3`` while it runs, each renewal conditional on the claim still being
its own; when the callback returns it marks it done, again only if the claim
is still its own. A runner that finds its claim taken (its renewals could not
land within the lease, and another process claimed it) logs a warning, lets
its callback finish, and leaves the done mark to the new holder.

Any process with the callback for a batch's ending may run an owed one whose
lease has passed (or was never claimed): it claims it (an update with an
``update_time`` precondition that stores a fresh claim id, retried like every
write: a retry that finds its own claim id holds the lease) and runs it. That
happens on ``deliver_owed_callbacks``, on the process's next touch of the batch
and in a periodic sweep of ``callback_owed == True`` (a single-field query).

Callers never wait for a callback they did not ask for: completions, progress
reads, waits and deadline expiries hand it to a background task owned by the
manager; ``aclose`` waits for those within its drain, then cancels them (a
cut callback stays owed).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock
from .._errors import ConfigurationError
from .._retry import Retrying
from .._store import names as f
from .._store.refs import Refs
from .._types import BatchProgress
from .group import new_write_id
from .lease import Claim, Lease
from .retention import Retention

logger = logging.getLogger("async_batchstate")

OnComplete = Callable[[str, BatchProgress], Awaitable[None] | None]
"""``on_complete(batch_id, progress)``: sync or async; runs at least once per finalized
batch (``progress.finalization_key`` is the same for every run)."""

Reader = Callable[[str], Awaitable[tuple[BatchProgress, Any]]]
"""``read(batch_id)``: the batch's progress and the snapshot it came from (one attempt)."""

SWEEP_PAGE = 100
"""Owed batches read per query page of a sweep."""
SWEEP_SCAN = 500
"""Most owed batches one sweep reads; the next sweep goes on from there."""
SWEEP_START = 50
"""Most deliveries one sweep starts."""
_DEFERRED_KEPT = 10_000
"""Most batches remembered as "leased elsewhere until": bounded for long-lived processes."""


def _seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


class Callbacks:
    """The callbacks of one manager: what is owed, the lease, background runs and the sweep.

    Args:
        client: The Firestore client.
        refs: Where batches live.
        read: Reads a batch's progress and snapshot (the finalizer's read).
        retrying: Runs a call under the manager's retry policy.
        on_complete: Run once a batch completes.
        on_expired: Run once a batch expires.
        lease: Seconds an owed callback stays with its runner before another may run it.
        retention: Stamps finished batches' completion and roster documents for a
            TTL policy (None: no stamps).
        sweep_interval: Seconds between two sweeps of owed callbacks; None: no sweep.
        clock: Time source of retries, the close's drain and retention stamps. The
            lease, its renewals and the sweep run on real time: the server judges
            the lease on its own clock, so a fake clock must not speed them up.

    Raises:
        ConfigurationError: A lease or sweep interval that is not a positive finite number.
    """

    def __init__(
        self,
        client: AsyncClient,
        refs: Refs,
        *,
        read: Reader,
        retrying: Retrying,
        on_complete: OnComplete | None,
        on_expired: OnComplete | None,
        lease: float,
        retention: Retention | None = None,
        sweep_interval: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sweep_interval = (
            None if sweep_interval is None else _seconds("callback_sweep_interval", sweep_interval)
        )
        self._client = client
        self._refs = refs
        self._read = read
        self._retrying = retrying
        self._callbacks = {f.STATUS_COMPLETE: on_complete, f.STATUS_EXPIRED: on_expired}
        self._retention = retention
        self._lease = Lease(
            client, refs, retrying=retrying, seconds=_seconds("callback_lease", lease)
        )
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._by_batch: dict[str, asyncio.Task[Any]] = {}
        self._leased_until: dict[str, float] = {}
        """Owed batches another process holds, and (monotonic) until when: no read before."""
        self._sweeper: asyncio.Task[None] | None = None
        self._cursor: Any = None
        self._closed = False

    # -- what exists -------------------------------------------------------------------

    @property
    def any(self) -> bool:
        """Whether this process has any callback."""
        return any(c is not None for c in self._callbacks.values())

    def has(self, status: str) -> bool:
        """Whether this process has the callback of the ending ``status``."""
        return self._callbacks.get(status) is not None

    def finishing_fields(self, status: str, finish_id: str) -> dict[str, Any]:
        """The fields the write that finishes a batch as ``status`` carries.

        The callback is always owed; the lease is claimed (under ``finish_id``)
        only by a process that has the callback for that ending: it runs it.
        """
        fields: dict[str, Any] = {f.CALLBACK_OWED: True}
        if self.has(status):
            fields |= {f.CALLBACK_CLAIMED_BY: finish_id, f.CALLBACK_CLAIMED_AT: SERVER_TIMESTAMP}
        return fields

    # -- after a finish ----------------------------------------------------------------

    async def settle(self, batch_id: str, finished: BatchProgress | None, owed: bool) -> None:
        """After a finish: run the callback if this call finished the batch, else an owed one."""
        if finished is not None:
            assert finished.finalizer_id is not None
            await self.run(batch_id, finished, finished.finalizer_id)
        elif owed:
            await self.deliver_owed_logged(batch_id)

    def settle_soon(self, batch_id: str, finished: BatchProgress | None, owed: bool) -> None:
        """``settle`` in a background task of this manager: nobody waits for it."""
        if finished is None:
            if not owed or not self.any or batch_id in self._by_batch:
                return
            until = self._leased_until.get(batch_id)
            if until is not None and time.monotonic() < until:
                return  # another process holds it: do not read the batch at every touch
        self._spawn(batch_id, self.settle(batch_id, finished, owed))

    def _spawn(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            work.close()  # a closed manager starts nothing; what was owed stays owed
            return
        self.start()
        task = asyncio.create_task(work, name=f"async-batchstate callback {batch_id}")
        self._tasks.add(task)
        self._by_batch[batch_id] = task

        def forget(done: asyncio.Task[Any]) -> None:
            self._tasks.discard(done)
            if self._by_batch.get(batch_id) is done:
                del self._by_batch[batch_id]

        task.add_done_callback(forget)

    # -- running -----------------------------------------------------------------------

    async def run(self, batch_id: str, progress: BatchProgress, claim: str) -> bool:
        """Run the callback of ``progress.status`` holding the lease ``claim``.

        The lease is renewed while the callback runs; it is marked done when the
        callback returns, if the claim is still ours. A callback that raises (or
        is cancelled) stays owed: after the lease another process runs it again.
        With retention, the batch's completion and roster documents are
        stamped for the TTL policy first (the lease is renewed meanwhile).

        Returns:
            True if the callback ran and returned.
        """
        callback = self._callbacks.get(progress.status)
        if callback is None:
            if self._retention is not None:
                await self._retention.stamp_children(batch_id)
            return False
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._lease.keep(batch_id, claim, lost))
        try:
            if self._retention is not None:
                await self._retention.stamp_children(batch_id)
            maybe = callback(batch_id, progress)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:
            logger.exception(
                "the %s callback of batch %r failed; it stays owed",
                progress.status,
                batch_id,
                extra={"batch_id": batch_id, "status": progress.status},
            )
            return False
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        if lost.is_set():
            return True  # the process that took the lease marks it done
        done = {
            f.CALLBACK_OWED: DELETE_FIELD,
            f.CALLBACK_CLAIMED_BY: DELETE_FIELD,
            f.CALLBACK_CLAIMED_AT: DELETE_FIELD,
            f.CALLBACK_DONE_AT: SERVER_TIMESTAMP,
        }
        try:
            found = await self._lease.if_ours(batch_id, claim, done, "confirming the callback")
        except Exception:
            logger.exception(
                "could not mark the callback of batch %r done; it may run again",
                batch_id,
                extra={"batch_id": batch_id},
            )
        else:
            if found is not Claim.HELD:
                self._lease.lost(batch_id, claim)
        return True

    # -- owed callbacks ----------------------------------------------------------------

    async def deliver_owed(self, batch_id: str) -> bool:
        """Claim and run the batch's owed callback if its lease has passed (any process may).

        Returns:
            True if this call ran the callback and it returned.

        Raises:
            BatchNotFoundError: No such batch.
            RetryExhaustedError: The read or the claim kept failing.
        """
        if not self.any:
            return False
        claim = new_write_id()

        async def attempt() -> BatchProgress | None:
            progress, snap = await self._read(batch_id)
            data = snap.to_dict() or {}
            if data.get(f.CALLBACK_OWED) is not True or not progress.is_terminal:
                return None
            if data.get(f.CALLBACK_CLAIMED_BY) == claim:
                return progress  # our claim landed; its answer was lost
            if not self.has(progress.status):
                return None  # this manager has no callback for that ending
            left = self._lease.left(data, snap.read_time)
            if left > 0:
                self._defer(batch_id, left)
                return None
            option = self._client.write_option(last_update_time=snap.update_time)
            claimed = {f.CALLBACK_CLAIMED_BY: claim, f.CALLBACK_CLAIMED_AT: SERVER_TIMESTAMP}
            try:
                await self._refs.batch(batch_id).update(claimed, option=option, retry=None)
            except gexc.FailedPrecondition:
                # The batch changed since the read (another claim, a late completion): read again.
                raise gexc.Aborted("batch changed while claiming its callback") from None  # type: ignore[no-untyped-call]
            return progress

        progress: BatchProgress | None = await self._retrying(
            attempt, f"claiming the owed callback of batch {batch_id!r}"
        )
        if progress is None:
            return False
        logger.warning(
            "running the owed %s callback of batch %r",
            progress.status,
            batch_id,
            extra={"batch_id": batch_id, "finalizer_id": progress.finalizer_id},
        )
        return await self.run(batch_id, progress, claim)

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

    def _defer(self, batch_id: str, seconds: float) -> None:
        if len(self._leased_until) >= _DEFERRED_KEPT:
            self._leased_until.clear()
        self._leased_until[batch_id] = time.monotonic() + seconds

    # -- the sweep ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic sweep, if configured and inside a running event loop."""
        if self._sweeper is not None or self._closed or self._sweep_interval is None:
            return
        if not self.any:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started later, from the first call made inside the loop
        self._sweeper = asyncio.create_task(self._sweep_forever(self._sweep_interval))

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # real time, as the leases it looks at
            try:
                await self.sweep()
            except Exception:
                logger.warning("sweeping owed callbacks failed", exc_info=True)

    async def sweep(self) -> int:
        """One pass over owed callbacks: start those this process has whose lease passed.

        Reads at most ``SWEEP_SCAN`` owed batches (``callback_owed == True``, a
        single-field query, in pages, by document id from where the last sweep
        stopped) and starts at most ``SWEEP_START`` deliveries in the background.

        Returns:
            How many deliveries it started.
        """
        query = (
            self._refs.batches()
            .where(filter=FieldFilter(f.CALLBACK_OWED, "==", True))
            .select([f.STATUS, f.CALLBACK_CLAIMED_AT])
            .order_by(FieldPath.document_id())
            .limit(SWEEP_PAGE)
        )
        scanned = started = 0
        while scanned < SWEEP_SCAN and started < SWEEP_START:
            page = query if self._cursor is None else query.start_after(self._cursor)
            snaps: list[Any] = await self._retrying(
                partial(page.get, retry=None), "listing owed callbacks"
            )
            for snap in snaps:
                data = snap.to_dict() or {}
                status = data.get(f.STATUS)
                if not isinstance(status, str) or not self.has(status):
                    continue
                if self._lease.left(data, snap.read_time) > 0 or snap.id in self._by_batch:
                    continue
                self._leased_until.pop(snap.id, None)
                self.settle_soon(snap.id, None, owed=True)
                started += 1
                if started >= SWEEP_START:
                    break
            scanned += len(snaps)
            self._cursor = snaps[-1] if len(snaps) == SWEEP_PAGE else None
            if self._cursor is None:
                break
        return started

    # -- closing -----------------------------------------------------------------------

    async def aclose(self, timeout: float) -> None:
        """Stop the sweep; wait up to ``timeout`` s for running callbacks, then cancel them.

        A callback cut here stays owed: another process (or a later manager) runs it
        once its lease has passed.
        """
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        tasks = list(self._tasks)
        if not tasks:
            return
        try:
            async with self._clock.timeout(timeout):
                await asyncio.wait(tasks)
        except TimeoutError:
            logger.warning("closing with callbacks still running; they stay owed")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
