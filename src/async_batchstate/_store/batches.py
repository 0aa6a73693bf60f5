"""Batch documents: create one, read its progress, list many."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from .._config import MigrationMode
from .._errors import BatchExistsError, InvalidInputError, batch_not_found
from .._retry import Retrying
from .._types import BatchProgress
from . import names as f
from .batch_info import BatchInfo
from .decode import counted, progress_from
from .new_batch import NewBatch
from .refs import Refs
from .roster import BatchInfoCache, recorded_players, stored_roster

_LISTED = [
    f.EXPECTED_COUNT,
    f.STATUS,
    f.COMPLETED_COUNT,
    f.TOTAL_PREDICTIONS,
    f.TOTAL_PREDICTIONS_SUBCOLL,
    f.FINALIZED_BY,
    f.DEADLINE,
    f.CREATED_AT,
    f.COMPLETED_AT,
    f.EXPIRED_REASON,
    f.MISSING_PLAYERS,
    *f.COUNT_FIELDS,
]


async def create_batch(refs: Refs, new: NewBatch, call_id: str, retrying: Retrying) -> bool:
    """Write ``new`` (the batch and its roster chunks, atomically); True if this call did.

    ``call_id`` is stored with the batch: when the answer to the create is lost,
    the retry's ALREADY_EXISTS is recognised as this call's own write.

    The same batch again is a no-op (False): the same expected count without a
    roster, or the same roster as a set (any order). A roster and a bare
    ``expected_count`` are different batches even when the counts agree: the
    stored batch would hold the caller to a roster it did not give (refusing its
    players), or drop the one it gave (accepting anyone, naming no one missing).

    Raises:
        BatchExistsError: The batch exists with another expected count or roster,
            or with a roster where this call gives none (or the reverse).
    """
    data = {**new.document, f.CREATED_BY: call_id}
    ref = refs.batch(new.batch_id)

    async def create() -> None:
        write = refs.client.batch()
        write.create(ref, data)
        for index, chunk in enumerate(new.roster_chunks):
            write.set(refs.roster(new.batch_id, index), {f.ROSTER_CHUNK_PLAYERS: chunk})
        if new.unchecked:
            write.set(refs.unchecked(new.batch_id), {f.UNCHECKED_TOUCHES: 0})
        else:  # a marker an earlier batch of this id left (Firestore keeps subcollections)
            write.delete(refs.unchecked(new.batch_id))
        await write.commit(retry=None)

    async def stored() -> tuple[dict[str, Any], frozenset[str] | None]:
        fields = [f.EXPECTED_COUNT, f.CREATED_BY, f.ROSTER, f.ROSTER_CHUNKS]
        existing = (await ref.get(field_paths=fields, retry=None)).to_dict() or {}
        if existing.get(f.CREATED_BY) == call_id:  # this call's own: no need for its roster
            return existing, new.info.roster
        return existing, await stored_roster(refs, new.batch_id, existing)

    try:
        await retrying(create, f"creating batch {new.batch_id!r}")
        return True
    except gexc.Conflict:
        existing, roster = await retrying(stored, f"reading batch {new.batch_id!r}")
    difference = batch_difference(existing.get(f.EXPECTED_COUNT), roster, new.info)
    if difference is not None:
        raise BatchExistsError(f"batch {new.batch_id!r} already exists with {difference}")
    return bool(existing.get(f.CREATED_BY) == call_id)


def batch_difference(
    stored_count: object, stored_roster: frozenset[str] | None, new: BatchInfo, *, shown: int = 3
) -> str | None:
    """How a stored batch differs from ``new``, as words after "exists with"; None if alike.

    Alike: the same roster as a set, or no roster on either side and the same
    count. Two rosters that differ are told apart by how many players only each
    has and the first ``shown`` of each (sorted).
    """
    if stored_roster is None and new.roster is None:
        if stored_count == new.expected:
            return None
        return f"expected_count={stored_count}, not {new.expected}"
    if stored_roster is None:
        return (
            f"expected_count={stored_count} and no roster, not a roster of "
            f"{len(new.roster or ())} players"
        )
    if new.roster is None:
        return (
            f"a roster of {len(stored_roster)} players, not expected_count={new.expected} "
            "without one"
        )
    if stored_roster == new.roster and stored_count == new.expected:
        return None
    if stored_roster == new.roster:  # only a hand-edited document gets here
        return f"expected_count={stored_count}, not {new.expected}"
    only_stored = sorted(stored_roster - new.roster)
    only_new = sorted(new.roster - stored_roster)
    return (
        f"another roster: {len(only_stored)} player(s) only in the stored one"
        f"{_first(only_stored, shown)}, {len(only_new)} only in this call's"
        f"{_first(only_new, shown)}"
    )


def _first(players: list[str], shown: int) -> str:
    """`` (e.g. 'a', 'b', ...)``: the first ``shown`` ids, each cut to 40 characters."""
    if not players:
        return ""
    ids = [repr(p if len(p) <= 40 else p[:37] + "...") for p in players[:shown]]
    more = ", ..." if len(players) > shown else ""
    return f" ({', '.join(ids)}{more})"


class BatchReader:
    """Progress and listings of a layout's batches, as one mode counts them."""

    def __init__(
        self, refs: Refs, mode: MigrationMode, infos: BatchInfoCache, retrying: Retrying
    ) -> None:
        self._refs = refs
        self._mode = mode
        self._infos = infos
        self._retrying = retrying

    async def document(self, batch_id: str) -> dict[str, Any]:
        """The batch document's fields.

        Raises:
            BatchNotFoundError: No such batch.
        """
        ref = self._refs.batch(batch_id)
        snap = await self._retrying(lambda: ref.get(retry=None), f"reading batch {batch_id!r}")
        if not snap.exists:
            raise batch_not_found(batch_id, self._refs.layout.collection)
        return snap.to_dict() or {}

    async def missing(self, batch_id: str, data: dict[str, Any]) -> list[str]:
        """The roster's players not recorded, sorted (none without a roster); one attempt."""
        roster = (await self._infos.get(batch_id)).roster
        if roster is None:
            return []
        return sorted(
            roster - await recorded_players(self._refs, self._mode, batch_id, roster, data)
        )

    async def with_players(self, progress: BatchProgress, data: dict[str, Any]) -> BatchProgress:
        """``progress`` with its recorded players and, with a roster, the missing ones."""
        batch_id = progress.batch_id
        roster = (await self._infos.get(batch_id)).roster
        # Against the uncapped count: extras of a batch without a roster are listed too.
        everyone = counted(data, array_counts=not self._mode.reads_subcollection)
        array_whole = len(progress.completed_players) >= everyone
        if roster is None and not self._mode.reads_subcollection and array_whole:
            return progress  # the array, already decoded, holds every completion
        recorded: frozenset[str] = await self._retrying(
            lambda: recorded_players(self._refs, self._mode, batch_id, roster, data),
            f"listing batch {batch_id!r}",
        )
        progress = dataclasses.replace(progress, completed_players=tuple(sorted(recorded)))
        if roster is None:
            return progress
        return dataclasses.replace(progress, missing_players=tuple(sorted(roster - recorded)))

    async def listing(
        self,
        *,
        status: str | None,
        created_before: dt.datetime | None,
        limit: int | None,
        page_size: int,
    ) -> AsyncIterator[BatchProgress]:
        """Batches as progress without players; single-field queries only (no composite index).

        Raises:
            InvalidInputError: ``limit`` or ``page_size`` below 1, a naive datetime.
        """
        if (limit is not None and limit < 1) or page_size < 1:
            raise InvalidInputError("limit and page_size must be >= 1")
        if created_before is not None and created_before.tzinfo is None:
            raise InvalidInputError("created_before must be an aware datetime (e.g. UTC)")
        fields = list(_LISTED)
        if self._mode is MigrationMode.LEGACY:  # no counter: the array is the count
            fields.append(f.COMPLETED_PLAYERS)
        base = self._refs.batches()
        if status is not None:  # created_before is then filtered here
            query = base.where(filter=FieldFilter(f.STATUS, "==", status))
        elif created_before is not None:
            query = base.where(filter=FieldFilter(f.CREATED_AT, "<", created_before)).order_by(
                f.CREATED_AT
            )
        else:
            query = base.order_by(FieldPath.document_id())
        query = query.select(fields).limit(page_size)
        yielded = 0
        last = None
        while True:
            page = query if last is None else query.start_after(last)
            snaps: list[Any] = await self._retrying(
                partial(page.get, retry=None), "listing batches"
            )
            for snap in snaps:
                progress = progress_from(snap.id, self._mode, snap.to_dict() or {})
                created = progress.created_at
                if created_before is not None and (created is None or created >= created_before):
                    continue
                yield dataclasses.replace(progress, completed_players=())
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if len(snaps) < page_size:
                return
            last = snaps[-1]
