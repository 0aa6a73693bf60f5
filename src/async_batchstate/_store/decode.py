"""Decoding a stored batch document: counts, whether it is guarded, its ``BatchProgress``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.cloud.firestore_v1.field_path import FieldPath

from .._config import MigrationMode
from .._types import BatchProgress
from .names import (
    CLOSED_WRITES,
    COMPLETED_AT,
    COMPLETED_COUNT,
    COMPLETED_PLAYERS,
    COMPLETIONS_BACKFILLED,
    CREATED_AT,
    DEADLINE,
    EXPECTED_COUNT,
    EXPIRED_REASON,
    FINALIZED_BY,
    LEGACY_ONLY_COUNT,
    MISSING_PLAYERS,
    OPEN_WRITES,
    STATUS,
    STATUS_EXPIRED,
    STATUS_IN_PROGRESS,
    TOTAL_PREDICTIONS,
    TOTAL_PREDICTIONS_SUBCOLL,
)


def as_int(value: object) -> int:
    """A stored count as an ``int``; anything that is not a number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def guarded(data: dict[str, Any]) -> bool:
    """Whether completion documents guard the batch (read with ``GUARD_FIELDS``).

    Only the explicit, monotonic guard counts: never inferred from absent fields.
    """
    return data.get(COMPLETIONS_BACKFILLED) is True


def write_field(write_key: str) -> str:
    """The field path of a group write's entry in ``open_writes``."""
    return FieldPath(OPEN_WRITES, write_key).to_api_repr()


def write_fields(write_key: str) -> list[str]:
    """What a retry reads of the batch to learn whether, and when, ``write_key`` landed.

    ``closed_writes`` whole: it holds only the ids still unresolved at the expiry.
    """
    return [write_field(write_key), CLOSED_WRITES, STATUS]


def write_landed(data: dict[str, Any], write_key: str) -> tuple[bool, bool]:
    """(landed, late) for the write ``write_key``, from the batch read with ``write_fields``.

    Landed: its id is in either map. Late: in ``open_writes`` of a batch whose expiry
    moved every id that landed before it to ``closed_writes``. An expired batch
    without ``closed_writes`` was expired by a version before 0.3: its writes are
    answered as landed before it (RECORDED), which is right for all but the ones
    racing that expiry.
    """
    open_ = data.get(OPEN_WRITES)
    closed = data.get(CLOSED_WRITES)
    in_open = isinstance(open_, dict) and write_key in open_
    in_closed = isinstance(closed, dict) and write_key in closed
    expired = data.get(STATUS) == STATUS_EXPIRED
    return in_open or in_closed, in_open and expired and isinstance(closed, dict)


def counted(data: dict[str, Any], *, array_counts: bool = True) -> int:
    """The players completed as every mode that wrote the batch counts them.

    Completion documents plus legacy-only players is the union of both structures,
    whichever modes wrote the batch (LEGACY, the dual modes, SUBCOLLECTION_ONLY, in
    any order). For a mode that reads the array (``array_counts``), where the array
    was read and the batch is not backfilled, the array is a lower bound too:
    batches written by LEGACY writers of 0.1 kept no ``legacy_only_count``.
    """
    count = as_int(data.get(COMPLETED_COUNT)) + as_int(data.get(LEGACY_ONLY_COUNT))
    array = data.get(COMPLETED_PLAYERS) if array_counts else None
    if isinstance(array, list) and data.get(COMPLETIONS_BACKFILLED) is not True:
        count = max(count, len(set(array)))
    return count


def progress_from(batch_id: str, mode: MigrationMode, data: dict[str, Any]) -> BatchProgress:
    """The batch's progress from the batch document's fields.

    ``completed_count`` is the batch's count as every mode that wrote it counts
    (``counted``): a batch created or written by another mode during a rolling
    deploy finishes on it all the same. The total comes from the structure
    ``mode`` reads; the array modes list the players from the array.
    """
    players: tuple[str, ...] = ()
    expected = as_int(data.get(EXPECTED_COUNT))
    # Extra players of a batch without a roster are recorded, never counted past it.
    completed = counted(data, array_counts=not mode.reads_subcollection)
    if EXPECTED_COUNT in data:
        completed = min(completed, expected)
    if mode.reads_subcollection:
        total = as_int(data.get(TOTAL_PREDICTIONS_SUBCOLL))
    else:
        if isinstance(data.get(COMPLETED_PLAYERS), list):
            players = tuple(sorted(set(data[COMPLETED_PLAYERS])))
        total = as_int(data.get(TOTAL_PREDICTIONS))
    finalizer = data.get(FINALIZED_BY)
    reason = data.get(EXPIRED_REASON)
    return BatchProgress(
        batch_id=batch_id,
        expected_count=expected,
        completed_count=completed,
        total_predictions=total,
        status=str(data.get(STATUS, STATUS_IN_PROGRESS)),
        completed_players=players,
        finalizer_id=finalizer if isinstance(finalizer, str) else None,
        missing_players=tuple(data.get(MISSING_PLAYERS, ())),
        deadline=_when(data.get(DEADLINE)),
        created_at=_when(data.get(CREATED_AT)),
        finished_at=_when(data.get(COMPLETED_AT)),
        expired_reason=reason if isinstance(reason, str) else None,
    )


def _when(value: object) -> dt.datetime | None:
    return value if isinstance(value, dt.datetime) else None
