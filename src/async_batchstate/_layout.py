"""Document paths, field names, safe field paths and id validation.

Field paths into ``predictions_by_player`` are always built with ``FieldPath``:
a player id such as ``a.b`` or ``total_predictions`` must become a literal map
key, never a path to another field (the old code's ``'{}'.format`` bug).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.cloud.firestore_v1.field_path import FieldPath

from ._errors import InvalidCountError, InvalidIdError

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
# True when every player in completed_players has a completion document: set by
# create_batch in the modes that write both structures and by migrate backfill,
# deleted by every LEGACY-mode write. Writers in the dual modes trust it to skip
# reading the array in their transaction.
COMPLETIONS_BACKFILLED = "completions_backfilled"
# Who wrote what, so an outcome whose answer was lost is decided by what is stored
# (a retry finds its own id: "this call wrote it") and never by error text.
CREATED_BY = "created_by"  # create_batch's call id
FINALISED_BY = "finalised_by"  # the finalising call's id; the callbacks' idempotency key
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
