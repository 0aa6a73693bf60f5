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
from .._errors import BatchExistsError, BatchNotFoundError, InvalidInputError
from .._retry import Retrying
from .._types import BatchProgress
from . import schema as f
from .refs import Refs
from .roster import BatchInfoCache, recorded_players
from .schema import NewBatch, progress_from

_LISTED = [
    f.EXPECTED_COUNT,
    f.STATUS,
    f.COMPLETED_COUNT,
    f.TOTAL_PREDICTIONS,
    f.TOTAL_PREDICTIONS_SUBCOLL,
    f.FINALISED_BY,
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

    Raises:
        BatchExistsError: The batch exists with another expected count.
    """
    data = {**new.document, f.CREATED_BY: call_id}
    ref = refs.batch(new.batch_id)

    async def create() -> None:
        write = refs.client.batch()
        write.create(ref, data)
        for index, chunk in enumerate(new.roster_chunks):
            write.set(refs.roster(new.batch_id, index), {f.ROSTER_CHUNK_PLAYERS: chunk})
        await write.commit(retry=None)

    try:
        await retrying(create, f"creating batch {new.batch_id!r}")
        return True
    except gexc.Conflict:
        snap = await retrying(
            lambda: ref.get(field_paths=[f.EXPECTED_COUNT, f.CREATED_BY], retry=None),
            f"reading batch {new.batch_id!r}",
        )
    existing = snap.to_dict() or {}
    if existing.get(f.EXPECTED_COUNT) != new.info.expected:
        raise BatchExistsError(
            f"batch {new.batch_id!r} already exists with "
            f"expected_count={existing.get(f.EXPECTED_COUNT)}, not {new.info.expected}"
        )
    return bool(existing.get(f.CREATED_BY) == call_id)


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
            raise BatchNotFoundError(f"batch {batch_id!r} does not exist")
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
        array_whole = len(progress.completed_players) >= progress.completed_count
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
