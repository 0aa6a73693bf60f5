"""``cleanup_legacy``: remove the legacy fields, only from batches that verify clean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1 import DELETE_FIELD
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._retry import RetryPolicy
from .._store import names as f
from .._store.ids import Layout
from .._store.refs import Refs
from .._store.transact import transact
from ._arguments import checked
from ._backfill_batch import existing_completions
from ._progress import ProgressCallback, _Tally
from ._verify import verify
from ._walk import _checked_ids, _ids, _total, for_each_batch


@dataclass(frozen=True)
class CleanupSummary:
    """The outcome of ``cleanup_legacy``.

    Attributes:
        refused: Nothing was removed because of ``reasons``.
        reasons: ``(batch_id, problem)``; batch id ``"*"`` for run-wide reasons.
        cleaned: Batches whose legacy fields were removed (or would be, in a dry run).
        skipped: Batches that changed between the check and the removal and were left.
        dry_run: Nothing was written.
        failures: ``(batch_id, reason)`` of batches whose removal failed (after the
            retries gave up), the reason on one line; the run went on with the
            others and their legacy fields are intact (re-run to retry them).
    """

    refused: bool
    reasons: tuple[tuple[str, str], ...] = ()
    cleaned: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """Not refused, nothing skipped and no batch failed."""
        return not self.refused and not self.skipped and not self.failures


@checked
async def cleanup_legacy(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    concurrency: int = 8,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> CleanupSummary:
    """Delete ``completed_players``, ``predictions_by_player`` and ``total_predictions``.

    All or nothing up front: every batch is verified under ``SUBCOLLECTION_ONLY``
    rules first, and any inconsistent or unreadable batch refuses the whole run
    (listing the reasons). Then each batch's fields go in a transaction that
    re-checks that every array player has a completion document, so a batch
    a straggling writer changed in between is skipped, not lost.

    Args:
        client: The Firestore client.
        layout: Where the batches live.
        mode: The writers' mode; must be ``SUBCOLLECTION_ONLY`` (every other mode
            still writes or reads the legacy fields).
        batch_ids: Only these batches.
        dry_run: Verify and list what would be cleaned; write nothing.
        concurrency: Batches in flight at once.
        progress: Called after each batch of the removal pass.
        retry: Retry policy of each read and transaction.
        clock: Time source of the retries' timeouts and backoff.

    A batch whose removal fails is listed in ``failures`` and the run goes on.
    Every argument is checked before anything is read or written.

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
        InvalidInputError: An argument of the wrong type (``batch_ids`` a str,
            bytes, a mapping or not an iterable; ``dry_run`` not a bool;
            ``client``, ``layout``, ``mode``, ``progress``, ``retry`` or ``clock``
            not what it names).
        MigrationError: ``concurrency`` is not an int >= 1.
        WriteFailedError: Listing the batches failed (a closed channel included).
        RetryExhaustedError: Listing the batches kept failing with retryable errors.
    """
    batch_ids = _checked_ids(batch_ids)
    if mode is not MigrationMode.SUBCOLLECTION_ONLY:
        reason = (
            f"writers run in {mode.name}, which still uses the legacy array; deploy "
            "SUBCOLLECTION_ONLY everywhere first"
        )
        return CleanupSummary(refused=True, reasons=(("*", reason),), dry_run=dry_run)
    checked = await verify(
        client,
        layout,
        mode,
        batch_ids=batch_ids,
        concurrency=concurrency,
        retry=retry,
        clock=clock,
    )
    if not checked.ok:
        reasons = [(r.batch_id, problem) for r in checked.inconsistent for problem in r.problems]
        reasons += checked.failures
        return CleanupSummary(refused=True, reasons=tuple(reasons), dry_run=dry_run)

    tally = _Tally(await _total(client, layout, batch_ids, None), progress)
    cleaned: list[str] = []
    skipped: list[tuple[str, str]] = []

    async def remove(transaction: AsyncTransaction, batch_id: str) -> tuple[bool, str]:
        # Re-check in the transaction what removal could lose: an array player
        # without a completion document (a straggling LEGACY writer since verify).
        ref = Refs(client, layout).batch(batch_id)
        data: dict[str, Any] = {}
        async for snap in client.get_all(
            [ref], field_paths=list(f.LEGACY_FIELDS), transaction=transaction
        ):
            data = (snap.to_dict() or {}) if snap.exists else {}
        if not any(name in data for name in f.LEGACY_FIELDS):
            return False, ""
        array = data.get(f.COMPLETED_PLAYERS)
        players = [p for p in array if isinstance(p, str)] if isinstance(array, list) else []
        completions = Refs(client, layout).completions(batch_id)
        missing = set(players) - await existing_completions(
            client, completions, players, transaction
        )
        if missing:
            return False, f"{len(missing)} player(s) only in the legacy array"
        if not dry_run:
            transaction.update(ref, dict.fromkeys(f.LEGACY_FIELDS, DELETE_FIELD))
        return True, ""

    async def work(batch_id: str) -> tuple[bool, str]:
        return await transact(
            client,
            remove,
            batch_id,
            retry=retry,
            what=f"removing legacy fields of {batch_id!r}",
            clock=clock,
            read_only=dry_run,
        )

    async def on_done(batch_id: str, result: tuple[bool, str] | Exception) -> None:
        if tally.record(batch_id, result) and isinstance(result, tuple):
            removed, problem = result
            if removed:
                cleaned.append(batch_id)
            elif problem:
                skipped.append((batch_id, problem))

    await for_each_batch(
        _ids(client, layout, batch_ids), work, concurrency=concurrency, on_done=on_done
    )
    return CleanupSummary(
        refused=False,
        cleaned=tuple(sorted(cleaned)),
        skipped=tuple(sorted(skipped)),
        dry_run=dry_run,
        failures=tuple(sorted(tally.failures)),
    )
