"""A new batch: ``create_batch``'s arguments validated and its document built (no I/O)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1 import SERVER_TIMESTAMP

from .._config import MigrationMode
from .._errors import (
    ConfigurationError,
    DuplicatePlayerError,
    InvalidIdError,
    InvalidInputError,
    LegacyArrayLimitError,
)
from .batch_info import BatchInfo
from .ids import validate_count, validate_id, validate_iterable, validate_player
from .names import (
    ARRAY_PARTIAL,
    COMPLETED_COUNT,
    COMPLETED_PLAYERS,
    COMPLETIONS_BACKFILLED,
    CREATED_AT,
    DEADLINE,
    EXPECTED_COUNT,
    PREDICTIONS_BY_PLAYER,
    ROSTER,
    ROSTER_CHUNK_BYTES,
    ROSTER_CHUNK_MAX,
    ROSTER_CHUNKS,
    ROSTER_INLINE_BYTES,
    STATUS,
    STATUS_IN_PROGRESS,
    TOTAL_PREDICTIONS,
    TOTAL_PREDICTIONS_SUBCOLL,
    UNCHECKED_MAX_EXPECTED,
    UPDATED_AT,
)

logger = logging.getLogger("async_batchstate")

LEGACY_MAX_BYTES = 1_048_576 - 48_576
"""Bytes of a batch document the legacy array and map may take (the rest: other fields)."""


@dataclass(frozen=True)
class LegacyLimits:
    """How large a batch may grow in a mode that writes the legacy array.

    Args:
        players: Most players (each costs 3 of a document's 40,000 index entries
            and ~50 bytes of its 1 MiB).
        warn_ratio: Fraction of the limits at which ``create_batch`` logs a warning.

    Raises:
        ConfigurationError: ``players`` not an int >= 1, or ``warn_ratio`` not a
            number in ``(0, 1]``.
    """

    players: int = 12_000
    warn_ratio: float = 0.8

    def __post_init__(self) -> None:
        validate_count("legacy_array_limit", self.players, minimum=1, error=ConfigurationError)
        ratio = self.warn_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigurationError(
                f"legacy_array_warn_ratio must be a number in (0, 1], not {ratio!r}"
            )


@dataclass(frozen=True)
class NewBatch:
    """A validated batch, ready to write: its document and its roster chunks."""

    batch_id: str
    document: dict[str, Any]
    roster_chunks: list[list[str]]
    info: BatchInfo
    unchecked: bool = False
    """Whether it gets the ``UNCHECKED`` marker (its completions need no settings check)."""


def absolute_deadline(
    deadline: dt.datetime | dt.timedelta | None, *, now: dt.datetime
) -> dt.datetime | None:
    """An aware datetime for ``deadline`` (a timedelta counts from ``now``), or None.

    Raises:
        InvalidInputError: A naive datetime, or neither a datetime nor a timedelta.
    """
    if deadline is None:
        return None
    if isinstance(deadline, dt.timedelta):
        try:
            return now + deadline
        except OverflowError:
            raise InvalidInputError(f"deadline {deadline} from now is past year 9999") from None
    if isinstance(deadline, dt.datetime):
        if deadline.tzinfo is None:
            raise InvalidInputError("deadline must be an aware datetime (e.g. UTC) or a timedelta")
        return deadline
    raise InvalidInputError(
        f"deadline must be a datetime or a timedelta, not {type(deadline).__name__}"
    )


def new_batch(
    mode: MigrationMode,
    batch_id: str,
    *,
    expected_players: Iterable[str] | None,
    expected_count: int | None,
    deadline: dt.datetime | dt.timedelta | None,
    limits: LegacyLimits,
    now: dt.datetime,
) -> NewBatch:
    """Validate ``create_batch``'s arguments and build the batch document (no I/O).

    ``now`` is the instant a timedelta ``deadline`` counts from (the manager's clock).
    ``expected_players`` may be any iterable of ids (a list, a set, a generator):
    it is read exactly once, before anything is checked.

    Raises:
        InvalidIdError, DuplicatePlayerError, InvalidCountError, InvalidInputError,
        LegacyArrayLimitError, ConfigurationError: as ``create_batch`` documents.
    """
    validate_id("batch id", batch_id)
    when = absolute_deadline(deadline, now=now)
    if (expected_players is None) == (expected_count is None):
        raise ConfigurationError("give exactly one of expected_players or expected_count")
    players: tuple[str, ...] | None = None
    if expected_players is not None:
        players = roster_of(mode, expected_players)
        expected_count = len(players)
    count = validate_count("expected_count", expected_count, minimum=1)
    if mode.writes_legacy:
        _check_legacy_limits(batch_id, count, players or (), limits)
    data: dict[str, Any] = {
        EXPECTED_COUNT: count,
        STATUS: STATUS_IN_PROGRESS,
        CREATED_AT: SERVER_TIMESTAMP,
        UPDATED_AT: SERVER_TIMESTAMP,
    }
    if mode.writes_legacy:
        data |= {COMPLETED_PLAYERS: [], PREDICTIONS_BY_PLAYER: {}, TOTAL_PREDICTIONS: 0}
    if mode.writes_subcollection:
        # Born guarded: every player will have a completion document (the explicit guard,
        # never inferred later from which fields exist).
        data |= {COMPLETED_COUNT: 0, TOTAL_PREDICTIONS_SUBCOLL: 0, COMPLETIONS_BACKFILLED: True}
        if not mode.writes_legacy:
            data[ARRAY_PARTIAL] = True
    if when is not None:
        data[DEADLINE] = when
    inline, chunks = split_roster(players or ())
    if players is not None and inline is not None:
        data[ROSTER] = inline
    elif chunks:
        data[ROSTER_CHUNKS] = len(chunks)
    roster = None if players is None else frozenset(players)
    info = BatchInfo(
        expected=count, roster=roster, deadline=when, guarded=mode.writes_subcollection
    )
    unchecked = (
        mode.writes_subcollection
        and players is None
        and when is None
        and count <= UNCHECKED_MAX_EXPECTED
    )
    return NewBatch(
        batch_id=batch_id, document=data, roster_chunks=chunks, info=info, unchecked=unchecked
    )


def roster_of(mode: MigrationMode, expected_players: object) -> tuple[str, ...]:
    """``expected_players`` read once into a tuple of distinct, valid player ids.

    Any iterable of ``str`` works (a list, a set, a generator): it is
    materialised before anything is checked, so a one-shot iterator is never
    consumed by the checks and then stored empty.

    Raises:
        InvalidInputError: Not an iterable, or a ``str``, bytes-like or mapping;
            or empty.
        InvalidIdError: An item that is not a ``str`` id ``mode`` can store.
        DuplicatePlayerError: A player named twice.
    """
    players = validate_iterable("expected_players", expected_players)
    if not players:
        raise InvalidInputError("expected_players must name at least one player")
    seen: set[str] = set()
    for player in players:
        if not isinstance(player, str):
            raise InvalidIdError(
                f"expected_players must hold str player ids, not {type(player).__name__}"
            )
        validate_player(mode, player)
        if player in seen:
            raise DuplicatePlayerError(f"player {player!r} appears twice in expected_players")
        seen.add(player)
    return players


def _check_legacy_limits(
    batch_id: str, count: int, players: Sequence[str], limits: LegacyLimits
) -> None:
    if count > limits.players:
        raise LegacyArrayLimitError(
            f"batch {batch_id!r} expects {count} players; the legacy array is limited to "
            f"{limits.players} by Firestore's 1 MiB / 40,000 index-entry document "
            "limits. Record it in MigrationMode.SUBCOLLECTION_ONLY instead"
        )
    # Bytes too, when the ids are known: each player is stored twice in the
    # document (array entry and map key, +1 byte each) plus an 8-byte int.
    size = sum(2 * len(p.encode("utf-8")) + 10 for p in players)
    if size > LEGACY_MAX_BYTES:
        raise LegacyArrayLimitError(
            f"batch {batch_id!r}: its {count} player ids would take ~{size:,} bytes of "
            f"the legacy array and map, over Firestore's 1 MiB document limit. Record it "
            "in MigrationMode.SUBCOLLECTION_ONLY instead"
        )
    ratio = limits.warn_ratio
    if count >= int(limits.players * ratio) or size >= ratio * LEGACY_MAX_BYTES:
        logger.warning(
            "batch %r expects %d players, near the legacy array limit of %d",
            batch_id,
            count,
            limits.players,
            extra={"batch_id": batch_id, "expected_count": count},
        )


def split_roster(players: Sequence[str]) -> tuple[list[str] | None, list[list[str]]]:
    """Where to store a roster: ``(inline list, [])`` when small, else ``(None, chunks)``."""
    sizes = [len(p.encode("utf-8")) + 1 for p in players]
    if sum(sizes) <= ROSTER_INLINE_BYTES:
        return list(players), []
    chunks: list[list[str]] = [[]]
    used = 0
    for player, size in zip(players, sizes, strict=True):
        if chunks[-1] and (used + size > ROSTER_CHUNK_BYTES or len(chunks[-1]) >= ROSTER_CHUNK_MAX):
            chunks.append([])
            used = 0
        chunks[-1].append(player)
        used += size
    return None, chunks
