"""``AsyncBatchStateManager``: the facade tying layout, writer, lanes, retry and limits together."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock, wait_event
from .._config import MigrationMode
from .._errors import (
    BatchExistsError,
    BatchNotFoundError,
    CompletionTimeoutError,
    ConfigurationError,
    InvalidCountError,
    InvalidInputError,
    ManagerClosedError,
    UnexpectedPlayerError,
)
from .._store import schema as f
from .._store.roster import BatchInfoCache, recorded_players, roster_ref
from .._store.schema import (
    Layout,
    LegacyLimits,
    new_batch,
    validate_count,
    validate_id,
    validate_player,
)
from .._types import BatchProgress, CompletionResult
from ..consistency._validate import (
    AlertHook,
    ConsistencyReport,
    ReconcileResult,
    SampledValidator,
    Source,
    reconcile,
    validate,
)
from ..instrumentation._events import (
    Hook,
    Recorder,
    Stats,
)
from ..instrumentation._otel import completion_span
from .finaliser import Finaliser, OnComplete, progress_from
from .limits import make_rate_limiter
from .retry import ErrorKind, RetryPolicy, run_with_retry
from .runner import GroupRunner
from .writer import (
    Completion,
    FaultInjector,
    GroupWriter,
    WritePath,
    new_write_id,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

logger = logging.getLogger("async_batchstate")

_CONTENTION = (ErrorKind.CONTENTION, ErrorKind.OVERLOADED)
MAX_GROUP_SIZE = 1500
"""Largest group: 1,500 completions of the longest ids stay under the 10 MiB request limit."""


def _retention(value: dt.timedelta | float | None) -> dt.timedelta | None:
    if value is None:
        return None
    delta = value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)
    if delta <= dt.timedelta(0):
        raise ConfigurationError("retain_for must be a positive duration")
    return delta


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
            the subcollection, on batches that need no legacy read), a transaction
            elsewhere (LEGACY; a dual-write batch not yet backfilled).
            ``"transaction"``: every group through ``async_transactional``.
        coalesce: Group concurrent completions of one batch into one write.
            ``False`` writes each completion alone (for comparison).
        max_group_size: Most completions per write (default 250, at most 1,500:
            a group is one request, under Firestore's 10 MiB even with 1,500-byte ids).
        max_in_flight_per_batch: Most writes per batch in flight in this process.
            The adaptive limit starts at 2 and moves between 1 and this bound:
            up while commits succeed without contention and their latency stays
            near its floor, down on ABORTED, RESOURCE_EXHAUSTED or rising latency.
            Default 16 on the lock-free path, 2 with transactions, 32 without
            coalescing, 1 in LEGACY mode (its transactions read the hot document).
        linger: Seconds a lane waits before taking a group, to let more completions
            join it. 0 (default) adds no latency: groups form from what queued
            while the previous write was in flight.
        retry: Backoff, attempts, deadline and per-attempt timeout.
        rate_limit: Most write attempts per second for the whole manager
            (aiolimiter leaky bucket: an idle limiter admits a burst of
            ``rate_limit`` attempts, then ``rate_limit`` per second; below 1, one
            attempt every ``1 / rate_limit`` seconds). None: unlimited.
        on_complete: Called for each batch this manager finalises, after the flip;
            at least once per batch across processes: a callback cut short (crash,
            shutdown, exception) stays owed in the batch document and runs again
            in the next manager that touches the batch after ``callback_lease``.
            Deduplicate on ``progress.finalisation_key``.
        on_expired: ``on_expired(batch_id, progress)``, run when this manager expires
            a batch (``expire`` or a passed deadline); owed durably like ``on_complete``.
        callback_lease: Seconds an owed callback is left to the process running it
            before another may run it (default 60).
        retain_for: Stamp finished batches (and their completion and roster
            documents) with ``expire_at = finish time + retain_for`` for a Firestore
            TTL policy on ``expire_at`` (see README). None (default): no stamp.
        hooks: Receive every ``Event`` (attempts failed, groups committed, finalisations).
        legacy_array_limit: Most players a batch may hold in a mode that writes
            the legacy array (each player costs 3 of a document's 40,000 index
            entries and ~50 bytes of its 1 MiB). Larger batches are refused with
            ``LegacyArrayLimitError``: use ``SUBCOLLECTION_ONLY`` for them.
        legacy_array_warn_ratio: Fraction of ``legacy_array_limit`` at which
            ``create_batch`` logs a warning.
        clock: Time source of every delay, timeout and deadline: backoff, attempt
            and caller timeouts, linger, drain, batch deadlines (``clock.now()``)
            and retention stamps (inject ``testing.FakeClock`` in tests).
        rng: Randomness for backoff jitter.
        fault_injector: Test seam called at each ``FaultPoint`` of a write attempt.
        validation_rate: Probability that a commit which recorded completions schedules
            a background consistency check of its batch (at most one per batch at a
            time; 0 disables).
        validation_interval: Least seconds between two sampled validations of one
            batch in this process (default 5): each validation aggregates the
            batch's whole subcollection, and a hot batch commits many times a second.
        alert_hooks: Called with the ``ConsistencyReport`` of each mismatch found
            (sync or async), e.g. ``SlackWebhookAlerter(url)``.
        validation_rng: Random source for the sampling (inject a seeded one in tests).
        tracer: OpenTelemetry ``Tracer`` for the ``record_completion`` spans; None:
            the global tracer provider's when one is set, else no spans.

    Raises:
        ConfigurationError: Contradictory flags or invalid knobs.
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
        on_complete: OnComplete | None = None,
        on_expired: OnComplete | None = None,
        callback_lease: float = 60.0,
        retain_for: dt.timedelta | float | None = None,
        hooks: Iterable[Hook] = (),
        legacy_array_limit: int = 12_000,
        legacy_array_warn_ratio: float = 0.8,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        fault_injector: FaultInjector | None = None,
        tracer: Tracer | None = None,
        validation_rate: float = 0.1,
        validation_interval: float = 5.0,
        alert_hooks: Iterable[AlertHook] = (),
        validation_rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._layout = Layout(collection, completions_subcollection)
        self.mode = MigrationMode.from_env() if mode is None else mode
        if not 1 <= max_group_size <= MAX_GROUP_SIZE:
            raise ConfigurationError(
                f"max_group_size must be in [1, {MAX_GROUP_SIZE}]: a group is one request, "
                "and Firestore caps a request at 10 MiB (~6 KB per completion with 1,500-byte ids)"
            )
        if linger < 0:
            raise ConfigurationError("linger must be >= 0 seconds")
        self._legacy_limits = LegacyLimits(legacy_array_limit, legacy_array_warn_ratio)
        if write_path not in ("auto", "transaction"):
            raise ConfigurationError(
                f"write_path must be 'auto' or 'transaction', not {write_path!r}"
            )
        if not (isinstance(callback_lease, int | float) and math.isfinite(callback_lease)):
            raise ConfigurationError("callback_lease must be a finite number of seconds")
        if callback_lease <= 0:
            raise ConfigurationError("callback_lease must be > 0 seconds")
        if self.mode is MigrationMode.LEGACY:
            # LEGACY transactions read the hot batch document, so two of ours in flight
            # would wait on each other's locks.
            default_in_flight = 1
        elif not coalesce:
            default_in_flight = 32
        else:
            default_in_flight = 16 if write_path == "auto" else 2
        max_in_flight = (
            default_in_flight if max_in_flight_per_batch is None else max_in_flight_per_batch
        )
        if max_in_flight < 1:
            raise ConfigurationError("max_in_flight_per_batch must be >= 1")
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._writer = GroupWriter(
            client, self._layout, self.mode, fault_injector, write_path, clock=clock
        )
        self._recorder = Recorder(tuple(hooks))
        self._finaliser = Finaliser(
            client,
            self._writer,
            self.mode,
            retrying=self._retrying,
            recorder=self._recorder,
            on_complete=on_complete,
            callback_lease=float(callback_lease),
            on_expired=on_expired,
            retain_for=_retention(retain_for),
            clock=clock,
        )
        self._infos = BatchInfoCache(client, self._writer, self._retrying)
        self._closed = False
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
        )
        self._runner = GroupRunner(
            self._writer,
            self._finaliser,
            self._recorder,
            self._validator,
            retry=self._retry,
            clock=clock,
            rng=self._rng,
            rate=make_rate_limiter(rate_limit),
            max_group_size=max_group_size if coalesce else 1,
            max_in_flight=max_in_flight,
            linger=linger,
            expected_count=self._expected_count,
            deliver_owed=self._deliver_owed,
        )
        self._tracer = tracer

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, *, drain_timeout: float | None = None) -> None:
        """Stop accepting completions, drain writes in flight, then fail what is left.

        Args:
            drain_timeout: Seconds to wait for queued and in-flight groups to finish
                (default: the retry deadline). After it, queued callers and groups
                still in flight get ``ManagerClosedError``; a transaction cut short
                either committed whole or not at all, so recording again is safe.
        """
        self._closed = True
        await self._runner.aclose(self._retry.deadline if drain_timeout is None else drain_timeout)
        await self._validator.aclose()
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

    # -- public operations -----------------------------------------------------------

    async def create_batch(
        self,
        batch_id: str,
        *,
        expected_players: Sequence[str] | None = None,
        expected_count: int | None = None,
        deadline: dt.datetime | dt.timedelta | None = None,
    ) -> bool:
        """Create the batch document with its expected completions.

        Give exactly one of ``expected_players`` (the roster: a completion for a
        player outside it is refused with ``UnexpectedPlayerError``, and
        ``BatchProgress.missing_players`` names who is missing) or
        ``expected_count``. Creating a batch that exists with the same expected
        count is a no-op (so a restarted coordinator may call it again).

        Args:
            batch_id: The batch id (a Firestore document id).
            expected_players: The players expected to complete (the roster).
            expected_count: How many completions complete the batch (no roster).
            deadline: When the batch expires if unfinished: an aware datetime, or a
                timedelta from now. Once past, the next completion, progress read,
                wait or ``expire`` moves it to ``expired``.

        Returns:
            True if this call created the batch, False if it already existed.

        Raises:
            InvalidIdError: A batch or player id Firestore cannot store.
            DuplicatePlayerError: ``expected_players`` repeats a player.
            InvalidCountError: ``expected_count`` not a positive int.
            InvalidInputError: ``deadline`` is not an aware datetime or a timedelta.
            LegacyArrayLimitError: Too many players for the legacy array in this mode.
            BatchExistsError: The batch exists with another expected count.
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
        data, chunks, count = new.document, new.roster_chunks, new.info.expected
        # The call's id, stored with the batch: when the answer to the create is lost,
        # the retry's ALREADY_EXISTS is this call's own write, not someone else's.
        data[f.CREATED_BY] = call_id = new_write_id()
        ref = self._writer.batch_ref(batch_id)

        async def create() -> None:
            write = self._client.batch()  # the batch and its roster chunks, atomically
            write.create(ref, data)
            for index, chunk in enumerate(chunks):
                write.set(
                    roster_ref(self._writer, batch_id, index), {f.ROSTER_CHUNK_PLAYERS: chunk}
                )
            await write.commit(retry=None)

        try:
            await self._retrying(create, f"creating batch {batch_id!r}")
            created = True
        except gexc.Conflict:
            snap = await self._retrying(
                lambda: ref.get(field_paths=[f.EXPECTED_COUNT, f.CREATED_BY], retry=None),
                f"reading batch {batch_id!r}",
            )
            existing = snap.to_dict() or {}
            created = existing.get(f.CREATED_BY) == call_id
            if existing.get(f.EXPECTED_COUNT) != count:
                raise BatchExistsError(
                    f"batch {batch_id!r} already exists with "
                    f"expected_count={existing.get(f.EXPECTED_COUNT)}, not {count}"
                ) from None
        if created:
            self._infos.remember(batch_id, new.info)
        if data.get(f.COMPLETIONS_BACKFILLED) and created:
            self._writer.remember_backfilled(batch_id)
        return created

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
        any concurrency: concurrent completions of one batch share transactions.

        Args:
            batch_id: The batch, created by ``create_batch``.
            player: The player id (a Firestore document id).
            predictions_count: A non-negative int.
            timeout: Seconds to wait for the result (default: the retry deadline).

        Returns:
            This completion's outcome; ``batch_completed`` is True for the one call
            that finalised the batch.

        Raises:
            InvalidIdError: Bad batch or player id; nothing written.
            InvalidCountError: Bad count; nothing written.
            BatchNotFoundError: The batch was never created; nothing written.
            RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
            CompletionTimeoutError: ``timeout`` passed first (recorded whole or not at all).
            ManagerClosedError: The manager is closed, or closed before confirming it.
            WriteFailedError: Firestore refused the write; nothing written.
        """
        async with completion_span(self._tracer, batch_id, player) as span:
            result = await self._record(batch_id, player, predictions_count, timeout)
            span.set_result(result)
        return result

    async def get_progress(self, batch_id: str, *, include_players: bool = True) -> BatchProgress:
        """Read a batch's progress from the structure this mode reads.

        A batch whose deadline has passed is expired first.

        Args:
            batch_id: The batch.
            include_players: Also list the recorded and the missing players. For a
                batch with a roster of up to 1,000 players in a subcollection-read
                mode this is one point read per roster player (one RPC); beyond, or
                without a roster, it lists every completion document's id.

        Raises:
            BatchNotFoundError: No such batch.
        """
        validate_id("batch id", batch_id)
        ref = self._writer.batch_ref(batch_id)
        for _ in range(2):
            snap = await self._retrying(lambda: ref.get(retry=None), f"reading batch {batch_id!r}")
            if not snap.exists:
                raise BatchNotFoundError(f"batch {batch_id!r} does not exist")
            data = snap.to_dict() or {}
            progress = progress_from(batch_id, self.mode, data)
            if not (
                progress.deadline
                and not progress.is_terminal
                and self._clock.now() >= progress.deadline
            ):
                break
            await self._expire_overdue(batch_id)
        if not include_players:
            return dataclasses.replace(progress, completed_players=(), missing_players=())
        info = await self._infos.get(batch_id)
        if info.roster is not None:
            recorded = await self._retrying(
                lambda: recorded_players(
                    self._client, self._writer, self.mode, batch_id, info.roster, data
                ),
                f"listing batch {batch_id!r}",
            )
            return dataclasses.replace(
                progress,
                completed_players=tuple(sorted(recorded)),
                missing_players=tuple(sorted(info.roster - recorded)),
            )
        if self.mode.reads_subcollection:
            players = await self._retrying(
                lambda: self._subcollection_players(batch_id), f"listing batch {batch_id!r}"
            )
            progress = dataclasses.replace(progress, completed_players=players)
        return progress

    async def expire(self, batch_id: str, *, reason: str | None = None) -> bool:
        """Move an unfinished batch to the terminal status ``expired``, exactly once.

        Stores the reason and (with a roster) the missing players, at most 1,000 of
        them (``missing_count`` has them all). Across processes exactly one call
        returns True, and it runs ``on_expired`` (owed durably like ``on_complete``).
        A batch whose every completion is already recorded is not expired: it
        completes (an expiry racing the last completion ends in exactly one
        terminal status, and the last completion's caller is told it completed).
        Completions arriving afterwards are stored and counted, answered ``LATE``,
        and never finalise the batch.

        Returns:
            True for the one call that expired the batch.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
        """
        validate_id("batch id", batch_id)
        info = await self._infos.get(batch_id)
        why = reason if reason is not None else "expired"

        async def fields(progress: BatchProgress, data: dict[str, Any]) -> dict[str, Any]:
            missing: list[str] = []
            if info.roster is not None:
                recorded = await recorded_players(
                    self._client, self._writer, self.mode, batch_id, info.roster, data
                )
                missing = sorted(info.roster - recorded)
            return {
                f.EXPIRED_REASON: why,
                f.MISSING_PLAYERS: missing[: f.MISSING_KEPT],
                f.MISSING_COUNT: progress.remaining,
            }

        finished, owed = await self._finaliser.finish(batch_id, f.STATUS_EXPIRED, fields)
        if finished is None:
            # Finished already, or complete: the completion that completed it finalises
            # it (or, if that writer died, the next touch does). One terminal status.
            if owed:
                await self._deliver_owed(batch_id)
            return False
        info.terminal = True
        await self._finaliser.notify(batch_id, finished)
        return True

    async def list_batches(
        self,
        *,
        status: str | None = None,
        created_before: dt.datetime | None = None,
        limit: int | None = None,
        page_size: int = 300,
    ) -> AsyncIterator[BatchProgress]:
        """The batches of this collection, as progress without players, oldest id first.

        Single-field queries only (no composite index to deploy): by ``status``
        (``created_before`` then filtered here), else by ``created_at``.

        Args:
            status: Only batches with this status (``in_progress``, ``complete``,
                ``expired``).
            created_before: Only batches created before this aware datetime.
            limit: Yield at most this many.
            page_size: Documents per query page.

        Raises:
            InvalidInputError: ``limit`` or ``page_size`` below 1, a naive datetime.
        """
        if (limit is not None and limit < 1) or page_size < 1:
            raise InvalidInputError("limit and page_size must be >= 1")
        if created_before is not None and created_before.tzinfo is None:
            raise InvalidInputError("created_before must be an aware datetime (e.g. UTC)")
        fields = [
            f.EXPECTED_COUNT,
            f.STATUS,
            f.COMPLETED_COUNT,
            f.TOTAL_PREDICTIONS,
            f.TOTAL_PREDICTIONS_SUBCOLL,
            f.FINALISED_BY,
            f.DEADLINE,
            f.CREATED_AT,
            f.COMPLETED_AT,
            f.EXPIRED_REASON,
            f.MISSING_PLAYERS,
        ]
        if self.mode is MigrationMode.LEGACY:  # no counter: the array is the count
            fields.append(f.COMPLETED_PLAYERS)
        base = self._client.collection(self._layout.collection)
        if status is not None:
            query = base.where(filter=FieldFilter(f.STATUS, "==", status))
        elif created_before is not None:
            query = base.where(filter=FieldFilter(f.CREATED_AT, "<", created_before)).order_by(
                f.CREATED_AT
            )
        else:
            query = base.order_by(FieldPath.document_id())
        query = query.select(fields).limit(page_size)
        yielded = 0
        last = None
        while True:
            page = query if last is None else query.start_after(last)
            snaps: list[Any] = await self._retrying(
                partial(page.get, retry=None), "listing batches"
            )
            for snap in snaps:
                progress = progress_from(snap.id, self.mode, snap.to_dict() or {})
                created = progress.created_at
                if created_before is not None and (created is None or created >= created_before):
                    continue
                yield dataclasses.replace(progress, completed_players=())
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if len(snaps) < page_size:
                return
            last = snaps[-1]

    def stalled(self, older_than: dt.timedelta | float) -> AsyncIterator[BatchProgress]:
        """In-progress batches created more than ``older_than`` ago (seconds or a timedelta).

        Raises:
            InvalidInputError: A negative age.
        """
        age = (
            older_than if isinstance(older_than, dt.timedelta) else dt.timedelta(seconds=older_than)
        )
        if age < dt.timedelta(0):
            raise InvalidInputError("older_than must be >= 0")
        return self.list_batches(
            status=f.STATUS_IN_PROGRESS, created_before=self._clock.now() - age
        )

    async def validate(self, batch_id: str) -> ConsistencyReport:
        """Compare the batch's legacy array with its completions subcollection.

        One consistent snapshot (a read-only transaction): the batch document,
        ``count()``/``sum()`` aggregations over the completion documents and, when
        both structures exist, the completion ids. Judged under this manager's mode.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
        """
        return await validate(
            self._client, self._layout, self.mode, batch_id, retry=self._retry, clock=self._clock
        )

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
            BatchNotFoundError: No such batch.
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

    async def wait_until_complete(
        self, batch_id: str, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> BatchProgress:
        """Wait until the batch is finished (complete or expired); its final progress.

        Wakes at once when this process finishes the batch, and polls otherwise
        (another process may finish it). If every completion is recorded but
        nobody finalised (the finaliser crashed), this call finalises it; if its
        deadline passed, it expires it; an owed callback whose lease expired runs
        here too. An expired batch's progress is returned, not waited on.
        Nothing about the batch is kept once the call returns.

        Raises:
            BatchNotFoundError: No such batch.
            CompletionTimeoutError: ``timeout`` seconds passed first.
        """
        validate_id("batch id", batch_id)
        with self._finaliser.waiter(batch_id) as event:
            try:
                async with self._clock.timeout(timeout):
                    while True:
                        progress, _ = await self._retrying(
                            lambda: self._finaliser.read(batch_id), f"reading batch {batch_id!r}"
                        )
                        overdue = (
                            progress.deadline is not None and self._clock.now() >= progress.deadline
                        )
                        if not progress.is_terminal and (progress.is_complete or overdue):
                            if progress.is_complete:
                                await self.finalize(batch_id)
                            else:
                                await self._expire_overdue(batch_id)
                            progress, _ = await self._finaliser.read(batch_id)
                        if progress.is_terminal:
                            await self._deliver_owed(batch_id)
                            return await self.get_progress(batch_id)
                        await wait_event(self._clock, event, poll_interval)
            except TimeoutError:
                raise CompletionTimeoutError(
                    f"batch {batch_id!r} was not complete within {timeout}s"
                ) from None

    async def finalize(self, batch_id: str) -> bool:
        """Finalise the batch if every completion is recorded and nobody has yet.

        Runs automatically after completions; call it to recover a batch whose
        finaliser crashed. Exactly one call across all processes returns True
        (and runs ``on_complete``). On a finalised batch it runs an owed
        ``on_complete`` whose lease expired.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
        """
        validate_id("batch id", batch_id)
        flipped, owed = await self._finaliser.flip(batch_id)
        if flipped is not None:
            await self._finaliser.notify(batch_id, flipped)
            return True
        if owed:
            await self._deliver_owed(batch_id)
        return False

    async def deliver_owed_callbacks(self, batch_id: str) -> bool:
        """Run ``on_complete`` for a finalised batch whose callback is still owed.

        A callback is owed from the flip until it returns; if the process running
        it died (or the manager closed first), the callback stays owed. Any
        manager with an ``on_complete`` may run it once ``callback_lease`` passed.

        Returns:
            True if this call ran the callback.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
        """
        validate_id("batch id", batch_id)
        return await self._finaliser.deliver_owed(batch_id)

    # -- internals -------------------------------------------------------------------

    async def _record(
        self, batch_id: str, player: str, predictions_count: int, timeout: float | None
    ) -> CompletionResult:
        started = self._clock.monotonic()
        self._check_open()
        validate_id("batch id", batch_id)
        validate_player(self.mode, player)
        count = validate_count("predictions_count", predictions_count)
        info = await self._infos.get(batch_id)  # cached per batch: one read at most
        if info.roster is not None and player not in info.roster:
            raise UnexpectedPlayerError(
                f"player {player!r} is not in the roster of batch {batch_id!r}; nothing written"
            )
        # Increment saturates at 2**63 - 1 instead of failing: refuse a count that
        # could take the batch's total there.
        most = f.MAX_COUNT // max(info.expected, 1)
        if count > most:
            raise InvalidCountError(
                f"predictions_count {count} could overflow the 64-bit total of batch "
                f"{batch_id!r} ({info.expected} completions of at most {most})"
            )
        if info.deadline is not None and not info.terminal and self._clock.now() >= info.deadline:
            await self._expire_overdue(batch_id)
        wait = self._retry.deadline if timeout is None else timeout
        return await self._runner.record(batch_id, Completion(player, count), wait, started)

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the manager is closed")

    async def _retrying(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        result, _ = await run_with_retry(
            call, self._retry, what=what, clock=self._clock, rng=self._rng
        )
        return result

    async def _deliver_owed(self, batch_id: str) -> None:
        try:
            await self._finaliser.deliver_owed(batch_id)
        except Exception:
            logger.exception(
                "running the owed callback of batch %r failed",
                batch_id,
                extra={"batch_id": batch_id},
            )

    async def _expected_count(self, batch_id: str) -> int:
        return (await self._infos.get(batch_id)).expected

    async def _expire_overdue(self, batch_id: str) -> None:
        """Expire a batch whose deadline passed (once per process: then it is terminal)."""
        await self.expire(batch_id, reason="deadline passed")
        (await self._infos.get(batch_id)).terminal = True

    async def _subcollection_players(self, batch_id: str) -> tuple[str, ...]:
        query = (
            self._writer.batch_ref(batch_id)
            .collection(self._layout.completions)
            .select([FieldPath.document_id()])
        )
        return tuple(sorted([snap.id async for snap in query.stream()]))
