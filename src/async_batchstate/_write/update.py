"""The batch-document update of a group write, and where its transform results land (pure).

The update is transforms (``Increment``, ``ArrayUnion``, server timestamps) and
literal map entries only, so it needs no read of the hot document; the transform
results that come back with the Commit say, atomically with the write, the
batch's count and whether it had expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP, ArrayUnion, Increment

from .._config import MigrationMode
from .._store import names as f
from .._store.decode import write_field
from .._store.ids import player_field
from .group import GroupOutcome, PlayerCompletion
from .wire import is_transform


@dataclass(frozen=True, slots=True)
class ResultsAt:
    """Where the batch update's transform results land (sorted by field path)."""

    counter: int | None
    """The completed counter's Increment: its value after the commit."""
    legacy_only: int
    """``legacy_only_count``'s Increment: players only in the legacy array, after."""
    expired: int
    """The ``Increment(0)`` of the expired flag: 1 if the batch had expired."""

    def read(self, write_result: Any) -> tuple[GroupOutcome, int]:
        """The outcome (count, expired) and ``legacy_only_count`` after the commit."""
        results = write_result.transform_results
        legacy_only = int(results[self.legacy_only].integer_value)
        count = None
        if self.counter is not None:
            count = int(results[self.counter].integer_value) + legacy_only
        expired = int(results[self.expired].integer_value) == 1
        return GroupOutcome((), count, expired=expired), legacy_only


def batch_update(
    mode: MigrationMode,
    new: Sequence[PlayerCompletion],
    whole_map: Mapping[str, Any] | None = None,
    *,
    docs: bool,
    write_key: str,
    spent: Iterable[str] = (),
    guard: bool = False,
) -> tuple[dict[str, Any], ResultsAt]:
    """The batch-document update for ``new``, and where its transform results land.

    ``whole_map``: the stored ``predictions_by_player``, read in this transaction,
    when the new entries are to be written as part of the whole map. ``docs``:
    the write creates the completion documents (every mode but LEGACY on an
    unguarded batch), so the subcollection counters move with them.
    ``write_key``: this write's id, set in ``open_writes`` (``names.OPEN_WRITES``);
    ``spent``: ids of this process's earlier writes whose callers were told, deleted
    there. ``guard``: also set the explicit guard (a conditional write that found no
    legacy-only player and creates completion documents).
    """
    total = sum(c.predictions_count for c in new)
    # Players written without a completion document are counted apart; the others
    # read that count back (above 0: the batch is not guarded after all).
    legacy_only = 0 if docs else len(new)
    data: dict[str, Any] = {
        f.EXPIRED_FLAG: Increment(0),
        f.LEGACY_ONLY_COUNT: Increment(legacy_only),
    }
    if mode.writes_legacy:
        data[f.COMPLETED_PLAYERS] = ArrayUnion([c.player for c in new])
        entries = {c.player: c.predictions_count for c in new}
        if whole_map is not None:
            data[f.PREDICTIONS_BY_PLAYER] = {**whole_map, **entries}
        else:
            data |= {player_field(p): count for p, count in entries.items()}
        data[f.TOTAL_PREDICTIONS] = Increment(total)
        data[f.UPDATED_AT] = SERVER_TIMESTAMP
    if guard:
        data[f.COMPLETIONS_BACKFILLED] = True
    for key in spent:
        if key != write_key:
            data[write_field(key)] = DELETE_FIELD
    data[write_field(write_key)] = True
    if docs and not mode.writes_legacy:
        data[f.ARRAY_PARTIAL] = True  # these players are not in the array
    if docs:
        data[f.COMPLETED_COUNT] = Increment(len(new))
        data[f.TOTAL_PREDICTIONS_SUBCOLL] = Increment(total)
        data[f.LAST_UPDATED] = SERVER_TIMESTAMP
    # The client sends a write's field transforms sorted by field path; every transform
    # here is a top-level field with a plain name, so its path sorts as its name.
    transforms = sorted(k for k, v in data.items() if is_transform(v))
    return data, ResultsAt(
        transforms.index(f.COMPLETED_COUNT) if f.COMPLETED_COUNT in transforms else None,
        transforms.index(f.LEGACY_ONLY_COUNT),
        transforms.index(f.EXPIRED_FLAG),
    )
