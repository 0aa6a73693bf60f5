"""Migration from the legacy array to the completions subcollection: backfill, verify, cleanup.

The five steps, each safe to run while completions keep arriving:

1. Deploy every writer in ``DUAL_WRITE`` (both structures, reads from the array).
2. ``backfill``: create the completion documents (and counters) of players
   recorded only in the array. Idempotent: each batch is one transaction (or
   a few, for arrays over 400 players) that reads the completion
   documents it would create and skips existing ones.
3. ``verify``, then deploy ``DUAL_WRITE_SUBCOLLECTION_READS``.
4. Deploy ``SUBCOLLECTION_ONLY``.
5. ``cleanup_legacy``: delete the array, map and legacy total, only from
   batches that verify clean, each in a transaction that re-validates it.

Backfill marks each batch it finished with ``completions_backfilled: true``,
meaning "every player in ``completed_players`` has a completion document",
set in the transaction that read the array and saw it true. A write path in
``DUAL_WRITE`` can then tell which batches may still hold array-only players
(see ``COMPLETIONS_BACKFILLED``).

``async-batchstate migrate`` drives them; see the docs' migration runbook. One module
per concern: ``_walk`` (the batch walker), ``_checkpoint``, ``_backfill_batch``
(one batch), ``_backfill`` (the run), ``_verify`` (verify and status), ``_cleanup``.
"""

from ._backfill import BackfillSummary, backfill
from ._backfill_batch import BatchBackfill, backfill_batch
from ._checkpoint import Checkpoint, FileCheckpoint, FirestoreCheckpoint
from ._cleanup import CleanupSummary, cleanup_legacy
from ._progress import MigrationError, MigrationProgress
from ._verify import BatchState, StatusSummary, VerifySummary, status, verify

__all__ = [
    "BackfillSummary",
    "BatchBackfill",
    "BatchState",
    "Checkpoint",
    "CleanupSummary",
    "FileCheckpoint",
    "FirestoreCheckpoint",
    "MigrationError",
    "MigrationProgress",
    "StatusSummary",
    "VerifySummary",
    "backfill",
    "backfill_batch",
    "cleanup_legacy",
    "status",
    "verify",
]
