"""Document paths, field names, safe field paths and id validation.

Field paths into ``predictions_by_player`` are always built with ``FieldPath``:
a player id such as ``a.b`` or ``total_predictions`` must become a literal map
key, never a path to another field (the old code's ``'{}'.format`` bug). An
id with a carriage return is never put in a field path at all: its entry is
written with the whole map (``needs_whole_map_write``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.cloud.firestore_v1 import SERVER_TIMESTAMP
from google.cloud.firestore_v1.field_path import FieldPath

from .._config import MigrationMode
from .._errors import (
    ConfigurationError,
    DuplicatePlayerError,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    LegacyArrayLimitError,
    UnexpectedPlayerError,
)
from .._types import BatchProgress

logger = logging.getLogger("async_batchstate")

# Field names of the batch document. Defaults keep the old names so existing data works.
EXPECTED_COUNT = "expected_count"
STATUS = "status"
CREATED_AT = "created_at"
COMPLETED_AT = "completed_at"
UPDATED_AT = "updated_at"
LAST_UPDATED = "last_updated"
COMPLETED_PLAYERS = "completed_players"
PREDICTIONS_BY_PLAYER = "predictions_by_player"
TOTAL_PREDICTIONS = "total_predictions"
COMPLETED_COUNT = "completed_count"
TOTAL_PREDICTIONS_SUBCOLL = "total_predictions_subcoll"
LEGACY_FIELDS = (COMPLETED_PLAYERS, PREDICTIONS_BY_PLAYER, TOTAL_PREDICTIONS)
"""The legacy structure: what ``cleanup_legacy`` removes once nothing reads it."""
# True when every player in completed_players has a completion document: set by
# create_batch in the modes that write completion documents and by migrate backfill.
# Writers of completion documents trust it to write lock-free; a LEGACY-mode writer
# that finds it keeps it true (it creates the completion documents too), so during a
# rolling deploy or a rollback nothing makes a guarded batch unguarded.
COMPLETIONS_BACKFILLED = "completions_backfilled"
# Players in completed_players WITHOUT a completion document: +n by each LEGACY-mode
# write that adds n to an unguarded batch, -n by backfill as it creates their
# documents (0 once backfilled). completed_count + legacy_only_count is the batch's
# count as every mode that wrote it counts (the union of both structures), and each
# lock-free Commit reads it back with Increment(0): above 0 means the batch is not
# guarded after all (a LEGACY writer of 0.1 was at it).
LEGACY_ONLY_COUNT = "legacy_only_count"
# Who wrote what, so an outcome whose answer was lost is decided by what is stored
# (a retry finds its own id: "this call wrote it") and never by error text.
CREATED_BY = "created_by"  # create_batch's call id
FINALIZED_BY = "finalised_by"  # the finalizing call's id; the callbacks' idempotency key
RECENT_WRITES = "recent_writes"  # LEGACY: ids of the last groups committed (no completion docs)
RECENT_WRITES_KEPT = 100
# The owed completion callback (durable): set with the flip, cleared when it returned.
CALLBACK_OWED = "callback_owed"
CALLBACK_CLAIMED_BY = "callback_claimed_by"
CALLBACK_CLAIMED_AT = "callback_claimed_at"
CALLBACK_DONE_AT = "callback_done_at"
# Fields of a completion document.
PLAYER_LOOKUP = "player_lookup"
PREDICTIONS_COUNT = "predictions_count"
WRITE_ID = "write_id"  # the id of the group write that created it

STATUS_IN_PROGRESS = "in_progress"
STATUS_COMPLETE = "complete"
STATUS_EXPIRED = "expired"
TERMINAL_STATUSES = frozenset({STATUS_COMPLETE, STATUS_EXPIRED})

# The roster (create_batch(expected_players=...)): inline in the batch document up
# to ROSTER_INLINE_BYTES (out of the ~48 KB a legacy batch keeps free beside its
# array and map), else in chunk documents {batch}/{roster}/{index}.
ROSTER = "roster"  # inline: [player, ...]
ROSTER_CHUNKS = "roster_chunks"  # chunked: how many chunk documents
ROSTER_CHUNK_PLAYERS = "players"  # field of a chunk document
ROSTER_INLINE_BYTES = 16 * 1024
ROSTER_CHUNK_BYTES = 512 * 1024
ROSTER_CHUNK_MAX = 10_000  # players per chunk (index entries: well under 40,000)
# Deadlines and expiry.
DEADLINE = "deadline"
EXPIRED_REASON = "expired_reason"
MISSING_PLAYERS = "missing_players"  # stored at expiry, at most MISSING_KEPT of them
MISSING_COUNT = "missing_count"
MISSING_KEPT = 1_000
# Every group write applies Increment(0) to this field: the transform's result says,
# atomically with the write, whether the batch had expired (0: no, 1: yes), so a late
# completion is told LATE without an extra read.
EXPIRED_FLAG = "expired_flag"
# Retention: a Firestore TTL policy on this field deletes finished batches' documents.
EXPIRE_AT = "expire_at"

MAX_ID_BYTES = 1500
MAX_FIELD_PATH_BYTES = 1500
MAX_COUNT = 2**63 - 1  # Firestore integers are signed 64-bit.
_RESERVED_ID = re.compile(r"^__.*__$", re.DOTALL)


def validate_id(kind: str, value: object) -> str:
    """Return ``value`` if Firestore can store it as a document id, else raise.

    Args:
        kind: What the id names, for the error message ("batch id", "player id").
        value: The candidate id.

    Raises:
        InvalidIdError: Not a ``str``, empty, ``.`` or ``..``, contains ``/``,
            matches ``__.*__``, is not valid UTF-8 or is over 1,500 bytes.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{kind} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"{kind} must not be empty")
    if value in (".", ".."):
        raise InvalidIdError(f"{kind} {value!r} is reserved by Firestore")
    if "/" in value:
        raise InvalidIdError(f"{kind} {value!r} must not contain '/'")
    if _RESERVED_ID.match(value):
        raise InvalidIdError(f"{kind} {value!r} matches Firestore's reserved pattern __.*__")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidIdError(f"{kind} {value!r} is not valid UTF-8: {exc.reason}") from None
    if size > MAX_ID_BYTES:
        raise InvalidIdError(f"{kind} is {size} bytes; Firestore allows at most {MAX_ID_BYTES}")
    return value


def validate_count(name: str, value: object, *, minimum: int = 0) -> int:
    """Return ``value`` if it is an ``int`` in ``[minimum, 2**63 - 1]``, else raise.

    Raises:
        InvalidCountError: A ``bool``, a non-``int`` or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCountError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise InvalidCountError(f"{name} must be >= {minimum}, got {value}")
    if value > MAX_COUNT:
        raise InvalidCountError(f"{name} must fit in a signed 64-bit integer, got {value}")
    return value


def player_field(player: str) -> str:
    """The quoted field path of ``player``'s entry in ``predictions_by_player``."""
    return FieldPath(PREDICTIONS_BY_PLAYER, player).to_api_repr()


def needs_whole_map_write(player: str) -> bool:
    """Whether ``player``'s map entry must be written by rewriting the whole map.

    A field path naming a key with a carriage return (CR) does not reach that
    key: the Firestore emulator reads a raw CR in a quoted field path as a line
    feed (and CR LF as LF). An update of ``predictions_by_player.`a<CR>b``` then
    sets, or deletes, the key ``a<LF>b`` (another player's entry) and never
    writes ``a<CR>b``. The client's quoting is the documented one (only
    backticks and backslashes are escaped) and no documented escape names a CR.
    A map *value* keeps its keys byte for byte, so such an entry is written as
    part of the whole map, read in the same transaction.
    """
    return "\r" in player


def validate_legacy_key(player: str) -> None:
    """Reject a player id whose ``predictions_by_player`` field path is too long.

    Raises:
        InvalidIdError: The quoted field path is over Firestore's 1,500 bytes.
    """
    size = len(player_field(player).encode("utf-8"))
    if size > MAX_FIELD_PATH_BYTES:
        raise InvalidIdError(
            f"player id makes a {size}-byte field path in {PREDICTIONS_BY_PLAYER}; Firestore "
            f"allows {MAX_FIELD_PATH_BYTES}. Shorter ids, or SUBCOLLECTION_ONLY mode, avoid it"
        )


@dataclass(frozen=True)
class Layout:
    """Where a batch and its completions live.

    Args:
        collection: Collection path of the batch documents, e.g. ``prediction_batches``
            (may be nested: ``tenants/t1/batches``).
        completions: Name of the per-batch completions subcollection.
    """

    collection: str = "prediction_batches"
    completions: str = "completions"

    def __post_init__(self) -> None:
        parts = self.collection.split("/")
        if len(parts) % 2 != 1:
            raise InvalidIdError(
                f"collection {self.collection!r} must be a collection path (odd number of segments)"
            )
        for part in parts:
            validate_id("collection segment", part)
        validate_id("completions subcollection", self.completions)


# -- a new batch ---------------------------------------------------------------------

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
        ConfigurationError: ``players < 1`` or ``warn_ratio`` outside ``(0, 1]``.
    """

    players: int = 12_000
    warn_ratio: float = 0.8

    def __post_init__(self) -> None:
        if self.players < 1 or not 0.0 < self.warn_ratio <= 1.0:
            raise ConfigurationError("need legacy_array_limit >= 1 and 0 < warn ratio <= 1")


@dataclass
class BatchInfo:
    """What this process knows about a batch: its fixed settings and whether it is guarded.

    The settings (expected count, roster, deadline) never change after
    ``create_batch``. ``guarded`` (completion documents guard the batch: every
    legacy player has one, so a lock-free Commit cannot count a player twice) only
    ever turns true (backfill), which the transaction's read of an unguarded batch
    notices; every lock-free Commit confirms it.
    """

    expected: int
    roster: frozenset[str] | None = None
    deadline: dt.datetime | None = None
    terminal: bool = field(default=False, compare=False)
    """This process saw the batch finished (no more deadline checks)."""
    guarded: bool = field(default=False, compare=False)
    """Completion documents guard the batch: every legacy-array player has one."""

    def check_completion(self, batch_id: str, player: str, count: int) -> None:
        """Refuse a completion this batch cannot take, before anything is written.

        Raises:
            UnexpectedPlayerError: The batch has a roster without ``player``.
            InvalidCountError: ``count`` could overflow the batch's 64-bit total.
        """
        if self.roster is not None and player not in self.roster:
            raise UnexpectedPlayerError(
                f"player {player!r} is not in the roster of batch {batch_id!r}; nothing written"
            )
        # Increment saturates at 2**63 - 1 instead of failing: refuse a count that
        # could take the batch's total there.
        most = MAX_COUNT // max(self.expected, 1)
        if count > most:
            raise InvalidCountError(
                f"predictions_count {count} could overflow the 64-bit total of batch "
                f"{batch_id!r} ({self.expected} completions of at most {most})"
            )


@dataclass(frozen=True)
class NewBatch:
    """A validated batch, ready to write: its document and its roster chunks."""

    batch_id: str
    document: dict[str, Any]
    roster_chunks: list[list[str]]
    info: BatchInfo


def validate_player(mode: MigrationMode, player: object) -> str:
    """Return ``player`` if ``mode`` can store it as a player id, else raise ``InvalidIdError``."""
    validate_id("player id", player)
    assert isinstance(player, str)
    if mode.writes_legacy:
        validate_legacy_key(player)
    return player


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
        return now + deadline
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
    expected_players: Sequence[str] | None,
    expected_count: int | None,
    deadline: dt.datetime | dt.timedelta | None,
    limits: LegacyLimits,
    now: dt.datetime,
) -> NewBatch:
    """Validate ``create_batch``'s arguments and build the batch document (no I/O).

    ``now`` is the instant a timedelta ``deadline`` counts from (the manager's clock).

    Raises:
        InvalidIdError, DuplicatePlayerError, InvalidCountError, InvalidInputError,
        LegacyArrayLimitError, ConfigurationError: as ``create_batch`` documents.
    """
    validate_id("batch id", batch_id)
    when = absolute_deadline(deadline, now=now)
    if (expected_players is None) == (expected_count is None):
        raise ConfigurationError("give exactly one of expected_players or expected_count")
    if expected_players is not None:
        if isinstance(expected_players, str):
            raise InvalidCountError("expected_players must be a sequence of ids, not a str")
        seen: set[str] = set()
        for player in expected_players:
            validate_player(mode, player)
            if player in seen:
                raise DuplicatePlayerError(f"player {player!r} appears twice in expected_players")
            seen.add(player)
        expected_count = len(seen)
    count = validate_count("expected_count", expected_count, minimum=1)
    if mode.writes_legacy:
        _check_legacy_limits(batch_id, count, expected_players or (), limits)
    data: dict[str, Any] = {
        EXPECTED_COUNT: count,
        STATUS: STATUS_IN_PROGRESS,
        CREATED_AT: SERVER_TIMESTAMP,
        UPDATED_AT: SERVER_TIMESTAMP,
    }
    if mode.writes_legacy:
        data |= {COMPLETED_PLAYERS: [], PREDICTIONS_BY_PLAYER: {}, TOTAL_PREDICTIONS: 0}
    if mode.writes_subcollection:
        data |= {COMPLETED_COUNT: 0, TOTAL_PREDICTIONS_SUBCOLL: 0}
        if mode.writes_legacy:  # born with both structures: nothing to backfill
            data[COMPLETIONS_BACKFILLED] = True
    if when is not None:
        data[DEADLINE] = when
    inline, chunks = split_roster(expected_players or ())
    if expected_players is not None and inline is not None:
        data[ROSTER] = inline
    elif chunks:
        data[ROSTER_CHUNKS] = len(chunks)
    roster = None if expected_players is None else frozenset(expected_players)
    info = BatchInfo(
        expected=count, roster=roster, deadline=when, guarded=mode.writes_subcollection
    )
    return NewBatch(batch_id=batch_id, document=data, roster_chunks=chunks, info=info)


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


# -- reading ---------------------------------------------------------------------


def as_int(value: object) -> int:
    """A stored count as an ``int``; anything that is not a number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def guarded(data: dict[str, Any]) -> bool:
    """Whether completion documents guard the batch (read with ``GUARD_FIELDS``).

    Backfilled (or born with completion documents), or never given a legacy structure.
    """
    if data.get(COMPLETIONS_BACKFILLED) is True:
        return True
    return TOTAL_PREDICTIONS not in data and not as_int(data.get(LEGACY_ONLY_COUNT))


GUARD_FIELDS = (COMPLETIONS_BACKFILLED, LEGACY_ONLY_COUNT, TOTAL_PREDICTIONS)
COUNT_FIELDS = (COMPLETED_COUNT, LEGACY_ONLY_COUNT, COMPLETIONS_BACKFILLED)
"""What ``counted`` needs (and ``COMPLETED_PLAYERS`` where the batch is not guarded)."""


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
    completed = counted(data, array_counts=not mode.reads_subcollection)
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
        expected_count=int(data.get(EXPECTED_COUNT, 0)),
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
