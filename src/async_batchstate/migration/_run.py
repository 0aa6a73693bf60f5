"""Migration from the legacy array to the completions subcollection: backfill, verify, cleanup.

The five steps, each safe to run while completions keep arriving:

1. Deploy every writer in ``DUAL_WRITE`` (both structures, reads from the array).
2. ``backfill``: create the completion documents (and counters) of players
   recorded only in the array. Idempotent: each batch is one transaction (or
   a few, for arrays over ``CHUNK`` players) that reads the completion
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

The checkpoint (resume after interruption) is a document in
``<collection>_migration`` by default: it survives the machine running the
backfill (a restarted job on another host resumes) and needs no access beyond
the Firestore one the tool already has. ``FileCheckpoint`` is the local
alternative. Backfill walks batches in document-id order and saves the id
below which every batch is done, at most once per ``checkpoint_interval``
(the checkpoint is one document: Firestore sustains about one write per
second on it). It only saves work: correctness comes from idempotency, so a
batch redone after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import BatchStateError, ConfigurationError, InvalidInputError
from .._retry import RetryPolicy, run_with_retry
from .._store import schema as f
from .._store.refs import Refs
from .._store.schema import Layout, validate_id
from .._store.transactions import run_transactional
from .._write.finaliser import Finaliser
from ..consistency import (
    ConsistencyReport,
    validate,
)
from ..instrumentation._events import Recorder

logger = logging.getLogger("async_batchstate.migration")

T = TypeVar("T")

COMPLETIONS_BACKFILLED = f.COMPLETIONS_BACKFILLED
CHUNK = 400
"""Completion documents one backfill transaction creates (Firestore: <= 500 writes/commit)."""
_PAGE = 500
_LEGACY_FIELDS = (f.COMPLETED_PLAYERS, f.PREDICTIONS_BY_PLAYER, f.TOTAL_PREDICTIONS)


class MigrationError(BatchStateError):
    """A migration step refused to run (wrong mode, or nothing to run on)."""


@dataclass(frozen=True)
class MigrationProgress:
    """Passed to a progress callback after each batch.

    Attributes:
        batch_id: The batch just handled.
        done: Batches handled so far in this run (failures included).
        total: Batches this run will handle, when known.
        failed: Batches that failed so far.
    """

    batch_id: str
    done: int
    total: int | None
    failed: int


ProgressCallback = Callable[[MigrationProgress], None]


# -- batch iteration ---------------------------------------------------------------------


async def iter_batch_ids(
    client: AsyncClient, layout: Layout, *, start_after: str | None = None, page_size: int = _PAGE
) -> AsyncIterator[str]:
    """Every batch id in ``layout.collection`` in document-id order, after ``start_after``.

    Pages with cursors (projection on the id only) rather than one long stream,
    so a huge collection never holds one query open for minutes.
    """
    cursor = start_after
    while True:
        query = (
            client.collection(layout.collection)
            .select([FieldPath.document_id()])
            .order_by(FieldPath.document_id())
            .limit(page_size)
        )
        if cursor is not None:
            query = query.start_after({FieldPath.document_id(): cursor})
        ids = [snap.id async for snap in query.stream()]
        for batch_id in ids:
            yield batch_id
        if len(ids) < page_size:
            return
        cursor = ids[-1]


async def count_batches(client: AsyncClient, layout: Layout, start_after: str | None) -> int:
    """Batches after ``start_after`` (aggregation ``count()``: no document reads)."""
    query: Any = client.collection(layout.collection)
    if start_after is not None:
        query = query.order_by(FieldPath.document_id()).start_after(
            {FieldPath.document_id(): start_after}
        )
    rows = await query.count(alias="n").get()
    return int(rows[0][0].value) if rows else 0


def _checked_ids(batch_ids: Sequence[str] | None) -> list[str] | None:
    """``batch_ids`` without repeats, every one validated before any batch is touched.

    Raises:
        InvalidInputError: ``batch_ids`` is a single ``str`` (a sequence of its characters).
        InvalidIdError: An id Firestore cannot store.
    """
    if batch_ids is None:
        return None
    if isinstance(batch_ids, str):
        raise InvalidInputError(f"batch_ids must be a sequence of ids, not the str {batch_ids!r}")
    return [validate_id("batch id", batch_id) for batch_id in dict.fromkeys(batch_ids)]


async def _listed(batch_ids: Sequence[str]) -> AsyncIterator[str]:
    for batch_id in batch_ids:
        yield batch_id


async def for_each_batch(
    ids: AsyncIterator[str],
    work: Callable[[str], Awaitable[T]],
    *,
    concurrency: int,
    on_done: Callable[[str, T | Exception], Awaitable[None]],
) -> None:
    """Run ``work`` on every id with at most ``concurrency`` at a time.

    ``on_done`` gets each id with its result, or with the ``Exception`` its
    ``work`` raised: a failed batch never stops the others. ``CancelledError``
    and ``KeyboardInterrupt`` are not ``Exception``s: they stop the run.

    An error while listing ``ids`` or from ``on_done`` stops dispatching new
    batches; the batches already started finish (and reach ``on_done``), then
    that first error is raised as it is, not wrapped in an ``ExceptionGroup``.

    Raises:
        MigrationError: ``concurrency < 1``.
    """
    if concurrency < 1:
        raise MigrationError("concurrency must be >= 1")
    slots = asyncio.Semaphore(concurrency)
    fatal: list[Exception] = []

    async def run(batch_id: str) -> None:
        try:
            try:
                result: T | Exception = await work(batch_id)
            except Exception as exc:  # this batch's failure, reported to on_done
                result = exc
            await on_done(batch_id, result)
        except Exception as exc:
            fatal.append(exc)
        finally:
            slots.release()

    iterator = aiter(ids)
    try:
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()  # one slot per batch in flight: bounded
                if fatal:
                    break
                try:
                    batch_id = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:  # listing failed: finish what runs, then raise
                    fatal.append(exc)
                    break
                group.create_task(run(batch_id))
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    if fatal:
        raise fatal[0]


def _ids(
    client: AsyncClient,
    layout: Layout,
    batch_ids: Sequence[str] | None,
    start_after: str | None = None,
) -> AsyncIterator[str]:
    if batch_ids is not None:
        return _listed(batch_ids)
    return iter_batch_ids(client, layout, start_after=start_after)


async def _total(
    client: AsyncClient, layout: Layout, batch_ids: Sequence[str] | None, start_after: str | None
) -> int | None:
    if batch_ids is not None:
        return len(batch_ids)
    try:
        return await count_batches(client, layout, start_after)
    except Exception:  # the total only feeds a progress bar
        logger.debug("counting batches failed", exc_info=True)
        return None


_REASON_CHARS = 300


def failure_reason(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace collapsed), at most ``_REASON_CHARS`` long."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _REASON_CHARS:
        text = text[: _REASON_CHARS - 3] + "..."
    return text


class _Tally:
    """Progress counting shared by every command."""

    def __init__(self, total: int | None, progress: ProgressCallback | None) -> None:
        self.total = total
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.failures: list[tuple[str, str]] = []

    def record(self, batch_id: str, result: object) -> bool:
        """Count one batch; True if it succeeded."""
        self.done += 1
        ok = not isinstance(result, Exception)
        if isinstance(result, Exception):
            self.failed += 1
            self.failures.append((batch_id, failure_reason(result)))
            logger.warning(
                "migration step failed for batch %r: %r",
                batch_id,
                result,
                extra={"batch_id": batch_id},
            )
            # The traceback only at DEBUG: with no logging configured, WARNING
            # records reach stderr, and the command line prints no tracebacks.
            logger.debug("traceback of batch %r", batch_id, exc_info=result)
        if self.progress is not None:
            self.progress(MigrationProgress(batch_id, self.done, self.total, self.failed))
        return ok


# -- checkpoints -------------------------------------------------------------------------


class Checkpoint(Protocol):
    """Where backfill remembers how far it got."""

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None."""
        ...

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        ...


class _Resettable:
    """The reset the stock checkpoints share (a ``Checkpoint`` needs only load and save)."""

    async def reset(self: Checkpoint) -> None:
        """Forget how far backfill got: its next run starts from the first batch."""
        await self.save({"last_done": None, "finished": True})


class FirestoreCheckpoint(_Resettable):
    """A checkpoint document ``<collection>_migration/<name>`` next to the batches.

    Args:
        client: The Firestore client.
        layout: Where the batches live.
        name: Document id (one per independent backfill run).

    Raises:
        InvalidIdError: ``name``, or the checkpoint's collection id (the batches'
            plus ``_migration``), is not an id Firestore can store.
    """

    def __init__(self, client: AsyncClient, layout: Layout, name: str = "backfill") -> None:
        collection = Layout(f"{layout.collection}_migration").collection
        self._ref = client.collection(collection).document(validate_id("checkpoint name", name))

    def __repr__(self) -> str:
        return f"<FirestoreCheckpoint {self._ref.path!r}>"

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None."""
        snap = await self._ref.get()
        return (snap.to_dict() or {}) if snap.exists else None

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        await self._ref.set({**state, "saved_at": SERVER_TIMESTAMP})


class FileCheckpoint(_Resettable):
    """A local JSON checkpoint file, replaced atomically on each save.

    Args:
        path: The file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<FileCheckpoint {str(self.path)!r}>"

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None.

        Raises:
            ConfigurationError: The file is not a checkpoint (not a JSON object).
        """
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            loaded = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise ConfigurationError(
                f"checkpoint file {str(self.path)!r} is not valid JSON: {exc}"
            ) from exc
        if not isinstance(loaded, dict):
            raise ConfigurationError(
                f"checkpoint file {str(self.path)!r} holds a JSON {type(loaded).__name__}, "
                "not a checkpoint object"
            )
        return loaded

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        await asyncio.to_thread(self._write, json.dumps(dict(state), sort_keys=True))

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)


# -- backfill ----------------------------------------------------------------------------


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
        skipped: Why nothing was considered (no such batch, no legacy array), else None.
        transactions: Transactions committed.
        finalised: This run completed and finalised the batch.
    """

    batch_id: str
    created: tuple[str, ...] = ()
    predictions: int = 0
    marked: bool = False
    unknown_counts: tuple[str, ...] = ()
    skipped: str | None = None
    transactions: int = 0
    finalised: bool = False


@dataclass(frozen=True)
class _Step:
    created: tuple[str, ...]
    predictions: int
    final: bool
    marked: bool
    unknown: tuple[str, ...]
    skipped: str | None


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
    fields = [f.COMPLETED_PLAYERS, f.PREDICTIONS_BY_PLAYER, COMPLETIONS_BACKFILLED]
    async for snap in client.get_all([ref], field_paths=fields, transaction=transaction):
        if snap.exists:
            data = snap.to_dict() or {}
    if data is None:
        return _Step((), 0, True, False, (), "no such batch")
    array = data.get(f.COMPLETED_PLAYERS)
    if not isinstance(array, list):
        return _Step((), 0, True, False, (), "no legacy array")
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
    mark = final and not unknown and data.get(COMPLETIONS_BACKFILLED) is not True
    if transaction is not None:
        for player, count in chunk.items():
            transaction.create(
                completions.document(player),
                {
                    f.PLAYER_LOOKUP: player,
                    f.PREDICTIONS_COUNT: count,
                    f.COMPLETED_AT: SERVER_TIMESTAMP,
                },
            )
        update: dict[str, Any] = {}
        if chunk:
            # The legacy total already counts these players: only the subcollection's grow.
            update[f.COMPLETED_COUNT] = Increment(len(chunk))
            update[f.TOTAL_PREDICTIONS_SUBCOLL] = Increment(sum(chunk.values()))
            update[f.LAST_UPDATED] = SERVER_TIMESTAMP
            # They are no longer only in the array: the union count stays the same.
            update[f.LEGACY_ONLY_COUNT] = Increment(-len(chunk))
        if mark:
            update[COMPLETIONS_BACKFILLED] = True
            update[f.LEGACY_ONLY_COUNT] = 0  # every array player has a document now
        if update:
            transaction.update(ref, update)
    return _Step(tuple(chunk), sum(chunk.values()), final, mark, tuple(unknown), None)


async def _retrying(
    call: Callable[[], Awaitable[Any]], policy: RetryPolicy | None, what: str, clock: Clock
) -> Any:
    result, _ = await run_with_retry(call, policy or RetryPolicy(), what=what, clock=clock)
    return result


async def backfill_batch(
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
    transaction, and ``ceil(n / CHUNK)`` transactions at worst), creates
    up to ``CHUNK`` missing documents (count from ``predictions_by_player``)
    and increments ``completed_count`` and ``total_predictions_subcoll`` by what
    it created; the one that finds nothing left also sets
    ``completions_backfilled``. Running it again creates nothing. ``clock``
    times the retries (the real clock by default).
    """
    validate_id("batch id", batch_id)
    if dry_run:
        step = await _backfill_step(None, client, layout, batch_id, None)
        return BatchBackfill(
            batch_id, step.created, step.predictions, step.marked, step.unknown, step.skipped
        )
    policy = retry or RetryPolicy()
    created: list[str] = []
    predictions = 0
    transactions = 0
    while True:

        async def attempt() -> _Step:
            transaction = client.transaction(max_attempts=1)
            done: _Step = await run_transactional(
                _backfill_step, transaction, client, layout, batch_id, CHUNK
            )
            return done

        step, _ = await run_with_retry(
            attempt, policy, what=f"backfilling batch {batch_id!r}", clock=clock
        )
        transactions += 1
        created += step.created
        predictions += step.predictions
        if step.final:
            return BatchBackfill(
                batch_id,
                tuple(created),
                predictions,
                step.marked,
                step.unknown,
                step.skipped,
                transactions,
            )


@dataclass(frozen=True)
class BackfillSummary:
    """The outcome of a backfill run.

    Attributes:
        batches: Batches handled in this run.
        changed: Batches that got completion documents or the backfilled mark.
        completions_created: Completion documents created.
        predictions_backfilled: Sum of their counts.
        unknown_counts: ``(batch_id, player)`` left alone for lack of a count.
        failures: ``(batch_id, reason)`` of batches that failed, the reason on one
            line; the run went on with the others (re-run to retry them).
        resumed_after: The checkpoint's batch id this run started after, if any.
        dry_run: Nothing was written.
        finalised: Batches this run completed and finalised (their ``on_complete``
            is owed to the next coordinator that touches them).
    """

    batches: int
    changed: int
    completions_created: int
    predictions_backfilled: int
    unknown_counts: tuple[tuple[str, str], ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    resumed_after: str | None = None
    dry_run: bool = False
    finalised: int = 0

    @property
    def ok(self) -> bool:
        """No batch failed and no count was missing."""
        return not self.failures and not self.unknown_counts


async def backfill(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    concurrency: int = 8,
    checkpoint: Checkpoint | None = None,
    checkpoint_interval: float = 1.0,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> BackfillSummary:
    """Backfill every batch with a legacy array (or only ``batch_ids``).

    Args:
        client: The Firestore client.
        layout: Where the batches live.
        mode: The mode every writer runs in now. ``LEGACY`` is refused: writers
            that do not create completion documents would undo the backfill.
        batch_ids: Only these batches (the checkpoint is then not used).
        dry_run: Report what would be created; write nothing (no checkpoint either).
        concurrency: Batches in flight at once.
        checkpoint: Where to resume from and save progress; None: always from the start.
            A finished run's checkpoint makes the next run start over (cheap:
            backfilled batches need no write).
        checkpoint_interval: Least seconds between checkpoint saves. A save that
            fails is logged and the run goes on (the checkpoint only saves work).
        progress: Called after each batch.
        retry: Retry policy of each transaction.
        clock: Time source of the retries and ``checkpoint_interval``.

    A batch that fails (after ``retry`` gave up) is listed in the summary's
    ``failures`` and the run goes on with the others.

    Raises:
        MigrationError: ``mode`` is ``LEGACY`` or ``concurrency < 1``.
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
    """
    batch_ids = _checked_ids(batch_ids)
    if not mode.writes_subcollection:
        raise MigrationError(
            "backfill needs every writer in a mode that writes the subcollection (DUAL_WRITE "
            "first): a LEGACY writer records players without completion documents"
        )
    use_checkpoint = checkpoint is not None and batch_ids is None and not dry_run
    start_after: str | None = None
    if use_checkpoint and checkpoint is not None:
        state = await checkpoint.load()
        if state and not state.get("finished"):
            start_after = state.get("last_done")
    tally = _Tally(await _total(client, layout, batch_ids, start_after), progress)
    changed = created = predictions = finalised = 0
    unknown: list[tuple[str, str]] = []
    dispatched: deque[str] = deque()
    finished_ids: set[str] = set()
    watermark = start_after
    saved = watermark
    last_save = clock.monotonic()
    save_lock = asyncio.Lock()

    async def save(*, finished: bool = False) -> None:
        nonlocal saved, last_save
        if not use_checkpoint or checkpoint is None:
            return
        async with save_lock:
            if not finished and watermark == saved:
                return
            try:
                await checkpoint.save(
                    {"last_done": watermark, "finished": finished, "mode": mode.value}
                )
            except Exception:
                # Only work is lost: a later save, or the next run, covers it.
                logger.warning(
                    "saving the backfill checkpoint failed; the run goes on",
                    exc_info=True,
                    extra={"checkpoint": repr(checkpoint), "last_done": watermark},
                )
                last_save = clock.monotonic()  # try again after an interval, not per batch
                return
            saved, last_save = watermark, clock.monotonic()

    async def tracked() -> AsyncIterator[str]:
        async for batch_id in _ids(client, layout, batch_ids, start_after):
            dispatched.append(batch_id)
            yield batch_id

    finaliser = Finaliser(
        client,
        Refs(client, layout),
        mode,
        retrying=lambda call, what: _retrying(call, retry, what, clock),
        recorder=Recorder(()),  # no callbacks: the batches it finishes owe theirs
        clock=clock,
    )

    async def work(batch_id: str) -> BatchBackfill:
        done = await backfill_batch(
            client, layout, batch_id, dry_run=dry_run, retry=retry, clock=clock
        )
        if dry_run or done.skipped is not None:
            return done
        # A batch recorded partly by LEGACY writers may be complete only now (as a
        # subcollection-reading mode counts): finalise it; its callback is owed.
        flipped, _ = await finaliser.flip(batch_id)
        return dataclasses.replace(done, finalised=flipped is not None)

    async def on_done(batch_id: str, result: BatchBackfill | Exception) -> None:
        nonlocal changed, created, predictions, watermark, finalised
        if tally.record(batch_id, result) and isinstance(result, BatchBackfill):
            finished_ids.add(batch_id)
            finalised += result.finalised
            if result.created or result.marked:
                changed += 1
            created += len(result.created)
            predictions += result.predictions
            unknown.extend((batch_id, p) for p in result.unknown_counts)
        # Advance past the longest prefix of dispatched batches that all succeeded.
        while dispatched and dispatched[0] in finished_ids:
            watermark = dispatched.popleft()
            finished_ids.discard(watermark)
        if clock.monotonic() - last_save >= checkpoint_interval:
            await save()

    await for_each_batch(tracked(), work, concurrency=concurrency, on_done=on_done)
    if tally.failures:
        await save()
    else:
        await save(finished=True)
    summary = BackfillSummary(
        batches=tally.done,
        changed=changed,
        completions_created=created,
        predictions_backfilled=predictions,
        unknown_counts=tuple(unknown),
        failures=tuple(tally.failures),
        resumed_after=start_after,
        dry_run=dry_run,
        finalised=finalised,
    )
    logger.info(
        "backfill %s: %d batches, %d changed, %d completion docs",
        "dry run" if dry_run else "done",
        summary.batches,
        summary.changed,
        summary.completions_created,
        extra={"batches": summary.batches, "completions_created": created},
    )
    return summary


# -- verify, status ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifySummary:
    """The outcome of validating many batches.

    Attributes:
        checked: Batches validated.
        inconsistent: Reports of the batches that broke a rule, by batch id.
        failures: ``(batch_id, reason)`` of batches that could not be validated,
            the reason on one line; the run went on with the others.
    """

    checked: int
    inconsistent: tuple[ConsistencyReport, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """Every batch was validated and is consistent."""
        return not self.inconsistent and not self.failures


async def _validate_all(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_ids: Sequence[str] | None,
    concurrency: int,
    progress: ProgressCallback | None,
    retry: RetryPolicy | None,
    sink: Callable[[ConsistencyReport], None],
    clock: Clock,
) -> _Tally:
    batch_ids = _checked_ids(batch_ids)
    tally = _Tally(await _total(client, layout, batch_ids, None), progress)

    async def work(batch_id: str) -> ConsistencyReport:
        return await validate(client, layout, mode, batch_id, retry=retry, clock=clock)

    async def on_done(batch_id: str, result: ConsistencyReport | Exception) -> None:
        if tally.record(batch_id, result) and isinstance(result, ConsistencyReport):
            sink(result)

    await for_each_batch(
        _ids(client, layout, batch_ids), work, concurrency=concurrency, on_done=on_done
    )
    return tally


async def verify(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> VerifySummary:
    """Validate every batch (or ``batch_ids``) under ``mode``'s rules.

    A batch that cannot be validated (missing, or still failing after
    ``retry`` gave up) is listed in ``failures`` and the run goes on. ``clock``
    times the retries (the real clock by default).

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
    """
    bad: list[ConsistencyReport] = []

    def sink(report: ConsistencyReport) -> None:
        if not report.is_consistent:
            bad.append(report)

    tally = await _validate_all(
        client, layout, mode, batch_ids, concurrency, progress, retry, sink, clock
    )
    bad.sort(key=lambda r: r.batch_id)
    return VerifySummary(tally.done - tally.failed, tuple(bad), tuple(sorted(tally.failures)))


class BatchState(enum.Enum):
    """Where a batch is in the migration."""

    LEGACY_ONLY = "legacy_only"
    """Only legacy fields (consistent among themselves): backfill has work to do."""
    DUAL = "dual"
    """Both structures, consistent under the mode's rules."""
    SUBCOLLECTION_ONLY = "subcollection_only"
    """No legacy fields left, subcollection consistent."""
    INCONSISTENT = "inconsistent"
    """A rule is broken (see ``verify``)."""


def classify(report: ConsistencyReport) -> BatchState:
    """The migration state of the batch ``report`` describes.

    A batch with legacy fields only is judged by the legacy structure alone:
    missing completion documents are backfill's job, not an inconsistency.
    """
    if report.has_legacy and not report.has_subcollection:
        if report.legacy_self_consistent:
            return BatchState.LEGACY_ONLY
        return BatchState.INCONSISTENT
    if not report.is_consistent:
        return BatchState.INCONSISTENT
    return BatchState.DUAL if report.has_legacy else BatchState.SUBCOLLECTION_ONLY


@dataclass(frozen=True)
class StatusSummary:
    """Batches per migration state.

    Attributes:
        counts: Batches in each state (every state present, maybe 0).
        failures: ``(batch_id, reason)`` of batches that could not be read (not in
            ``counts``), the reason on one line; the run went on with the others.
    """

    counts: Mapping[BatchState, int]
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def total(self) -> int:
        """Batches classified."""
        return sum(self.counts.values())


async def status(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> StatusSummary:
    """Count batches per ``BatchState`` (consistency judged under ``mode``'s rules).

    A batch that cannot be read is listed in ``failures`` (not counted) and the
    run goes on. ``clock`` times the retries (the real clock by default).

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
    """
    counts = dict.fromkeys(BatchState, 0)

    def sink(report: ConsistencyReport) -> None:
        counts[classify(report)] += 1

    tally = await _validate_all(
        client, layout, mode, batch_ids, concurrency, progress, retry, sink, clock
    )
    return StatusSummary(counts, tuple(sorted(tally.failures)))


# -- cleanup -----------------------------------------------------------------------------


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

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
    """
    batch_ids = _checked_ids(batch_ids)
    if mode is not MigrationMode.SUBCOLLECTION_ONLY:
        reason = (
            f"writers run in {mode.name}, which still uses the legacy array; deploy "
            "SUBCOLLECTION_ONLY everywhere first"
        )
        return CleanupSummary(True, (("*", reason),), dry_run=dry_run)
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
        return CleanupSummary(True, tuple(reasons), dry_run=dry_run)

    tally = _Tally(await _total(client, layout, batch_ids, None), progress)
    cleaned: list[str] = []
    skipped: list[tuple[str, str]] = []
    policy = retry or RetryPolicy()

    async def remove(transaction: AsyncTransaction, batch_id: str) -> tuple[bool, str]:
        # Re-check in the transaction what removal could lose: an array player
        # without a completion document (a straggling LEGACY writer since verify).
        ref = Refs(client, layout).batch(batch_id)
        data: dict[str, Any] = {}
        async for snap in client.get_all(
            [ref], field_paths=list(_LEGACY_FIELDS), transaction=transaction
        ):
            data = (snap.to_dict() or {}) if snap.exists else {}
        if not any(name in data for name in _LEGACY_FIELDS):
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
            transaction.update(ref, dict.fromkeys(_LEGACY_FIELDS, DELETE_FIELD))
        return True, ""

    async def work(batch_id: str) -> tuple[bool, str]:
        async def attempt() -> tuple[bool, str]:
            transaction = client.transaction(max_attempts=1, read_only=dry_run)
            outcome: tuple[bool, str] = await run_transactional(remove, transaction, batch_id)
            return outcome

        outcome, _ = await run_with_retry(
            attempt, policy, what=f"removing legacy fields of {batch_id!r}", clock=clock
        )
        return outcome

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
        False,
        (),
        tuple(sorted(cleaned)),
        tuple(sorted(skipped)),
        dry_run,
        tuple(sorted(tally.failures)),
    )
