"""Consistency of the legacy array with the completions subcollection: validate, alert, repair.

``validate`` reads one consistent snapshot of a batch (a read-only transaction,
so a write committing in between cannot produce a false mismatch): the batch
document, ``count()`` and ``sum()`` aggregations over the completion documents
(one read per 1,000 index entries instead of one per document) and, only when
both structures exist, the completion ids through a projection, to name the
players present in one structure and not the other.

``reconcile`` rewrites the batch from one source of truth in a read-write
transaction that reads everything it overwrites, so it serialises with
concurrent ``record_completion`` transactions instead of racing them.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from google.cloud.firestore_v1 import SERVER_TIMESTAMP, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import BatchNotFoundError, ConfigurationError
from .._retry import RetryPolicy, run_with_retry
from .._store import schema as f
from .._store.refs import Refs
from .._store.schema import Layout, validate_id
from .._store.transactions import run_transactional

logger = logging.getLogger("async_batchstate.consistency")

MISMATCH_PREFIX = "CONSISTENCY MISMATCH"
MAX_DOC_WRITES_PER_TRANSACTION = 400
"""Completion-document writes per reconcile transaction.

Firestore has long capped a commit at 500 writes; 400 plus the batch document
leaves headroom and stays far below the 10 MiB request limit with 1,500-byte ids.
"""
_LOGGED_PLAYERS = 20
_LEGACY_FIELDS = (f.COMPLETED_PLAYERS, f.PREDICTIONS_BY_PLAYER, f.TOTAL_PREDICTIONS)


def as_int(value: object) -> int:
    """A stored count as an ``int``; anything that is not a number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


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
class ConsistencyReport:
    """One consistent snapshot of a batch's structures, compared under ``mode``'s rules.

    Fields are None when the batch document does not have them. The rules:
    each structure that exists must agree with itself (array with map and
    ``total_predictions``; ``completed_count`` and ``total_predictions_subcoll``
    with the completion documents); a mode that writes the subcollection needs
    every legacy player to have a completion document (else: run backfill); a
    mode that writes the array needs every completion in the array; a mode that
    writes both needs equal totals.

    Attributes:
        batch_id: The batch.
        mode: The mode whose rules were applied.
        legacy_array_length: Length of ``completed_players``.
        legacy_map_length: Entries of ``predictions_by_player``.
        legacy_map_total: Sum of ``predictions_by_player``'s values.
        total_predictions: The legacy total.
        completed_count: The subcollection counter.
        total_predictions_subcoll: The subcollection total.
        completion_docs: Completion documents (aggregation ``count()``).
        completion_predictions_sum: Sum of their ``predictions_count`` (aggregation ``sum()``).
        players_only_in_array: Sorted players in the array without a completion document.
        players_only_in_subcollection: Sorted players with a completion document, not in the
            array (only computed when the batch has legacy fields).
        problems: Human-readable reasons the batch is inconsistent; empty if consistent.
    """

    batch_id: str
    mode: MigrationMode
    legacy_array_length: int | None
    legacy_map_length: int | None
    legacy_map_total: int | None
    total_predictions: int | None
    completed_count: int | None
    total_predictions_subcoll: int | None
    completion_docs: int
    completion_predictions_sum: int
    players_only_in_array: tuple[str, ...] = ()
    players_only_in_subcollection: tuple[str, ...] = ()
    legacy_duplicates: int = 0
    legacy_map_mismatch: int = 0
    problems: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "problems", tuple(_problems(self)))

    @property
    def is_consistent(self) -> bool:
        """Whether no rule of ``mode`` is broken."""
        return not self.problems

    @property
    def has_legacy(self) -> bool:
        """Whether the batch document has any legacy field."""
        return any(
            v is not None
            for v in (self.legacy_array_length, self.legacy_map_length, self.total_predictions)
        )

    @property
    def has_subcollection(self) -> bool:
        """Whether the batch has subcollection counters or completion documents."""
        return (
            self.completed_count is not None
            or self.total_predictions_subcoll is not None
            or self.completion_docs > 0
        )

    @property
    def legacy_self_consistent(self) -> bool:
        """Whether the array, the map and ``total_predictions`` agree (True if absent)."""
        return not (
            self.legacy_map_mismatch
            or self.legacy_duplicates
            or (self.total_predictions or 0) != (self.legacy_map_total or 0)
        )

    @property
    def awaiting_backfill(self) -> bool:
        """Only a self-consistent legacy structure exists: backfill's work, not a fault."""
        return self.has_legacy and not self.has_subcollection and self.legacy_self_consistent

    def summary(self) -> str:
        """One line: the numbers compared, then the problems if any."""
        numbers = (
            f"array={self.legacy_array_length} completed_count={self.completed_count} "
            f"docs={self.completion_docs} total_predictions={self.total_predictions} "
            f"total_predictions_subcoll={self.total_predictions_subcoll} "
            f"docs_sum={self.completion_predictions_sum}"
        )
        return f"{numbers}: {'; '.join(self.problems)}" if self.problems else numbers

    def log_fields(self) -> dict[str, Any]:
        """The report as flat ``extra=`` fields for a log record (player lists capped)."""
        data = asdict(self)
        data["mode"] = self.mode.value
        for name in ("players_only_in_array", "players_only_in_subcollection"):
            data[name] = list(data[name][:_LOGGED_PLAYERS])
        data["problems"] = list(self.problems)
        data["is_consistent"] = self.is_consistent
        return data


def _problems(r: ConsistencyReport) -> Iterable[str]:
    mode = r.mode
    if r.has_legacy:
        if r.legacy_map_mismatch:
            yield (
                f"completed_players and predictions_by_player disagree on "
                f"{r.legacy_map_mismatch} player(s)"
            )
        if r.legacy_duplicates:
            yield f"completed_players holds {r.legacy_duplicates} duplicate entr(ies)"
        if (r.total_predictions or 0) != (r.legacy_map_total or 0):
            yield (
                f"total_predictions={r.total_predictions} but predictions_by_player sums "
                f"to {r.legacy_map_total}"
            )
    elif mode.writes_legacy and r.has_subcollection:
        yield f"mode {mode.name} writes the legacy array but the batch has no legacy fields"
    if r.has_subcollection:
        if (r.completed_count or 0) != r.completion_docs:
            yield f"completed_count={r.completed_count} but {r.completion_docs} completion doc(s)"
        if (r.total_predictions_subcoll or 0) != r.completion_predictions_sum:
            yield (
                f"total_predictions_subcoll={r.total_predictions_subcoll} but completion docs "
                f"sum to {r.completion_predictions_sum}"
            )
    if mode.writes_subcollection and r.players_only_in_array:
        yield (
            f"{len(r.players_only_in_array)} player(s) only in the legacy array (not backfilled?)"
        )
    if mode.writes_legacy and r.players_only_in_subcollection:
        yield f"{len(r.players_only_in_subcollection)} player(s) only in the subcollection"
    if (
        mode.writes_legacy
        and mode.writes_subcollection
        and r.has_legacy
        and (r.total_predictions or 0) != (r.total_predictions_subcoll or 0)
    ):
        yield (
            f"total_predictions={r.total_predictions} but "
            f"total_predictions_subcoll={r.total_predictions_subcoll}"
        )


def _opt_int(data: Mapping[str, Any], name: str) -> int | None:
    return as_int(data[name]) if name in data else None


def build_report(
    batch_id: str,
    mode: MigrationMode,
    data: Mapping[str, Any],
    completion_docs: int,
    completion_sum: int,
    completion_ids: set[str] | None,
) -> ConsistencyReport:
    """Compare a batch document with its completion documents (no I/O).

    Args:
        batch_id: The batch.
        mode: Whose rules apply.
        data: The batch document's fields.
        completion_docs: Number of completion documents.
        completion_sum: Sum of their ``predictions_count``.
        completion_ids: Their ids; None when not read (no legacy array to compare with).
    """
    raw_array = data.get(f.COMPLETED_PLAYERS)
    array = list(raw_array) if isinstance(raw_array, list) else None
    raw_map = data.get(f.PREDICTIONS_BY_PLAYER)
    legacy_map = dict(raw_map) if isinstance(raw_map, dict) else None
    players = set(array or ())
    ids = completion_ids or set()
    return ConsistencyReport(
        batch_id=batch_id,
        mode=mode,
        legacy_array_length=None if array is None else len(array),
        legacy_map_length=None if legacy_map is None else len(legacy_map),
        legacy_map_total=None
        if legacy_map is None
        else sum(as_int(v) for v in legacy_map.values()),
        total_predictions=_opt_int(data, f.TOTAL_PREDICTIONS),
        completed_count=_opt_int(data, f.COMPLETED_COUNT),
        total_predictions_subcoll=_opt_int(data, f.TOTAL_PREDICTIONS_SUBCOLL),
        completion_docs=completion_docs,
        completion_predictions_sum=completion_sum,
        players_only_in_array=tuple(sorted(players - ids)),
        players_only_in_subcollection=()
        if completion_ids is None
        else tuple(sorted(completion_ids - players)),
        legacy_duplicates=0 if array is None else len(array) - len(players),
        legacy_map_mismatch=0
        if array is None and legacy_map is None
        else len(players.symmetric_difference(legacy_map or {})),
    )


async def read_report(
    transaction: AsyncTransaction | None,
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_id: str,
) -> ConsistencyReport:
    """Read one batch's report inside ``transaction`` (or without one, when None).

    Raises:
        BatchNotFoundError: No such batch.
    """
    snap = (
        await Refs(client, layout)
        .batch(batch_id)
        .get(
            field_paths=[*_LEGACY_FIELDS, f.COMPLETED_COUNT, f.TOTAL_PREDICTIONS_SUBCOLL],
            transaction=transaction,
        )
    )
    if not snap.exists:
        raise BatchNotFoundError(f"batch {batch_id!r} does not exist in {layout.collection!r}")
    data = snap.to_dict() or {}
    completions: Any = Refs(client, layout).completions(batch_id)  # count() is untyped
    aggregation = completions.count(alias="docs").sum(f.PREDICTIONS_COUNT, alias="total")
    values: dict[str, int] = {}
    for row in await aggregation.get(transaction=transaction):
        for result in row:
            values[result.alias] = as_int(result.value)  # empty sets come back as 0.0
    docs = values.get("docs", 0)
    has_legacy = any(name in data for name in _LEGACY_FIELDS)
    ids: set[str] | None = None
    if has_legacy:
        ids = set()
        if docs:  # ids only when there is an array to compare them with
            query = completions.select([FieldPath.document_id()])
            ids = {s.id async for s in query.stream(transaction=transaction)}
    return build_report(batch_id, mode, data, docs, values.get("total", 0), ids)


async def validate(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_id: str,
    *,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ConsistencyReport:
    """Compare a batch's legacy array with its completions subcollection.

    Reads one snapshot (a read-only transaction takes no locks, so it never
    slows writers down).

    Args:
        client: The Firestore client.
        layout: Where batches live.
        mode: The mode whose rules apply (the mode the writers run in).
        batch_id: The batch.
        retry: Retry policy for the reads.
        clock: Time source of the retries' timeouts and backoff.

    Raises:
        InvalidIdError: Bad batch id.
        BatchNotFoundError: No such batch.
    """
    validate_id("batch id", batch_id)

    async def attempt() -> ConsistencyReport:
        transaction = client.transaction(max_attempts=1, read_only=True)
        report: ConsistencyReport = await run_transactional(
            read_report, transaction, client, layout, mode, batch_id
        )
        return report

    report, _ = await run_with_retry(
        attempt, retry or RetryPolicy(), what=f"validating batch {batch_id!r}", clock=clock
    )
    return report


# -- repair ------------------------------------------------------------------------------


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
    has_legacy = any(name in data for name in _LEGACY_FIELDS)
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
    return plan


def _set_counter(plan: _Plan, data: Mapping[str, Any], name: str, value: int) -> None:
    before = _opt_int(data, name)
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
        raise BatchNotFoundError(f"batch {batch_id!r} does not exist in {layout.collection!r}")
    query = Refs(client, layout).completions(batch_id).select([f.PREDICTIONS_COUNT])
    docs = {
        s.id: as_int((s.to_dict() or {}).get(f.PREDICTIONS_COUNT))
        async for s in query.stream(transaction=transaction)
    }
    return data, docs


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
    than ``MAX_DOC_WRITES_PER_TRANSACTION`` completion-document writes is
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
        BatchNotFoundError: No such batch.
        ConfigurationError: ``Source.LEGACY`` in a mode whose batches may have no array.
    """
    validate_id("batch id", batch_id)
    source = Source.default_for(mode) if source is None else source
    if source is Source.LEGACY and not mode.writes_legacy:
        raise ConfigurationError(
            f"mode {mode.name} no longer writes the legacy array: it cannot be the source of truth"
        )
    policy = retry or RetryPolicy()
    if dry_run:
        (data, docs), _ = await run_with_retry(
            partial(_read_for_repair, client, layout, batch_id, None),
            policy,
            what=f"reading batch {batch_id!r} for a dry-run reconcile",
            clock=clock,
        )
        return _result(batch_id, source, [_plan(mode, source, data, docs)], 0, dry_run=True)

    async def step(transaction: AsyncTransaction) -> tuple[_Plan, bool]:
        data, docs = await _read_for_repair(client, layout, batch_id, transaction)
        plan = _plan(mode, source, data, docs)
        refs = Refs(client, layout)
        completions = refs.completions(batch_id)
        final = plan.doc_writes <= MAX_DOC_WRITES_PER_TRANSACTION
        if not final:
            _truncate(plan)
        for player, count in plan.create.items():
            transaction.create(completions.document(player), _completion(player, count))
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

        async def attempt() -> tuple[_Plan, bool]:
            transaction = client.transaction(max_attempts=1)
            outcome: tuple[_Plan, bool] = await run_transactional(step, transaction)
            return outcome

        (plan, final), _ = await run_with_retry(
            attempt, policy, what=f"reconciling batch {batch_id!r}", clock=clock
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


def _completion(player: str, count: int) -> dict[str, Any]:
    return {f.PLAYER_LOOKUP: player, f.PREDICTIONS_COUNT: count, f.COMPLETED_AT: SERVER_TIMESTAMP}


def _truncate(plan: _Plan) -> None:
    """Keep only the first chunk of completion-document writes."""
    room = MAX_DOC_WRITES_PER_TRANSACTION
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


# -- sampled validation and alerts -------------------------------------------------------


class AlertHook(Protocol):
    """Called with the report of every mismatch found by sampled validation.

    Sync or async; exceptions are logged and ignored.
    """

    def __call__(self, report: ConsistencyReport, /) -> Awaitable[None] | None:
        """Handle one mismatch."""
        ...


async def run_alert_hooks(hooks: Iterable[AlertHook], report: ConsistencyReport) -> None:
    """Call every hook with ``report``; a hook's failure never reaches the caller."""
    for hook in hooks:
        try:
            maybe = hook(report)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:
            logger.exception(
                "alert hook %r failed for batch %r",
                hook,
                report.batch_id,
                extra={"batch_id": report.batch_id},
            )


def log_mismatch(report: ConsistencyReport) -> None:
    """Log ONE ``CONSISTENCY MISMATCH`` record with the report in ``extra=`` fields."""
    logger.error(
        "%s in batch %r (mode %s): %s",
        MISMATCH_PREFIX,
        report.batch_id,
        report.mode.name,
        "; ".join(report.problems),
        extra=report.log_fields(),
    )


class SampledValidator:
    """Validates a random sample of batches in the background after their completions.

    A batch with only legacy fields (recorded before the dual-write rollout,
    not yet backfilled) is not reported: that is the backfill's work.

    ``maybe_validate`` never blocks, never raises and never delays the caller:
    a sampled validation runs in a task this object owns, at most one per batch
    at a time, at most one per batch per ``min_interval`` seconds (a hot batch
    commits small groups many times a second, in many processes; each
    validation aggregates its whole subcollection), and at most
    ``max_outstanding`` in all (beyond that, samples are dropped: validation is a
    monitor, not a queue). ``aclose`` awaits them.

    Args:
        client: The Firestore client.
        layout: Where batches live.
        mode: The writers' mode (whose rules apply).
        rate: Probability in ``[0, 1]`` that a call schedules a validation.
        rng: Random source for the sampling (inject a seeded one in tests).
        alert_hooks: Called with the report of each mismatch.
        retry: Retry policy for the validation reads.
        max_outstanding: Most validations in flight.
        min_interval: Least seconds between two validations of one batch here.
        clock: Time source for ``min_interval`` and the validations' retries.

    Raises:
        ConfigurationError: ``rate`` outside ``[0, 1]``, ``max_outstanding < 1`` or
            a negative ``min_interval``.
    """

    def __init__(
        self,
        client: AsyncClient,
        layout: Layout,
        mode: MigrationMode,
        *,
        rate: float = 0.1,
        rng: random.Random | None = None,
        alert_hooks: Iterable[AlertHook] = (),
        retry: RetryPolicy | None = None,
        max_outstanding: int = 64,
        min_interval: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not min_interval >= 0.0:
            raise ConfigurationError(f"validation interval must be >= 0 s, got {min_interval}")
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"validation rate must be in [0, 1], got {rate}")
        if max_outstanding < 1:
            raise ConfigurationError("max_outstanding must be >= 1")
        self._client = client
        self._layout = layout
        self._mode = mode
        self.rate = rate
        self._rng = rng or random.Random()
        self._hooks = tuple(alert_hooks)
        self._retry = retry or RetryPolicy(max_attempts=5, deadline=30.0)
        self._max = max_outstanding
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._interval = min_interval
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        """When each recently validated batch was last scheduled (bounded)."""
        self._closed = False
        self.validated = 0
        self.mismatches = 0

    def __repr__(self) -> str:
        return (
            f"<SampledValidator rate={self.rate} outstanding={len(self._tasks)} "
            f"validated={self.validated} mismatches={self.mismatches}"
            f"{' closed' if self._closed else ''}>"
        )

    def maybe_validate(self, batch_id: str) -> bool:
        """With probability ``rate``, start a background validation of ``batch_id``.

        Returns:
            Whether a validation was scheduled.
        """
        if self._closed or self.rate <= 0.0 or self._rng.random() >= self.rate:
            return False
        if batch_id in self._tasks or len(self._tasks) >= self._max:
            return False
        now = self._clock.monotonic()
        last = self._last.get(batch_id)
        if last is not None and now - last < self._interval:
            return False
        try:
            task = asyncio.get_running_loop().create_task(self._run(batch_id))
        except RuntimeError:  # no running loop: nothing to schedule on
            return False
        self._tasks[batch_id] = task
        self._last[batch_id] = now
        self._last.move_to_end(batch_id)
        if len(self._last) > 10_000:
            self._last.popitem(last=False)
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))
        return True

    async def check(self, batch_id: str) -> ConsistencyReport:
        """Validate ``batch_id`` now; on a mismatch log it and call the alert hooks.

        Raises:
            BatchNotFoundError: No such batch.
        """
        report = await validate(
            self._client, self._layout, self._mode, batch_id, retry=self._retry, clock=self._clock
        )
        self.validated += 1
        if report.awaiting_backfill:
            # A batch recorded before the dual-write rollout: expected until backfill.
            logger.debug("batch %r awaits backfill", batch_id, extra={"batch_id": batch_id})
        elif not report.is_consistent:
            self.mismatches += 1
            log_mismatch(report)
            await run_alert_hooks(self._hooks, report)
        return report

    async def _run(self, batch_id: str) -> None:
        try:
            await self.check(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a monitor must not crash anything; say so and move on
            logger.warning(
                "sampled validation of batch %r failed",
                batch_id,
                exc_info=True,
                extra={"batch_id": batch_id},
            )

    async def wait_idle(self) -> None:
        """Wait until no validation is in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop sampling and wait for the validations in flight."""
        self._closed = True
        await self.wait_idle()
