"""Backfill of one batch: create the completion documents of players only in the legacy array."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1 import SERVER_TIMESTAMP, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from .._clock import SYSTEM_CLOCK, Clock
from .._retry import RetryPolicy
from .._store import names as f
from .._store.completion import completion_doc
from .._store.ids import Layout, validate_id
from .._store.refs import Refs
from .._store.transact import MAX_WRITES_PER_COMMIT, transact
from .._types import renamed_attribute
from ._arguments import checked

_PAGE = 500


@dataclass(frozen=True)
class BatchBackfill:
    """What backfill did to one batch (or would do, in a dry run).

    Attributes:
        batch_id: The batch.
        created: Players whose completion document was created.
        predictions: Sum of their counts (added to ``total_predictions_subcoll``).
        marked: ``completions_backfilled`` was set by this run.
        unknown_counts: Array players without a usable count in
            ``predictions_by_player``: left alone (no count is invented), to reconcile.
        skipped: Why nothing was considered (no such batch), else None.
        transactions: Transactions committed.
        finalized: This run completed and finalized the batch.
    """

    batch_id: str
    created: tuple[str, ...] = ()
    predictions: int = 0
    marked: bool = False
    unknown_counts: tuple[str, ...] = ()
    skipped: str | None = None
    transactions: int = 0
    finalized: bool = False

    if not typing.TYPE_CHECKING:  # hidden so type checkers flag the old name too

        def __getattr__(self, name: str) -> object:
            raise renamed_attribute(self, name, {"finalised": "finalized"})


@dataclass(frozen=True)
class _Step:
    """One transaction of a batch's backfill: what it created, and whether the batch is done."""

    final: bool
    created: tuple[str, ...] = ()
    predictions: int = 0
    marked: bool = False
    unknown: tuple[str, ...] = ()
    skipped: str | None = None


async def existing_completions(
    client: AsyncClient, completions: Any, players: Iterable[object], transaction: Any
) -> set[str]:
    """Which of ``players`` have a completion document, by point reads.

    Point reads (``get_all``) lock only those documents inside a transaction.
    A query would lock a range, and on the emulator concurrent transactions
    that query sibling subcollections abort each other until they time out.
    """
    names = list(dict.fromkeys(p for p in players if isinstance(p, str)))
    have: set[str] = set()
    for start in range(0, len(names), _PAGE):
        refs = [completions.document(p) for p in names[start : start + _PAGE]]
        async for snap in client.get_all(
            refs, field_paths=[f.PREDICTIONS_COUNT], transaction=transaction
        ):
            if snap.exists:
                have.add(snap.id)
    return have


def _count_of(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


async def _backfill_step(
    transaction: AsyncTransaction | None,
    client: AsyncClient,
    layout: Layout,
    batch_id: str,
    limit: int | None,
) -> _Step:
    """Read a batch, and (given a transaction) create up to ``limit`` missing docs."""
    ref = Refs(client, layout).batch(batch_id)
    data: dict[str, Any] | None = None
    fields = [f.COMPLETED_PLAYERS, f.PREDICTIONS_BY_PLAYER, f.COMPLETIONS_BACKFILLED]
    async for snap in client.get_all([ref], field_paths=fields, transaction=transaction):
        if snap.exists:
            data = snap.to_dict() or {}
    if data is None:
        return _Step(final=True, skipped="no such batch")
    array = data.get(f.COMPLETED_PLAYERS)
    if not isinstance(array, list):
        # Never written by LEGACY (it always writes the array): completion documents
        # guard it already; state the guard if an older version did not.
        array = []
    completions = Refs(client, layout).completions(batch_id)
    have = await existing_completions(client, completions, array, transaction)
    raw_map = data.get(f.PREDICTIONS_BY_PLAYER)
    legacy_map = raw_map if isinstance(raw_map, dict) else {}
    missing: dict[str, int] = {}
    unknown: list[str] = []
    for player in dict.fromkeys(p for p in array if isinstance(p, str) and p not in have):
        count = _count_of(legacy_map.get(player))
        if count is None:
            unknown.append(player)
        else:
            missing[player] = count
    chunk = dict(list(missing.items())[:limit]) if limit is not None else missing
    final = len(chunk) == len(missing)
    mark = final and not unknown and data.get(f.COMPLETIONS_BACKFILLED) is not True
    if transaction is not None:
        for player, count in chunk.items():
            transaction.create(completions.document(player), completion_doc(player, count))
        update: dict[str, Any] = {}
        if chunk:
            # The legacy total already counts these players: only the subcollection's grow.
            update[f.COMPLETED_COUNT] = Increment(len(chunk))
            update[f.TOTAL_PREDICTIONS_SUBCOLL] = Increment(sum(chunk.values()))
            update[f.LAST_UPDATED] = SERVER_TIMESTAMP
            # They are no longer only in the array: the union count stays the same.
            update[f.LEGACY_ONLY_COUNT] = Increment(-len(chunk))
        if mark:
            update[f.COMPLETIONS_BACKFILLED] = True
            update[f.LEGACY_ONLY_COUNT] = 0  # every array player has a document now
        if update:
            transaction.update(ref, update)
    return _Step(
        final=final,
        created=tuple(chunk),
        predictions=sum(chunk.values()),
        marked=mark,
        unknown=tuple(unknown),
    )


async def _backfill_batch(
    client: AsyncClient,
    layout: Layout,
    batch_id: str,
    *,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> BatchBackfill:
    """Create the missing completion documents of one batch from its legacy array.

    Each transaction reads the batch's array and its players' completion
    documents (point reads: an array of ``n`` players costs ``n`` reads per
    transaction, and ``ceil(n / MAX_WRITES_PER_COMMIT)`` transactions at worst), creates
    up to ``MAX_WRITES_PER_COMMIT`` (400) missing documents (count from ``predictions_by_player``)
    and increments ``completed_count`` and ``total_predictions_subcoll`` by what
    it created; the one that finds nothing left also sets
    ``completions_backfilled``. Running it again creates nothing. ``clock``
    times the retries (the real clock by default).
    """
    validate_id("batch id", batch_id)
    if dry_run:
        step = await _backfill_step(None, client, layout, batch_id, None)
        return BatchBackfill(
            batch_id=batch_id,
            created=step.created,
            predictions=step.predictions,
            marked=step.marked,
            unknown_counts=step.unknown,
            skipped=step.skipped,
        )

    async def chunk(transaction: AsyncTransaction, batch_id: str) -> _Step:
        return await _backfill_step(transaction, client, layout, batch_id, MAX_WRITES_PER_COMMIT)

    created: list[str] = []
    predictions = 0
    transactions = 0
    while True:
        step = await transact(
            client,
            chunk,
            batch_id,
            retry=retry,
            what=f"backfilling batch {batch_id!r}",
            clock=clock,
        )
        transactions += 1
        created += step.created
        predictions += step.predictions
        if step.final:
            return BatchBackfill(
                batch_id=batch_id,
                created=tuple(created),
                predictions=predictions,
                marked=step.marked,
                unknown_counts=step.unknown,
                skipped=step.skipped,
                transactions=transactions,
            )


backfill_batch = checked(_backfill_batch)
"""The public ``_backfill_batch``: every argument checked first, every client failure typed
(a backfill run calls ``_backfill_batch`` itself, so a batch's failure keeps its own reason)."""
