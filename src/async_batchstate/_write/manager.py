"""``AsyncBatchStateManager``: a facade over the batch store, group runner and finalizer."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any, Self

from google.cloud.firestore_v1.async_client import AsyncClient

from .._clock import SYSTEM_CLOCK, Clock, wait_event
from .._config import MigrationMode
from .._errors import (
    CompletionTimeoutError,
    ConfigurationError,
    InvalidInputError,
    ManagerClosedError,
)
from .._retry import RetryPolicy, run_with_retry
from .._store import names as f
from .._store.batch_info import MAX_PER_COMPLETION
from .._store.batches import BatchReader, create_batch
from .._store.decode import progress_from
from .._store.ids import (
    Layout,
    validate_aware,
    validate_bool,
    validate_callable,
    validate_callables,
    validate_clock,
    validate_count,
    validate_id,
    validate_instance,
    validate_player,
    validate_seconds,
    validate_text,
)
from .._store.new_batch import LegacyLimits, new_batch
from .._store.refs import Refs
from .._store.roster import BatchInfoCache
from .._types import BatchProgress, CompletionResult
from ..consistency import (
    AlertHook,
    ConsistencyReport,
    ReconcileResult,
    Source,
    reconcile,
    validate,
)
from ..consistency._sampled import SampledValidator
from ..instrumentation._events import CompletionFinished, Hook, Recorder, Stats
from .boundary import typed_errors, typed_iteration
from .callbacks import OnComplete
from .finalizer import Finalizer
from .group import FaultInjector, PlayerCompletion, SettingsNeeded, WritePath, new_write_id
from .limits import in_flight_bound, make_rate_limiter
from .retention import parse_retention
from .runner import MAX_GROUP_SIZE, GroupRunner
from .writer import GroupWriter

_STATUSES = frozenset({f.STATUS_IN_PROGRESS, f.STATUS_COMPLETE, f.STATUS_EXPIRED})
_MAX_PAGE = 2**31 - 1
"""A query's limit is a 32-bit int on the wire."""


class AsyncBatchStateManager:
    """Records worker completions of batches in Firestore: atomic, idempotent, concurrent.

    Use it as an async context manager; leaving the block drains writes in flight:

        async with AsyncBatchStateManager(client, collection="prediction_batches") as manager:
            await manager.create_batch("b1", expected_players=["p1", "p2"])
            result = await manager.record_completion("b1", "p1", predictions_count=3)

    Args:
        client: A ``google.cloud.firestore.AsyncClient`` (bound to the running event loop).
        collection: Collection path of the batch documents.
        completions_subcollection: Name of each batch's completions subcollection.
        mode: Migration mode; ``None`` reads it from the environment flags
            (``MigrationMode.from_env``).
        write_path: ``"auto"`` (default): each group is ONE lock-free Commit
            wherever completion documents are the guard (every mode that writes
            the subcollection, on batches that need no legacy read), elsewhere
            (LEGACY; a dual-write batch not yet backfilled) a plain read and ONE
            Commit conditional on the batch being unchanged since.
            ``"transaction"``: every group through ``async_transactional``.
        coalesce: Group concurrent completions of one batch into one write.
            ``False`` writes each completion alone (for comparison).
        max_group_size: Most completions per write (default 250, at most 1,500:
            a group is one request, under Firestore's 10 MiB even with 1,500-byte ids).
        max_in_flight_per_batch: Most writes per batch in flight in this process.
            A lane keeps one write in flight and starts another beside it only
            when what queues fills a whole group (every write of a batch lands on
            one document, whose writes Firestore serialises: a second Commit would
            queue there while its completions could join the next group). Beyond
            that, an adaptive limit starts at 2 and moves between 1 and this bound:
            up while commits succeed without contention and their latency stays
            near its floor, down on ABORTED, RESOURCE_EXHAUSTED or rising latency.
            Default 16 on the lock-free path, 2 with transactions, 32 without
            coalescing, 1 in LEGACY mode (each write reads the hot document first, and a
            second in flight would only make the first's condition fail).
        linger: Seconds a lane waits before taking a group, to let more completions
            join it. 0 (default) adds no latency: groups form from what queued
            while the previous write was in flight.
        retry: Backoff, attempts, deadline and per-attempt timeout.
        rate_limit: Most write attempts per second for the whole manager
            (aiolimiter leaky bucket: an idle limiter admits a burst of
            ``rate_limit`` attempts, then ``rate_limit`` per second; below 1, one
            attempt every ``1 / rate_limit`` seconds). None: unlimited.
        document_write_rate: Commits per second that one batch document should take
            from the whole fleet (set it in every process, below what the document
            sustains, e.g. 0.8 of it). Each process measures the fleet's completions
            per second on the batch from the counts its writes read back, and its own
            as they arrive; while the fleet would need more Commits than this rate
            (``g > 1``, with ``g = fleet rate x queued per counted x Commits per
            landed write / document_write_rate``), it starts a batch's write
            ``g / its own rate`` seconds after the previous one (at most 1 s, and at
            once when ``2g`` are queued): N processes of equal load each write about
            every ``N * k / rate`` s (k: Commits per landed write, refused ones
            included), completions join larger groups, and no queue of N Commits
            stands at the document. A pause never takes more than half the time the
            earliest queued caller has left, and a close ends it; a completion held
            across its batch's deadline is LATE, as one queued at the document would
            be. Nothing to pace with ``coalesce=False`` (groups of one). None
            (default): no pacing; each process keeps one write in flight per batch.
        on_complete: ``on_complete(batch_id, progress)`` (sync or async), run after a
            batch completes: at least once per batch across processes, in a
            background task of the manager (never inside a caller's
            ``record_completion``). Every finished batch owes it in its document,
            whichever process finished it (with or without callbacks); a callback
            cut short (crash, shutdown, exception) stays owed and runs again in a
            manager that has it once ``callback_lease`` has passed: on
            ``deliver_owed_callbacks``, its next touch of the batch, or its sweep.
            Deduplicate on ``progress.finalization_key``. A sync callback runs on
            the event loop and blocks it (its lease renewal too): make slow ones async.
        on_expired: ``on_expired(batch_id, progress)``, run after a batch expires
            (``expire``, a passed deadline, any process); owed like ``on_complete``.
        callback_lease: Seconds an owed callback is left to the process running it
            before another may run it (default 60). The runner renews it every
            ``callback_lease / 3`` while the callback runs.
        callback_sweep_interval: Seconds between two sweeps for owed callbacks whose
            lease has passed (a single-field query on ``callback_owed``; default 30).
            None: no sweep. Only a manager with a callback sweeps.
        retain_for: Stamp finished batches (and their completion and roster
            documents) with ``expire_at = finish time + retain_for`` for a Firestore
            TTL policy on ``expire_at`` (see the docs, Operations: TTL and retention).
            None (default): no stamp.
        hooks: Receive every ``Event`` (calls answered, attempts failed, groups
            committed, finalizations), e.g. ``OpenTelemetryHook()`` for metrics and spans.
        legacy_array_limit: Most players a batch may hold in a mode that writes
            the legacy array (each player costs 3 of a document's 40,000 index
            entries and ~50 bytes of its 1 MiB). Larger batches are refused with
            ``LegacyArrayLimitError``: use ``SUBCOLLECTION_ONLY`` for them.
        legacy_array_warn_ratio: Fraction of ``legacy_array_limit`` at which
            ``create_batch`` logs a warning.
        clock: Time source of every delay, timeout and deadline: backoff, attempt
            and caller timeouts, linger, drain, batch deadlines (``clock.now()``)
            and retention stamps (inject ``testing.FakeClock`` in tests). Not the
            callback lease, its renewals or the sweep: the server judges the lease
            on its own clock.
        rng: Randomness for backoff jitter.
        fault_injector: Test seam called at each ``FaultPoint`` of a write attempt.
        validation_rate: Probability that a commit which recorded completions schedules
            a background consistency check of its batch (at most one per batch at a
            time; 0 disables): one read of the batch document. Only a disagreement
            that persists on a re-read is checked against the subcollection, and
            alerted only if two such checks confirm it. Default 0.05: about 0.05 document
            reads per completion at groups of one, fewer with larger groups.
        validation_interval: Least seconds between two sampled validations of one
            batch in this process (default 5).
        alert_hooks: Called with the ``ConsistencyReport`` of each mismatch found
            (sync or async), e.g. ``SlackWebhookAlerter(url)``.
        validation_rng: Random source for the sampling (inject a seeded one in tests).

    Raises:
        ConfigurationError: Contradictory flags, or an invalid knob: an argument of
            the wrong type (``client`` not an ``AsyncClient``, a ``bool`` for a
            number, a str for a bool...) or out of its range; nothing is started.
        InvalidIdError: ``collection`` or ``completions_subcollection`` is not a
            valid Firestore path or id.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        collection: str = "prediction_batches",
        completions_subcollection: str = "completions",
        mode: MigrationMode | None = None,
        write_path: WritePath = "auto",
        coalesce: bool = True,
        max_group_size: int = 250,
        max_in_flight_per_batch: int | None = None,
        linger: float = 0.0,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        document_write_rate: float | None = None,
        on_complete: OnComplete | None = None,
        on_expired: OnComplete | None = None,
        callback_lease: float = 60.0,
        callback_sweep_interval: float | None = 30.0,
        retain_for: dt.timedelta | float | None = None,
        hooks: Iterable[Hook] = (),
        legacy_array_limit: int = 12_000,
        legacy_array_warn_ratio: float = 0.8,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        fault_injector: FaultInjector | None = None,
        validation_rate: float = 0.05,
        validation_interval: float = 5.0,
        alert_hooks: Iterable[AlertHook] = (),
        validation_rng: random.Random | None = None,
    ) -> None:
        _check_settings(
            client=client,
            mode=mode,
            write_path=write_path,
            coalesce=coalesce,
            max_group_size=max_group_size,
            max_in_flight_per_batch=max_in_flight_per_batch,
            linger=linger,
            document_write_rate=document_write_rate,
            retry=retry,
            on_complete=on_complete,
            on_expired=on_expired,
            callback_lease=callback_lease,
            callback_sweep_interval=callback_sweep_interval,
            clock=clock,
            rng=rng,
            fault_injector=fault_injector,
            validation_rate=validation_rate,
            validation_interval=validation_interval,
            validation_rng=validation_rng,
        )
        hooks = validate_callables("hooks", hooks, error=ConfigurationError)
        alert_hooks = validate_callables("alert_hooks", alert_hooks, error=ConfigurationError)
        retain_for = parse_retention(retain_for)
        rate = make_rate_limiter(rate_limit)
        self.mode = MigrationMode.from_env() if mode is None else mode
        self._client = client
        self._layout = Layout(collection, completions_subcollection)
        self._legacy_limits = LegacyLimits(legacy_array_limit, legacy_array_warn_ratio)
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._closed = False
        self._infos = BatchInfoCache(Refs(client, self._layout), self._retrying)
        self._writer = GroupWriter(
            client, self._layout, self.mode, self._infos, fault_injector, write_path, clock=clock
        )
        self._recorder = Recorder(tuple(hooks))
        self._finalizer = Finalizer(
            client,
            self._writer.refs,
            self.mode,
            retrying=self._retrying,
            recorder=self._recorder,
            on_complete=on_complete,
            callback_lease=callback_lease,
            callback_sweep_interval=callback_sweep_interval,
            on_expired=on_expired,
            retain_for=retain_for,
            clock=clock,
            infos=self._infos,
        )
        self._finalizer.callbacks.start()  # the sweep, if made inside the event loop
        refs = self._writer.refs
        self._reader = BatchReader(refs, self.mode, self._infos, self._retrying)
        self._validator = SampledValidator(
            client,
            self._layout,
            self.mode,
            rate=validation_rate,
            rng=validation_rng,
            alert_hooks=alert_hooks,
            retry=self._retry,
            min_interval=validation_interval,
            clock=clock,
            emit=self._recorder.emit,
        )
        self._runner = GroupRunner(
            self._writer,
            self._finalizer,
            self._recorder,
            self._validator,
            retry=self._retry,
            clock=clock,
            rng=self._rng,
            rate=rate,
            max_group_size=max_group_size if coalesce else 1,
            max_in_flight=in_flight_bound(self.mode, coalesce, write_path, max_in_flight_per_batch),
            linger=linger,
            expected_count=self._expected_count,
            write_rate=None if document_write_rate is None else float(document_write_rate),
        )

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._finalizer.callbacks.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @typed_errors
    async def aclose(self, *, drain_timeout: float | None = None) -> None:
        """Stop accepting completions, drain writes and callbacks in flight, then cut the rest.

        Args:
            drain_timeout: Seconds the close may take: it waits for queued and
                in-flight groups, then for callbacks and consistency checks running in
                the background (default: the retry deadline). After it, queued callers
                and groups still in flight get ``ManagerClosedError`` (a write cut
                short either committed whole or not at all, so recording again is
                safe), running callbacks are cancelled (they stay owed, and run again
                elsewhere after their lease) and so are checks. Only a finalization
                already on the wire gets up to 2 s more, so that the caller whose
                completion finished the batch is told so.

        Raises:
            InvalidInputError: ``drain_timeout`` is not a finite number of seconds
                >= 0 (or None); the manager is left open.
        """
        if drain_timeout is not None:
            validate_seconds("drain_timeout", drain_timeout)
        self._closed = True
        drain = self._retry.deadline if drain_timeout is None else drain_timeout
        started = self._clock.monotonic()

        def left() -> float:
            return max(drain - (self._clock.monotonic() - started), 0.0)

        await self._runner.aclose(drain)
        await self._finalizer.callbacks.aclose(left())
        await self._validator.aclose(left())
        await self._infos.aclose()
        await self._writer.aclose()

    def __repr__(self) -> str:
        s, r = self._recorder, self._runner
        return (
            f"<AsyncBatchStateManager collection={self._layout.collection!r} "
            f"mode={self.mode.name} {'closed' if self._closed else 'open'} "
            f"lanes={r.lanes} queued={r.queued} in_flight={r.in_flight} recorded={s.recorded} "
            f"duplicates={s.duplicates} failed={s.failed}>"
        )

    def stats(self) -> Stats:
        """A frozen snapshot of this manager's counters and latency percentiles."""
        return self._recorder.snapshot()

    @property
    def layout(self) -> Layout:
        """Where batches and completions live."""
        return self._layout

    # -- writing ---------------------------------------------------------------------

    @typed_errors
    async def create_batch(
        self,
        batch_id: str,
        *,
        expected_players: Iterable[str] | None = None,
        expected_count: int | None = None,
        deadline: dt.datetime | dt.timedelta | None = None,
    ) -> bool:
        """Create the batch document with its expected completions.

        Give exactly one of ``expected_players`` (the roster: a completion for a
        player outside it is refused with ``UnexpectedPlayerError``, and
        ``BatchProgress.missing_players`` names who is missing) or
        ``expected_count``. Creating a batch that exists with the same expected
        count, or the same roster in any order, is a no-op (so a restarted
        coordinator may call it again). A roster and a bare ``expected_count`` are
        different batches, even of the same size.

        Args:
            batch_id: The batch id (a Firestore document id).
            expected_players: The players expected to complete (the roster): any
                iterable of str ids (a list, a set, a generator), read once.
            expected_count: How many completions complete the batch (no roster).
            deadline: When the batch expires if unfinished: an aware datetime, or a
                timedelta from now. Once past, the next completion, progress read,
                wait or ``expire`` moves it to ``expired``.

        Returns:
            True if this call created the batch, False if it already existed.

        Raises:
            InvalidIdError: A batch or player id Firestore cannot store (a roster
                item that is not a str included).
            DuplicatePlayerError: ``expected_players`` repeats a player.
            InvalidCountError: ``expected_count`` not a positive int.
            InvalidInputError: ``expected_players`` is not an iterable of ids (a
                str, bytes, a mapping, a number) or is empty; ``deadline`` is not an
                aware datetime or a timedelta.
            ConfigurationError: Neither or both of ``expected_players`` and
                ``expected_count``.
            LegacyArrayLimitError: Too many players for the legacy array in this mode.
            BatchExistsError: The batch exists with another expected count or roster
                (the message says how they differ).
            ManagerClosedError: The manager is closed.
            WriteFailedError: The client failed (a closed channel included); nothing written.
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.

        Every argument is checked before anything is written.
        """
        self._check_open()
        new = new_batch(
            self.mode,
            batch_id,
            expected_players=expected_players,
            expected_count=expected_count,
            deadline=deadline,
            limits=self._legacy_limits,
            now=self._clock.now(),
        )
        created = await create_batch(self._writer.refs, new, new_write_id(), self._retrying)
        if created:
            self._infos.remember(batch_id, new.info)
        return created

    @typed_errors
    async def record_completion(
        self,
        batch_id: str,
        player: str,
        predictions_count: int,
        *,
        timeout: float | None = None,
    ) -> CompletionResult:
        """Record that ``player`` of ``batch_id`` finished with ``predictions_count`` predictions.

        Atomic (every structure of the mode or none), idempotent (a redelivery is
        a ``DUPLICATE`` and counts nothing; the first count wins) and safe under
        any concurrency: concurrent completions of one batch share one write.

        Args:
            batch_id: The batch, created by ``create_batch``.
            player: The player id (a Firestore document id).
            predictions_count: A non-negative int.
            timeout: Seconds to wait for the result (default: the retry deadline).

        Every argument is checked before anything is read or written.

        Returns:
            This completion's outcome; ``batch_completed`` is True for the one call
            that finalized the batch.

        Raises:
            InvalidIdError: Bad batch or player id; nothing written.
            InvalidCountError: Bad count; nothing written.
            InvalidInputError: ``timeout`` is not a finite number of seconds >= 0;
                nothing written.
            UnexpectedPlayerError: The player is not in the batch's roster; nothing written.
            BatchNotFoundError: The batch was never created; nothing written.
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
            CompletionTimeoutError: ``timeout`` passed first (recorded whole or not at all).
            ManagerClosedError: The manager is closed, or closed before confirming it.
            WriteFailedError: Firestore (or the client: a closed channel) refused the
                write; nothing written.
        """
        started = self._clock.monotonic()
        result: CompletionResult | None = None
        error: BaseException | None = None
        try:
            result = await self._record(batch_id, player, predictions_count, timeout, started)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            seconds = self._clock.monotonic() - started
            self._recorder.emit(
                CompletionFinished(
                    batch_id=batch_id, player=player, seconds=seconds, result=result, error=error
                )
            )

    @typed_errors
    async def expire(self, batch_id: str, *, reason: str | None = None) -> bool:
        """Move an unfinished batch to the terminal status ``expired``, exactly once.

        Stores the reason and (with a roster) the missing players, at most 1,000 of
        them and 128 KiB of ids (``missing_count`` has them all). Across processes exactly one call
        returns True, and it runs ``on_expired`` (owed durably like ``on_complete``).
        The caller waits for ``on_expired`` when this call expired the batch (or ran
        an owed one); deadline expiries by other calls run it in the background.
        A batch whose every completion is already recorded is not expired: it
        completes (an expiry racing the last completion ends in exactly one
        terminal status). Completions arriving afterwards are stored and counted,
        answered ``LATE``, and never finalize the batch.

        Returns:
            True for the one call that expired the batch.

        Raises:
            InvalidIdError: Bad batch id.
            InvalidInputError: A reason that is not a str, not valid UTF-8 or over
                10,000 bytes; nothing written.
            BatchNotFoundError: No such batch.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        validate_id("batch id", batch_id)
        why = "expired" if reason is None else validate_text("reason", reason)
        return await self._expire(batch_id, why)

    async def _expire(self, batch_id: str, why: str) -> bool:
        await self._infos.get(batch_id)  # the batch's settings, for the missing players
        return await self._finalizer.expire(batch_id, why, partial(self._reader.missing, batch_id))

    @typed_errors
    async def finalize(self, batch_id: str) -> bool:
        """Finalize the batch if every completion is recorded and nobody has yet.

        Runs automatically after completions; call it to recover a batch whose
        finalizer crashed. Exactly one call across all processes returns True
        (and runs ``on_complete``, awaited here). On a finalized batch it runs an
        owed callback whose lease expired (awaited too).

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        validate_id("batch id", batch_id)
        return await self._finalizer.finalize(batch_id)

    @typed_errors
    async def deliver_owed_callbacks(self, batch_id: str) -> bool:
        """Run the callback of a finished batch that is still owed, once its lease passed.

        A callback is owed from the finish (complete or expired, by any process)
        until it returns; if the process running it died (or the manager closed
        first), or the finishing process had no callback, it stays owed, and any
        manager with that callback may run it once ``callback_lease`` passed.
        The claim is retried like every write; this call awaits the callback.

        Returns:
            True if this call ran the callback and it returned.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
            RetryExhaustedError: Reading or claiming kept failing.
            WriteFailedError: The client failed (a closed channel included).
        """
        validate_id("batch id", batch_id)
        return await self._finalizer.callbacks.deliver_owed(batch_id)

    # -- reading ---------------------------------------------------------------------

    @typed_errors
    async def get_progress(self, batch_id: str, *, include_players: bool = True) -> BatchProgress:
        """Read a batch's progress from the structure this mode reads.

        A batch whose deadline has passed is expired first; a callback it owes (to a
        manager with that callback) is started in the background.

        Args:
            batch_id: The batch.
            include_players: Also list the recorded and the missing players. For a
                batch with a roster of up to 1,000 players in a subcollection-read
                mode this is one point read per roster player (one RPC); beyond, or
                without a roster, it lists every completion document's id.

        Raises:
            InvalidIdError: Bad batch id.
            InvalidInputError: ``include_players`` is not a bool.
            BatchNotFoundError: No such batch.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        validate_id("batch id", batch_id)
        validate_bool("include_players", include_players)
        data = await self._reader.document(batch_id)
        progress = progress_from(batch_id, self.mode, data)
        if self._overdue(progress):
            await self._expire_overdue(batch_id)
            data = await self._reader.document(batch_id)
            progress = progress_from(batch_id, self.mode, data)
        elif data.get(f.CALLBACK_OWED) is True:
            self._finalizer.callbacks.settle_soon(batch_id, None, owed=True)
        if not include_players:
            return dataclasses.replace(progress, completed_players=(), missing_players=())
        return await self._reader.with_players(progress, data)

    def list_batches(
        self,
        *,
        status: str | None = None,
        created_before: dt.datetime | None = None,
        limit: int | None = None,
        page_size: int = 300,
    ) -> AsyncIterator[BatchProgress]:
        """The batches of this collection, as progress without players.

        Single-field queries only (no composite index to deploy): by ``status``
        (``created_before`` then filtered here), else by ``created_at``, else by id.

        Args:
            status: Only batches with this status (``in_progress``, ``complete``,
                ``expired``).
            created_before: Only batches created before this aware datetime.
            limit: Yield at most this many.
            page_size: Documents per query page (at most ``2**31 - 1``).

        The arguments are checked by this call, before any read; errors while
        iterating are ``BatchStateError`` too.

        Raises:
            InvalidInputError: ``status`` is not one of the three statuses, or
                ``created_before`` is not an aware datetime.
            InvalidCountError: ``limit`` or ``page_size`` is not an int >= 1 (or too large).
            WriteFailedError: While iterating: the client failed (a closed channel
                included).
            RetryExhaustedError: While iterating: retryable failures until the
                attempts or deadline ran out.
        """
        if status is not None and (not isinstance(status, str) or status not in _STATUSES):
            raise InvalidInputError(
                f"status must be one of {', '.join(sorted(_STATUSES))} or None, not {status!r}"
            )
        if created_before is not None:
            validate_aware("created_before", created_before)
        if limit is not None:
            validate_count("limit", limit, minimum=1)
        validate_count("page_size", page_size, minimum=1, maximum=_MAX_PAGE)
        listing = self._reader.listing(
            status=status, created_before=created_before, limit=limit, page_size=page_size
        )
        return typed_iteration(listing, "listing batches")

    def stalled(self, older_than: dt.timedelta | float) -> AsyncIterator[BatchProgress]:
        """In-progress batches created more than ``older_than`` ago (seconds or a timedelta).

        Raises:
            InvalidInputError: Not a timedelta or a number of seconds; a negative,
                NaN or unrepresentable age.
            WriteFailedError: While iterating: the client failed.
            RetryExhaustedError: While iterating: retryable failures until the
                attempts or deadline ran out.
        """
        if isinstance(older_than, dt.timedelta):
            age = older_than
        else:
            seconds = validate_seconds("older_than", older_than)
            try:
                age = dt.timedelta(seconds=seconds)
            except OverflowError:
                raise InvalidInputError(f"older_than {older_than!r} is too large") from None
        if age < dt.timedelta(0):
            raise InvalidInputError("older_than must be >= 0")
        try:
            before = self._clock.now() - age
        except OverflowError:
            raise InvalidInputError(f"older_than {older_than!r} reaches before year 1") from None
        return self.list_batches(status=f.STATUS_IN_PROGRESS, created_before=before)

    @typed_errors
    async def wait_until_complete(
        self, batch_id: str, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> BatchProgress:
        """Wait until the batch is finished (complete or expired); its final progress.

        Wakes at once when this process finishes the batch, and polls otherwise
        (another process may finish it). If every completion is recorded but
        nobody finalized (the finalizer crashed), this call finalizes it; if its
        deadline passed, it expires it; an owed callback whose lease expired is
        started too. Callbacks run in the background: this call does not wait for
        them. Nothing about the batch is kept once the call returns.

        Raises:
            InvalidIdError: Bad batch id.
            InvalidInputError: ``timeout`` is not a finite number of seconds >= 0
                (or None), or ``poll_interval`` is not a finite number > 0.
            BatchNotFoundError: No such batch.
            CompletionTimeoutError: ``timeout`` seconds passed first.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        validate_id("batch id", batch_id)
        if timeout is not None:
            validate_seconds("timeout", timeout)
        if validate_seconds("poll_interval", poll_interval) <= 0:
            raise InvalidInputError("poll_interval must be > 0 seconds")
        with self._finalizer.waiter(batch_id) as finished:
            try:
                async with self._clock.timeout(timeout):
                    while True:
                        progress = await self._read_progress(batch_id)
                        if not progress.is_terminal and progress.is_complete:
                            await self._finalizer.finalize(batch_id, background=True)
                            progress = await self._read_progress(batch_id)
                        elif self._overdue(progress):
                            await self._expire_overdue(batch_id)
                            progress = await self._read_progress(batch_id)
                        if progress.is_terminal:  # get_progress starts an owed callback
                            return await self.get_progress(batch_id)
                        await wait_event(self._clock, finished, poll_interval)
            except TimeoutError:
                raise CompletionTimeoutError(
                    f"batch {batch_id!r} was not complete within {timeout}s"
                ) from None

    # -- consistency -----------------------------------------------------------------

    @typed_errors
    async def validate(self, batch_id: str) -> ConsistencyReport:
        """Compare the batch's legacy array with its completions subcollection.

        One consistent snapshot (a read-only transaction): the batch document,
        ``count()``/``sum()`` aggregations over the completion documents and, when
        both structures exist, the completion ids. Judged under this manager's mode.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        return await validate(
            self._client, self._layout, self.mode, batch_id, retry=self._retry, clock=self._clock
        )

    @typed_errors
    async def reconcile(
        self, batch_id: str, *, source: Source | None = None, dry_run: bool = False
    ) -> ReconcileResult:
        """Rewrite counters, array, map and completion docs from one source of truth.

        Args:
            batch_id: The batch.
            source: ``Source.SUBCOLLECTION`` (default) or ``Source.LEGACY`` (the
                default in ``LEGACY`` mode). With the subcollection as the truth a
                player only in the array is dropped: backfill legacy batches first.
            dry_run: Report the changes without writing.

        Returns:
            What changed; nothing for a consistent batch.

        Raises:
            InvalidIdError: Bad batch id.
            InvalidInputError: ``source`` is not a ``Source`` (or None), or
                ``dry_run`` is not a bool; nothing written.
            ConfigurationError: ``Source.LEGACY`` in a mode whose batches may have no array.
            BatchNotFoundError: No such batch.
            WriteFailedError: The client failed (a closed channel included).
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
        """
        return await reconcile(
            self._client,
            self._layout,
            self.mode,
            batch_id,
            source,
            dry_run=dry_run,
            retry=self._retry,
            clock=self._clock,
        )

    # -- internals -------------------------------------------------------------------

    async def _record(
        self,
        batch_id: str,
        player: str,
        predictions_count: int,
        timeout: float | None,
        started: float,
    ) -> CompletionResult:
        self._check_open()
        validate_id("batch id", batch_id)
        validate_player(self.mode, player)
        count = validate_count("predictions_count", predictions_count)
        wait = self._retry.deadline if timeout is None else validate_seconds("timeout", timeout)
        info = self._infos.cached(batch_id)
        checked = True
        if info is not None and not self._finalizer.overdue(info.deadline, info.terminal):
            info.check_completion(batch_id, player, count)  # the common case: no I/O here
        elif info is None and self._writer.first_touch_unchecked and count <= MAX_PER_COMPLETION:
            # A first touch: queued before the settings are read; its Commit goes beside
            # the read and lands only on a batch whose settings could check nothing.
            checked = False
        else:
            await self._prepare(batch_id, player, count, wait)
        while True:
            completion = PlayerCompletion(player, count, checked=checked)
            try:
                return await self._runner.record(batch_id, completion, started + wait)
            except SettingsNeeded:
                # Nothing was written: this completion (or one it was grouped with) was
                # queued unchecked and the batch has settings to check. Check, go again.
                if not checked:
                    left = max(started + wait - self._clock.monotonic(), 0.0)
                    await self._prepare(batch_id, player, count, left)
                    checked = True

    async def _prepare(self, batch_id: str, player: str, count: int, wait: float) -> None:
        """Read the batch's settings (once per process) and expire it if overdue."""
        try:
            # The timeout bounds the whole call: reading the batch's settings and
            # expiring an overdue batch count against it too.
            async with self._clock.timeout(wait):
                info = await self._infos.get(batch_id)  # cached per batch: one read at most
                info.check_completion(batch_id, player, count)
                if self._finalizer.overdue(info.deadline, info.terminal):
                    await self._expire_overdue(batch_id)
        except TimeoutError:
            raise CompletionTimeoutError(
                f"batch {batch_id!r} could not be read within {wait}s; nothing was written "
                f"for player {player!r}: record it again"
            ) from None

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the manager is closed")
        self._finalizer.callbacks.start()  # the sweep, if the manager was made outside the loop

    async def _retrying(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        result, _ = await run_with_retry(
            call, self._retry, what=what, clock=self._clock, rng=self._rng
        )
        return result

    async def _read_progress(self, batch_id: str) -> BatchProgress:
        read = await self._retrying(
            lambda: self._finalizer.read(batch_id), f"reading batch {batch_id!r}"
        )
        progress: BatchProgress = read[0]
        return progress

    async def _expected_count(self, batch_id: str) -> int:
        return (await self._infos.get(batch_id)).expected

    def _overdue(self, progress: BatchProgress) -> bool:
        return self._finalizer.overdue(progress.deadline, progress.is_terminal)

    async def _expire_overdue(self, batch_id: str) -> None:
        await self._infos.get(batch_id)  # the batch's settings, for the missing players
        await self._finalizer.expire_overdue(batch_id, partial(self._reader.missing, batch_id))


def _check_settings(
    *,
    client: object,
    mode: object,
    write_path: object,
    coalesce: object,
    max_group_size: object,
    max_in_flight_per_batch: object,
    linger: object,
    document_write_rate: object,
    retry: object,
    on_complete: object,
    on_expired: object,
    callback_lease: object,
    callback_sweep_interval: object,
    clock: object,
    rng: object,
    fault_injector: object,
    validation_rate: object,
    validation_interval: object,
    validation_rng: object,
) -> None:
    """Refuse a manager setting of the wrong type or range before anything is built.

    Raises:
        ConfigurationError: The first bad setting, named.
    """
    bad = ConfigurationError
    validate_instance("client", client, AsyncClient, error=bad)
    if mode is not None:
        validate_instance("mode", mode, MigrationMode, error=bad)
    if not isinstance(write_path, str) or write_path not in ("auto", "transaction"):
        raise bad(f"write_path must be 'auto' or 'transaction', not {write_path!r}")
    validate_bool("coalesce", coalesce, error=bad)
    if isinstance(max_group_size, bool) or not isinstance(max_group_size, int):
        raise bad(f"max_group_size must be an int, not {type(max_group_size).__name__}")
    if not 1 <= max_group_size <= MAX_GROUP_SIZE:
        raise bad(
            f"max_group_size must be in [1, {MAX_GROUP_SIZE}]: a group is one request, "
            "and Firestore caps a request at 10 MiB (~6 KB per completion with 1,500-byte ids)"
        )
    if max_in_flight_per_batch is not None:
        validate_count("max_in_flight_per_batch", max_in_flight_per_batch, minimum=1, error=bad)
    validate_seconds("linger", linger, error=bad)
    if document_write_rate is not None:
        rate = math.inf
        if not isinstance(document_write_rate, bool) and isinstance(
            document_write_rate, int | float
        ):
            with contextlib.suppress(OverflowError):  # an int beyond float's range
                rate = float(document_write_rate)
        if not 0 < rate < math.inf:
            raise bad(
                "document_write_rate must be a finite number of Commits per second > 0 "
                f"(or None), not {document_write_rate!r}"
            )
    if retry is not None:
        validate_instance("retry", retry, RetryPolicy, error=bad)
    for name, value in (
        ("on_complete", on_complete),
        ("on_expired", on_expired),
        ("fault_injector", fault_injector),
    ):
        if value is not None:
            validate_callable(name, value, error=bad)
    intervals = [("callback_lease", callback_lease)]
    if callback_sweep_interval is not None:
        intervals.append(("callback_sweep_interval", callback_sweep_interval))
    for name, value in intervals:
        if validate_seconds(name, value, error=bad) <= 0:
            raise bad(f"{name} must be > 0 seconds, not {value!r}")
    validate_clock("clock", clock, error=bad)
    for name, value in (("rng", rng), ("validation_rng", validation_rng)):
        if value is not None:
            validate_instance(name, value, random.Random, error=bad)
    if isinstance(validation_rate, bool) or not isinstance(validation_rate, int | float):
        raise bad(f"validation_rate must be a probability, not {type(validation_rate).__name__}")
    if not 0 <= validation_rate <= 1:
        raise bad(f"validation_rate must be in [0, 1], not {validation_rate!r}")
    validate_seconds("validation_interval", validation_interval, error=bad)
