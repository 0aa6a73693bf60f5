"""Migration from the legacy array to the completions subcollection.

``backfill`` creates the missing completion documents (resumable, with a
checkpoint), ``verify`` and ``status`` check every batch, ``cleanup_legacy``
removes the legacy fields from batches that verify clean. The
``async-batchstate migrate`` command drives them; see the docs' migration runbook.
"""

from ._run import (
    BackfillSummary,
    BatchBackfill,
    BatchState,
    Checkpoint,
    CleanupSummary,
    FileCheckpoint,
    FirestoreCheckpoint,
    MigrationError,
    MigrationProgress,
    StatusSummary,
    VerifySummary,
    backfill,
    backfill_batch,
    cleanup_legacy,
    status,
    verify,
)

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
