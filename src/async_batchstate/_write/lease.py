"""The lease on a batch's owed callback: who runs it, renewed while it runs, judged by the server.

See ``callbacks`` for the protocol: the claim fields live in the batch
document, every change of them is conditional on the claim read, and the
lease is judged on the server's clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient

from .._retry import Retrying
from .._store import names as f
from .._store.refs import Refs

logger = logging.getLogger("async_batchstate")


class Claim(enum.Enum):
    """What a conditional update of a claim found."""

    HELD = "held"
    """The claim was ours: the update landed."""
    TAKEN = "taken"
    """Another process holds the claim now."""
    DONE = "done"
    """Nothing is owed any more, and not by this update: another runner marked it done."""


class Lease:
    """The lease of owed callbacks on one manager's batches.

    Args:
        client: The Firestore client.
        refs: Where batches live.
        retrying: Runs a call under the manager's retry policy.
        seconds: How long a claim holds before another process may take it.
    """

    def __init__(
        self, client: AsyncClient, refs: Refs, *, retrying: Retrying, seconds: float
    ) -> None:
        self._client = client
        self._refs = refs
        self._retrying = retrying
        self.seconds = seconds
        self.runs_lost = 0
        """Runs of this process whose lease another process took while they ran."""

    async def keep(self, batch_id: str, claim: str, lost: asyncio.Event) -> None:
        """Renew the lease every ``lease / 3`` while the callback runs; set ``lost`` if taken.

        Beats keep their cadence (a slow renewal does not push the next one back),
        in real time: the server judges the lease on its clock.
        """
        renewal = {f.CALLBACK_CLAIMED_AT: SERVER_TIMESTAMP}
        beat = self.seconds / 3
        due = time.monotonic()
        while True:
            due += beat
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            due = max(due, time.monotonic() - beat)  # after a long stall: no burst
            try:
                async with asyncio.timeout(self.seconds):
                    found = await self.if_ours(batch_id, claim, renewal, "renewing the lease")
            except Exception:
                # Try again at the next beat: the lease lasts three of them.
                logger.warning(
                    "renewing the callback lease of batch %r failed",
                    batch_id,
                    exc_info=True,
                    extra={"batch_id": batch_id},
                )
                continue
            if found is not Claim.HELD:
                lost.set()
                self.lost(batch_id, claim)
                return

    def lost(self, batch_id: str, claim: str) -> None:
        """Count and log a run whose lease another process took."""
        self.runs_lost += 1
        logger.warning(
            "the callback of batch %r lost its lease while running: another process runs "
            "it too; this run does not mark it done",
            batch_id,
            extra={"batch_id": batch_id, "claim": claim},
        )

    async def if_ours(self, batch_id: str, claim: str, update: dict[str, Any], what: str) -> Claim:
        """Apply ``update`` to the batch if its callback is still owed and claimed by ``claim``.

        A read, then an update with an ``update_time`` precondition (re-read when
        the batch changed in between); retried like every write: a retry after a
        lost answer reads the outcome (still ours; or nothing owed, when the lost
        update was the done mark itself).
        """
        ref = self._refs.batch(batch_id)
        unknown = [False]  # an update of ours may have landed unanswered

        async def attempt() -> Claim:
            snap = await ref.get(field_paths=[f.CALLBACK_OWED, f.CALLBACK_CLAIMED_BY], retry=None)
            data = snap.to_dict() or {}
            if data.get(f.CALLBACK_OWED) is not True:
                return Claim.HELD if unknown[0] else Claim.DONE
            if data.get(f.CALLBACK_CLAIMED_BY) != claim:
                return Claim.TAKEN
            option = self._client.write_option(last_update_time=snap.update_time)
            try:
                await ref.update(update, option=option, retry=None)
            except gexc.FailedPrecondition:
                raise gexc.Aborted("batch changed since the claim was read") from None  # type: ignore[no-untyped-call]
            except Exception:
                unknown[0] = True
                raise
            return Claim.HELD

        found: Claim = await self._retrying(attempt, f"{what} of batch {batch_id!r}")
        return found

    def left(self, data: dict[str, Any], read_time: dt.datetime) -> float:
        """Seconds the current claim still holds; 0 if none.

        Judged on the server's clock (its read time against its own claim stamp),
        not on the manager's Clock: the lease is held between processes.
        """
        claimed_at = data.get(f.CALLBACK_CLAIMED_AT)
        if not isinstance(claimed_at, dt.datetime):
            return 0.0
        return self.seconds - (read_time - claimed_at).total_seconds()
