"""What a process remembers of a batch: expected count, roster, deadline (one read at most).

The roster (``create_batch(expected_players=...)``) is stored where it costs
least: inline in the batch document while it is small (at most
``ROSTER_INLINE_BYTES``, 16 KiB, out of the ~48 KB a legacy batch keeps free
beside its array and map: it never eats the array's budget), else in chunk
documents ``{batch}/roster/{index}`` of at most 512 KiB and 10,000 players
(written in the same commit as the batch document). A process reads a batch's
expected count, roster and deadline once, and caches them (bounded).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from typing import Any

from google.cloud.firestore_v1.field_path import FieldPath

from .._config import MigrationMode
from .._errors import ManagerClosedError, batch_not_found
from .._retry import Retrying
from . import names as f
from .batch_info import BatchInfo
from .decode import counted, guarded
from .refs import Refs

SMALL_ROSTER = 1_000
"""Up to this many players, missing players are found by point reads of their
completion documents (one RPC); beyond, by listing the subcollection's ids."""


class BatchInfoCache:
    """What this process knows of each batch (``BatchInfo``), read once while remembered.

    The one owner of a process's beliefs about a batch: settings read at most once
    per batch (LRU, bounded), and whether completion documents guard it, which the
    write path confirms with each commit and each transaction's read.
    """

    def __init__(
        self,
        refs: Refs,
        retrying: Retrying,
        *,
        size: int = 1_000,
    ) -> None:
        self._refs = refs
        self._retrying = retrying
        self._size = size
        self._infos: OrderedDict[str, BatchInfo] = OrderedDict()
        self._loading: dict[str, asyncio.Future[BatchInfo]] = {}

    def remember(self, batch_id: str, info: BatchInfo) -> None:
        """Cache ``info`` (evicting the least recently used beyond the bound)."""
        self._infos[batch_id] = info
        self._infos.move_to_end(batch_id)
        while len(self._infos) > self._size:
            self._infos.popitem(last=False)

    def cached(self, batch_id: str) -> BatchInfo | None:
        """The batch's settings if this process holds them (no read), else None."""
        info = self._infos.get(batch_id)
        if info is not None:
            self._infos.move_to_end(batch_id)
        return info

    async def get(self, batch_id: str) -> BatchInfo:
        """The batch's settings: cached, or one read (plus one of its roster chunks).

        Raises:
            BatchNotFoundError: No such batch.
        """
        info = self.cached(batch_id)
        if info is not None:
            return info
        loading = self._loading.get(batch_id)
        if loading is None:  # one read however many callers arrive at once
            loading = asyncio.ensure_future(self._load(batch_id))
            self._loading[batch_id] = loading
            loading.add_done_callback(lambda t: self._loaded(batch_id, t))
        try:
            return await asyncio.shield(loading)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if loading.cancelled() and (task is None or not task.cancelling()):
                # The read was cut by the close (``aclose``), not this caller.
                raise ManagerClosedError(
                    f"the manager closed while reading batch {batch_id!r}; nothing was written"
                ) from None
            raise

    async def aclose(self) -> None:
        """Cancel the reads in flight (their callers have been answered or cut by the close)."""
        loads = list(self._loading.values())
        for load in loads:
            load.cancel()
        await asyncio.gather(*loads, return_exceptions=True)

    def _loaded(self, batch_id: str, task: asyncio.Future[BatchInfo]) -> None:
        self._loading.pop(batch_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have left (timeout, close)

    async def _load(self, batch_id: str) -> BatchInfo:
        read: BatchInfo = await self._retrying(
            lambda: self._read(batch_id), f"reading batch {batch_id!r}"
        )
        self.remember(batch_id, read)
        return read

    def mark_terminal(self, batch_id: str) -> None:
        """Remember ``batch_id`` is finished (if its settings are cached): no expiry checks."""
        info = self._infos.get(batch_id)
        if info is not None:
            info.terminal = True

    def known_guarded(self, batch_id: str) -> bool:
        """Whether this process believes completion documents guard the batch (no read)."""
        info = self._infos.get(batch_id)
        return info is not None and info.guarded

    async def _read(self, batch_id: str) -> BatchInfo:
        fields = [
            f.EXPECTED_COUNT,
            f.ROSTER,
            f.ROSTER_CHUNKS,
            f.DEADLINE,
            f.STATUS,
            *f.GUARD_FIELDS,
        ]
        snap = await self._refs.batch(batch_id).get(field_paths=fields, retry=None)
        if not snap.exists:
            raise batch_not_found(batch_id, self._refs.layout.collection)
        data = snap.to_dict() or {}
        deadline = data.get(f.DEADLINE)
        return BatchInfo(
            expected=int(data.get(f.EXPECTED_COUNT, 0)),
            roster=await stored_roster(self._refs, batch_id, data),
            deadline=deadline if isinstance(deadline, dt.datetime) else None,
            terminal=data.get(f.STATUS) in f.TERMINAL_STATUSES,
            guarded=guarded(data),
        )


async def stored_roster(refs: Refs, batch_id: str, data: dict[str, Any]) -> frozenset[str] | None:
    """The roster of a batch whose document fields ``data`` include its roster fields.

    None without a roster; chunked, one read of its chunk documents (one attempt).
    """
    if isinstance(data.get(f.ROSTER), list):
        return frozenset(data[f.ROSTER])
    chunks = int(data.get(f.ROSTER_CHUNKS, 0))
    if not chunks:
        return None
    roster: set[str] = set()
    docs = [refs.roster(batch_id, i) for i in range(chunks)]
    async for chunk in refs.client.get_all(docs, retry=None):
        roster.update((chunk.to_dict() or {}).get(f.ROSTER_CHUNK_PLAYERS, ()))
    return frozenset(roster)


async def recorded_players(
    refs: Refs,
    mode: MigrationMode,
    batch_id: str,
    roster: frozenset[str] | None,
    data: dict[str, Any],
) -> frozenset[str]:
    """The players recorded, as every mode that wrote the batch counts them, at the least cost.

    Array modes: the array already read, when it holds every completion (a batch
    written by SUBCOLLECTION_ONLY during a rollout has players only in the
    subcollection: then the array and the subcollection together). Every mode
    adds the array of a batch completion documents do not guard (``data`` read
    with ``COMPLETED_PLAYERS`` and ``COMPLETIONS_BACKFILLED`` there). Otherwise, with
    a small roster: point reads of the roster's completion documents (one RPC,
    ``len(roster)`` document reads); else the subcollection's ids are listed (one
    document read per completion).
    """
    array: frozenset[str] = frozenset()
    stored = data.get(f.COMPLETED_PLAYERS)
    # The array counts in every mode where completion documents do not guard the batch:
    # players LEGACY recorded there have no document (counted by legacy_only_count).
    if isinstance(stored, list) and (not mode.reads_subcollection or not guarded(data)):
        array = frozenset(stored)
        if not mode.reads_subcollection and len(array) >= counted(data):
            return array
    if roster is not None and len(roster) <= SMALL_ROSTER:
        docs = [refs.completion(batch_id, p) for p in roster]
        return array | frozenset(
            [
                snap.reference.id
                async for snap in refs.client.get_all(
                    docs, field_paths=[f.PLAYER_LOOKUP], retry=None
                )
                if snap.exists
            ]
        )
    query = refs.completions(batch_id).select([FieldPath.document_id()])
    return array | frozenset([snap.id async for snap in query.stream()])
