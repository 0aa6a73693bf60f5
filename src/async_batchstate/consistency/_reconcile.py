"""Repair: rewrite a batch from one source of truth.

``reconcile`` rewrites the batch in a read-write transaction that reads
everything it overwrites, so it serialises with concurrent writers instead of
racing them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from google.cloud.firestore_v1 import SERVER_TIMESTAMP, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import ConfigurationError, batch_not_found
from .._retry import RetryPolicy, retried
from .._store import names as f
from .._store.completion import completion_doc
from .._store.decode import as_int
from .._store.ids import (
    Layout,
    validate_bool,
    validate_id,
    validate_instance,
    validate_policy,
    validate_store,
)
from .._store.refs import Refs
from .._store.transact import MAX_WRITES_PER_COMMIT, transact
from .._write.boundary import typed_errors
from ._report import opt_int

logger = logging.getLogger("async_batchstate.consistency")


class Source(enum.Enum):
    """Which structure ``reconcile`` treats as the truth."""

    SUBCOLLECTION = "subcollection"
    """The completion documents: their ids are the completed players, their counts the counts."""
    LEGACY = "legacy"
    """The ``completed_players`` array, with counts from ``predictions_by_player``."""

    @classmethod
    def default_for(cls, mode: MigrationMode) -> Source:
        """The subcollection, except in ``LEGACY`` mode where only the array is written."""
        return cls.LEGACY if mode is MigrationMode.LEGACY else cls.SUBCOLLECTION


@dataclass(frozen=True)
class ReconcileResult:
    """What ``reconcile`` changed (or, with ``dry_run``, would change).

    Attributes:
        batch_id: The batch.
        source: The structure taken as the truth.
        counters: Changed scalar fields: ``name -> (before, after)``.
        legacy_added: Players added to ``completed_players``.
        legacy_removed: Players removed from it.
        legacy_counts_fixed: Players whose ``predictions_by_player`` entry was set.
        completions_created: Completion documents created.
        completions_deleted: Completion documents deleted.
        completions_updated: Completion documents whose ``predictions_count`` was set.
        transactions: Transactions committed (0 for a dry run).
        dry_run: Nothing was written.
    """

    batch_id: str
    source: Source
    counters: Mapping[str, tuple[int | None, int]] = field(default_factory=dict)
    legacy_added: tuple[str, ...] = ()
    legacy_removed: tuple[str, ...] = ()
    legacy_counts_fixed: tuple[str, ...] = ()
    completions_created: tuple[str, ...] = ()
    completions_deleted: tuple[str, ...] = ()
    completions_updated: tuple[str, ...] = ()
    transactions: int = 0
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        """Whether anything differed from the source of truth."""
        return bool(
            self.counters
            or self.legacy_added
            or self.legacy_removed
            or self.legacy_counts_fixed
            or self.completions_created
            or self.completions_deleted
            or self.completions_updated
        )


@dataclass
class _Plan:
    """The writes that make a batch match its source of truth."""

    batch_update: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    legacy_added: list[str] = field(default_factory=list)
    legacy_removed: list[str] = field(default_factory=list)
    legacy_counts_fixed: list[str] = field(default_factory=list)
    create: dict[str, int] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    update: dict[str, int] = field(default_factory=dict)

    @property
    def doc_writes(self) -> int:
        return len(self.create) + len(self.delete) + len(self.update)


def _plan(
    mode: MigrationMode, source: Source, data: Mapping[str, Any], docs: Mapping[str, int]
) -> _Plan:
    raw_array = data.get(f.COMPLETED_PLAYERS)
    array = [p for p in raw_array if isinstance(p, str)] if isinstance(raw_array, list) else []
    raw_map = data.get(f.PREDICTIONS_BY_PLAYER)
    legacy_map = raw_map if isinstance(raw_map, dict) else {}
    if source is Source.SUBCOLLECTION:
        truth = dict(docs)
    else:
        truth = {}
        for player in array:
            known = legacy_map.get(player, docs.get(player, 0))
            truth.setdefault(player, as_int(known))
    plan = _Plan()
    total = sum(truth.values())
    # Rewrite every structure the mode writes, and any other that exists (stale
    # leftovers must not contradict the truth either).
    has_legacy = any(name in data for name in f.LEGACY_FIELDS)
    has_sub = f.COMPLETED_COUNT in data or f.TOTAL_PREDICTIONS_SUBCOLL in data or bool(docs)
    if mode.writes_legacy or has_legacy:
        in_array = set(array)
        plan.legacy_added = sorted(set(truth) - in_array)
        plan.legacy_removed = sorted(in_array - set(truth))
        if plan.legacy_added or plan.legacy_removed or len(array) != len(in_array):
            kept = list(dict.fromkeys(p for p in array if p in truth))
            plan.batch_update[f.COMPLETED_PLAYERS] = kept + plan.legacy_added
        if legacy_map != truth or f.PREDICTIONS_BY_PLAYER not in data:
            plan.legacy_counts_fixed = sorted(
                p for p in set(truth) | set(legacy_map) if legacy_map.get(p) != truth.get(p)
            )
            plan.batch_update[f.PREDICTIONS_BY_PLAYER] = truth
        _set_counter(plan, data, f.TOTAL_PREDICTIONS, total)
    if mode.writes_subcollection or has_sub:
        for player, count in truth.items():
            if player not in docs:
                plan.create[player] = count
            elif docs[player] != count:
                plan.update[player] = count
        plan.delete = sorted(set(docs) - set(truth))
        _set_counter(plan, data, f.COMPLETED_COUNT, len(truth))
        _set_counter(plan, data, f.TOTAL_PREDICTIONS_SUBCOLL, total)
        legacy_only = 0  # every player of the truth has its completion document now
    else:
        legacy_only = len(truth)  # the array alone holds them
    # The batch's count is completed_count + legacy_only_count: it must follow the repair,
    # or players it moved between the structures count twice (or not at all).
    if f.LEGACY_ONLY_COUNT in data or legacy_only:
        _set_counter(plan, data, f.LEGACY_ONLY_COUNT, legacy_only)
    return plan


def _set_counter(plan: _Plan, data: Mapping[str, Any], name: str, value: int) -> None:
    before = opt_int(data, name)
    if before != value or not isinstance(data.get(name), int):
        plan.counters[name] = (before, value)
        plan.batch_update[name] = value


async def _read_for_repair(
    client: AsyncClient, layout: Layout, batch_id: str, transaction: AsyncTransaction | None
) -> tuple[dict[str, Any], dict[str, int]]:
    ref = Refs(client, layout).batch(batch_id)
    data: dict[str, Any] | None = None
    async for snap in client.get_all([ref], transaction=transaction):
        if snap.exists:
            data = snap.to_dict() or {}
    if data is None:
        raise batch_not_found(batch_id, layout.collection)
    query = Refs(client, layout).completions(batch_id).select([f.PREDICTIONS_COUNT])
    docs = {
        s.id: as_int((s.to_dict() or {}).get(f.PREDICTIONS_COUNT))
        async for s in query.stream(transaction=transaction)
    }
    return data, docs


@typed_errors
async def reconcile(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_id: str,
    source: Source | None = None,
    *,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ReconcileResult:
    """Rewrite a batch's counters, array, map and completion documents from one source of truth.

    Each transaction reads the batch document and every completion document it
    rewrites, so it serialises with concurrent writers. A batch needing more
    than ``MAX_WRITES_PER_COMMIT`` completion-document writes is
    repaired in several transactions: the completion documents first, in
    chunks, then the batch document with the last chunk (between them its
    counters still lag, as they did before the repair; re-running finishes an
    interrupted repair). A consistent batch gets no write at all.

    Beware: with ``Source.SUBCOLLECTION`` a player only in the legacy array is
    removed from it. Run ``backfill`` first on batches recorded in ``LEGACY``
    mode, or use ``dry_run`` to see what would change.

    Args:
        client: The Firestore client.
        layout: Where batches live.
        mode: The writers' mode; decides which structures are rewritten (those
            the mode writes, and any other the batch has).
        batch_id: The batch.
        source: The truth; default ``Source.default_for(mode)``.
        dry_run: Compute the changes without writing.
        retry: Retry policy for each transaction.
        clock: Time source of the retries' timeouts and backoff.

    Raises:
        InvalidIdError: Bad batch id.
        InvalidInputError: ``client``, ``layout``, ``mode``, ``source``, ``retry`` or
            ``clock`` of the wrong type, or ``dry_run`` not a bool; nothing written.
        BatchNotFoundError: No such batch.
        ConfigurationError: ``Source.LEGACY`` in a mode whose batches may have no array.
        WriteFailedError: The client failed (a closed channel included).
        RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
    """
    validate_store(client, layout)
    validate_instance("mode", mode, MigrationMode)
    validate_id("batch id", batch_id)
    if source is not None:
        validate_instance("source", source, Source)
    validate_bool("dry_run", dry_run)
    validate_policy(retry, clock)
    source = Source.default_for(mode) if source is None else source
    if source is Source.LEGACY and not mode.writes_legacy:
        raise ConfigurationError(
            f"mode {mode.name} no longer writes the legacy array: it cannot be the source of truth"
        )
    if dry_run:
        data, docs = await retried(
            partial(_read_for_repair, client, layout, batch_id, None),
            retry,
            what=f"reading batch {batch_id!r} for a dry-run reconcile",
            clock=clock,
        )
        return _result(batch_id, source, [_plan(mode, source, data, docs)], 0, dry_run=True)

    async def step(transaction: AsyncTransaction, batch_id: str) -> tuple[_Plan, bool]:
        data, docs = await _read_for_repair(client, layout, batch_id, transaction)
        plan = _plan(mode, source, data, docs)
        refs = Refs(client, layout)
        completions = refs.completions(batch_id)
        final = plan.doc_writes <= MAX_WRITES_PER_COMMIT
        if not final:
            _truncate(plan)
        for player, count in plan.create.items():
            transaction.create(completions.document(player), completion_doc(player, count))
        for player, count in plan.update.items():
            transaction.update(completions.document(player), {f.PREDICTIONS_COUNT: count})
        for player in plan.delete:
            transaction.delete(completions.document(player))
        if final and plan.batch_update:
            update = dict(plan.batch_update)
            update[f.LAST_UPDATED if mode.writes_subcollection else f.UPDATED_AT] = SERVER_TIMESTAMP
            transaction.update(refs.batch(batch_id), update)
        elif not final and (f.COMPLETED_COUNT in data or mode.writes_subcollection):
            # Keep the counters' (possibly wrong) offset from the documents unchanged
            # meanwhile, so a partial repair never makes them worse.
            transaction.update(refs.batch(batch_id), _counter_delta(plan, docs))
        return plan, final

    plans: list[_Plan] = []
    while True:
        plan, final = await transact(
            client, step, batch_id, retry=retry, what=f"reconciling batch {batch_id!r}", clock=clock
        )
        plans.append(plan)
        if final:
            break
    result = _result(batch_id, source, plans, len(plans))
    if result.changed:
        logger.warning(
            "reconciled batch %r from the %s",
            batch_id,
            source.value,
            extra={
                "batch_id": batch_id,
                "source": source.value,
                "counters": dict(result.counters),
                "completions_created": len(result.completions_created),
                "completions_deleted": len(result.completions_deleted),
                "legacy_removed": len(result.legacy_removed),
            },
        )
    return result


def _truncate(plan: _Plan) -> None:
    """Keep only the first chunk of completion-document writes."""
    room = MAX_WRITES_PER_COMMIT
    plan.create = dict(list(plan.create.items())[:room])
    room -= len(plan.create)
    plan.delete = plan.delete[:room]
    room -= len(plan.delete)
    plan.update = dict(list(plan.update.items())[:room])
    plan.batch_update = {}
    plan.counters = {}
    plan.legacy_added, plan.legacy_removed, plan.legacy_counts_fixed = [], [], []


def _counter_delta(plan: _Plan, docs: Mapping[str, int]) -> dict[str, Any]:
    total = (
        sum(plan.create.values())
        - sum(docs[p] for p in plan.delete)
        + sum(count - docs[p] for p, count in plan.update.items())
    )
    return {
        f.COMPLETED_COUNT: Increment(len(plan.create) - len(plan.delete)),
        f.TOTAL_PREDICTIONS_SUBCOLL: Increment(total),
    }


def _result(
    batch_id: str,
    source: Source,
    plans: Sequence[_Plan],
    transactions: int,
    *,
    dry_run: bool = False,
) -> ReconcileResult:
    last = plans[-1]
    return ReconcileResult(
        batch_id=batch_id,
        source=source,
        counters=dict(last.counters),
        legacy_added=tuple(last.legacy_added),
        legacy_removed=tuple(last.legacy_removed),
        legacy_counts_fixed=tuple(last.legacy_counts_fixed),
        completions_created=tuple(p for plan in plans for p in plan.create),
        completions_deleted=tuple(p for plan in plans for p in plan.delete),
        completions_updated=tuple(p for plan in plans for p in plan.update),
        transactions=transactions,
        dry_run=dry_run,
    )
