"""Names of the stored documents' fields and statuses, and limits on what they hold.

Defaults keep the old field names, so existing data works. Read as ``f.NAME``
(``from .._store import names as f``).
"""

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
# THE GUARD: true when completion documents guard the batch (every player in
# completed_players has one). Stated explicitly, never inferred from other fields:
# set by create_batch in every mode that writes completion documents (SUBCOLLECTION_ONLY
# included), by migrate backfill, and by a conditional write that creates completion
# documents on a batch with no legacy structure at all; never cleared by any writer. Writers
# of completion documents trust it to write lock-free; every writer that sees it, LEGACY
# included, creates the completion documents too. It only ever turns true, so a cached
# belief is stale only in the safe direction (a process that believes "not guarded"
# reads the batch and commits on the condition that it is unchanged).
COMPLETIONS_BACKFILLED = "completions_backfilled"
# Players in completed_players WITHOUT a completion document: +n by each LEGACY-mode
# write that adds n to an unguarded batch, -n by backfill as it creates their
# documents (0 once backfilled). completed_count + legacy_only_count is the batch's
# count as every mode that wrote it counts (the union of both structures), and each
# lock-free Commit reads it back with Increment(0): above 0 means the batch is not
# guarded after all (a LEGACY writer of 0.1 was at it).
LEGACY_ONLY_COUNT = "legacy_only_count"
# True once SUBCOLLECTION_ONLY created or wrote the batch: its legacy array (if a
# dual writer adds one) holds only some players, by design. The consistency rules
# then compare each structure with itself, not the array with the subcollection.
ARRAY_PARTIAL = "array_partial"
# Who wrote what, so an outcome whose answer was lost is decided by what is stored
# (a retry finds its own id: "this call wrote it") and never by error text.
CREATED_BY = "created_by"  # create_batch's call id
FINALIZED_BY = "finalised_by"  # the finalizing call's id; the callbacks' idempotency key
# Every group write sets open_writes.<its id> = true in the same Commit (a LEGACY write
# without completion documents: its attempt id). The expiry moves the map, as it read it,
# to closed_writes. So after a lost answer the retry reads whether its write landed (its
# id in either map) and whether it landed after the expiry (in open_writes of an expired
# batch): decided by what the Commits wrote, never by comparing timestamps. A process
# deletes the ids of its groups that are told (in its next write to the batch), so the
# map holds about one id per process writing the batch, however many groups land.
OPEN_WRITES = "open_writes"
CLOSED_WRITES = "closed_writes"
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
UNCHECKED = "unchecked"
"""A document in the roster subcollection of a batch that needs no settings check: born
guarded (completion documents), without roster, without deadline, expecting at most
``UNCHECKED_MAX_EXPECTED`` (``create_batch`` deletes a marker left under the id of any
other batch). A process's first completion of a batch sends its Commit with
an update of it that requires it to exist, beside the settings read: one round trip."""
UNCHECKED_TOUCHES = "touches"  # the field the first touches increment
UNCHECKED_MAX_EXPECTED = 2**31 - 1  # then every count up to 2**32 fits the 64-bit total
ROSTER_INLINE_BYTES = 16 * 1024
ROSTER_CHUNK_BYTES = 512 * 1024
ROSTER_CHUNK_MAX = 10_000  # players per chunk (index entries: well under 40,000)
# Deadlines and expiry.
DEADLINE = "deadline"
EXPIRED_REASON = "expired_reason"
MISSING_PLAYERS = "missing_players"  # stored at expiry, at most MISSING_KEPT of them
MISSING_COUNT = "missing_count"
MISSING_KEPT = 1_000
MISSING_KEPT_BYTES = 128 * 1024  # and at most this many bytes of ids
# Every group write applies Increment(0) to this field: the transform's result says,
# atomically with the write, whether the batch had expired (0: no, 1: yes), so a late
# completion is told LATE without an extra read.
EXPIRED_FLAG = "expired_flag"
# Retention: a Firestore TTL policy on this field deletes finished batches' documents.
EXPIRE_AT = "expire_at"

GUARD_FIELDS = (COMPLETIONS_BACKFILLED,)
"""What ``decode.guarded`` needs."""
COUNT_FIELDS = (COMPLETED_COUNT, LEGACY_ONLY_COUNT, COMPLETIONS_BACKFILLED)
"""What ``decode.counted`` needs (and ``COMPLETED_PLAYERS`` where the batch is not guarded)."""
