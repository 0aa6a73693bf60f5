"""``AsyncBatchStateManager``: the facade tying layout, writer, lanes, retry and limits together."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from . import _layout as f
from ._clock import SYSTEM_CLOCK, Clock
from ._coalesce import Lane, Pending
from ._config import MigrationMode
from ._consistency import (
    AlertHook,
    ConsistencyReport,
    ReconcileResult,
    SampledValidator,
    Source,
    reconcile,
    validate,
)
from ._errors import (
    BatchExistsError,
    BatchNotFoundError,
    BatchStateError,
    CompletionTimeoutError,
    ConfigurationError,
    DuplicatePlayerError,
    InvalidCountError,
    LegacyArrayLimitError,
    ManagerClosedError,
    WriteFailedError,
)
from ._finaliser import Finaliser, OnComplete, progress_from
from ._layout import Layout, validate_count, validate_id, validate_legacy_key
from ._limits import AdaptiveLimit, make_rate_limiter
from ._metrics import (
    AttemptFailed,
    GroupCommitted,
    GroupFailed,
    Hook,
    Recorder,
    Stats,
)
from ._otel import completion_span
from ._retry import AttemptFailure, ErrorKind, RetryPolicy, run_with_retry
from ._types import BatchProgress, CompletionResult, CompletionStatus
from ._writer import (
    Completion,
    FaultInjector,
    GroupOutcome,
    GroupState,
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
_LEGACY_MAX_BYTES = 1_048_576 - 48_576
"""Bytes of a batch document the legacy array and map may take (the rest: other fields)."""


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
        callback_lease: Seconds an owed callback is left to the process running it
            before another may run it (default 60).
        hooks: Receive every ``Event`` (attempts failed, groups committed, finalisations).
        legacy_array_limit: Most players a batch may hold in a mode that writes
            the legacy array (each player costs 3 of a document's 40,000 index
            entries and ~50 bytes of its 1 MiB). Larger batches are refused with
            ``LegacyArrayLimitError``: use ``SUBCOLLECTION_ONLY`` for them.
        legacy_array_warn_ratio: Fraction of ``legacy_array_limit`` at which
            ``create_batch`` logs a warning.
        clock: Time source for retries and deadlines (inject a fake one in tests).
        rng: Randomness for backoff jitter.
        fault_injector: Test seam called at each ``FaultPoint`` of a write attempt.
        validation_rate: Probability that a commit which recorded completions schedules
            a background consistency check of its batch (at most one per batch at a
            time; 0 disables).
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
        callback_lease: float = 60.0,
        hooks: Iterable[Hook] = (),
        legacy_array_limit: int = 12_000,
        legacy_array_warn_ratio: float = 0.8,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        fault_injector: FaultInjector | None = None,
        tracer: Tracer | None = None,
        validation_rate: float = 0.1,
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
        if legacy_array_limit < 1 or not 0.0 < legacy_array_warn_ratio <= 1.0:
            raise ConfigurationError("need legacy_array_limit >= 1 and 0 < warn ratio <= 1")
        if write_path not in ("auto", "transaction"):
            raise ConfigurationError(
                f"write_path must be 'auto' or 'transaction', not {write_path!r}"
            )
        if not (isinstance(callback_lease, int | float) and math.isfinite(callback_lease)):
            raise ConfigurationError("callback_lease must be a finite number of seconds")
        if callback_lease <= 0:
            raise ConfigurationError("callback_lease must be > 0 seconds")
        self._group_size = max_group_size if coalesce else 1
        if self.mode is MigrationMode.LEGACY:
            # LEGACY transactions read the hot batch document, so two of ours in flight
            # would wait on each other's locks.
            default_in_flight = 1
        elif not coalesce:
            default_in_flight = 32
        else:
            default_in_flight = 16 if write_path == "auto" else 2
        self._max_in_flight = (
            default_in_flight if max_in_flight_per_batch is None else max_in_flight_per_batch
        )
        if self._max_in_flight < 1:
            raise ConfigurationError("max_in_flight_per_batch must be >= 1")
        self._linger = linger
        self._retry = retry or RetryPolicy()
        self._rate = make_rate_limiter(rate_limit)
        self._legacy_limit = legacy_array_limit
        self._legacy_warn = int(legacy_array_limit * legacy_array_warn_ratio)
        self._legacy_warn_ratio = legacy_array_warn_ratio
        self._rng = rng or random.Random()
        self._clock = clock
        self._writer = GroupWriter(client, self._layout, self.mode, fault_injector, write_path)
        self._recorder = Recorder(tuple(hooks))
        self._finaliser = Finaliser(
            client,
            self._writer,
            self.mode,
            retry=self._retry,
            clock=clock,
            rng=self._rng,
            recorder=self._recorder,
            on_complete=on_complete,
            callback_lease=float(callback_lease),
        )
        self._lanes: dict[str, Lane] = {}
        self._untold: set[str] = set()
        """Batches this process finalised while the finalising caller had stopped waiting."""
        self._expected: dict[str, int] = {}
        self._closed = False
        self._validator = SampledValidator(
            client,
            self._layout,
            self.mode,
            rate=validation_rate,
            rng=validation_rng,
            alert_hooks=alert_hooks,
            retry=self._retry,
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
        lanes = list(self._lanes.values())
        timeout = self._retry.deadline if drain_timeout is None else drain_timeout
        try:
            async with asyncio.timeout(timeout):
                for lane in lanes:
                    await lane.drain()
        except TimeoutError:
            logger.warning("closing with writes still in flight; failing them")
        error = ManagerClosedError(
            "the manager closed before this completion was confirmed; it was recorded "
            "whole or not at all: record it again to be sure"
        )
        for lane in lanes:
            lane.cancel_all(error)
        for lane in lanes:
            await lane.drain()
        await self._validator.aclose()
        await self._writer.aclose()

    def __repr__(self) -> str:
        s = self._recorder
        queued = sum(len(lane.queue) for lane in self._lanes.values())
        in_flight = sum(lane.in_flight for lane in self._lanes.values())
        return (
            f"<AsyncBatchStateManager collection={self._layout.collection!r} "
            f"mode={self.mode.name} {'closed' if self._closed else 'open'} "
            f"lanes={len(self._lanes)} queued={queued} in_flight={in_flight} recorded={s.recorded} "
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
    ) -> bool:
        """Create the batch document with its expected number of completions.

        Give exactly one of ``expected_players`` or ``expected_count``. Creating a
        batch that exists with the same expected count is a no-op (so a restarted
        coordinator may call it again).

        Returns:
            True if this call created the batch, False if it already existed.

        Raises:
            InvalidIdError: A batch or player id Firestore cannot store.
            DuplicatePlayerError: ``expected_players`` repeats a player.
            InvalidCountError: ``expected_count`` not a positive int.
            LegacyArrayLimitError: Too many players for the legacy array in this mode.
            BatchExistsError: The batch exists with another expected count.
        """
        self._check_open()
        validate_id("batch id", batch_id)
        if (expected_players is None) == (expected_count is None):
            raise ConfigurationError("give exactly one of expected_players or expected_count")
        if expected_players is not None:
            if isinstance(expected_players, str):
                raise InvalidCountError("expected_players must be a sequence of ids, not a str")
            seen: set[str] = set()
            for player in expected_players:
                self._validate_player(player)
                if player in seen:
                    raise DuplicatePlayerError(
                        f"player {player!r} appears twice in expected_players"
                    )
                seen.add(player)
            expected_count = len(seen)
        count = validate_count("expected_count", expected_count, minimum=1)
        if self.mode.writes_legacy:
            if count > self._legacy_limit:
                raise LegacyArrayLimitError(
                    f"batch {batch_id!r} expects {count} players; the legacy array is limited to "
                    f"{self._legacy_limit} by Firestore's 1 MiB / 40,000 index-entry document "
                    "limits. Record it in MigrationMode.SUBCOLLECTION_ONLY instead"
                )
            # Bytes too, when the ids are known: each player is stored twice in the
            # document (array entry and map key, +1 byte each) plus an 8-byte int.
            size = sum(2 * len(p.encode("utf-8")) + 10 for p in expected_players or ())
            if size > _LEGACY_MAX_BYTES:
                raise LegacyArrayLimitError(
                    f"batch {batch_id!r}: its {count} player ids would take ~{size:,} bytes of "
                    f"the legacy array and map, over Firestore's 1 MiB document limit. Record it "
                    "in MigrationMode.SUBCOLLECTION_ONLY instead"
                )
            if count >= self._legacy_warn or size >= self._legacy_warn_ratio * _LEGACY_MAX_BYTES:
                logger.warning(
                    "batch %r expects %d players, near the legacy array limit of %d",
                    batch_id,
                    count,
                    self._legacy_limit,
                    extra={"batch_id": batch_id, "expected_count": count},
                )
        data: dict[str, Any] = {
            f.EXPECTED_COUNT: count,
            f.STATUS: f.STATUS_IN_PROGRESS,
            f.CREATED_AT: SERVER_TIMESTAMP,
            f.UPDATED_AT: SERVER_TIMESTAMP,
        }
        if self.mode.writes_legacy:
            data |= {f.COMPLETED_PLAYERS: [], f.PREDICTIONS_BY_PLAYER: {}, f.TOTAL_PREDICTIONS: 0}
        if self.mode.writes_subcollection:
            data |= {f.COMPLETED_COUNT: 0, f.TOTAL_PREDICTIONS_SUBCOLL: 0}
            if self.mode.writes_legacy:  # born with both structures: nothing to backfill
                data[f.COMPLETIONS_BACKFILLED] = True
        # The call's id, stored with the batch: when the answer to the create is lost,
        # the retry's ALREADY_EXISTS is this call's own write, not someone else's.
        data[f.CREATED_BY] = call_id = new_write_id()
        ref = self._writer.batch_ref(batch_id)
        try:
            await self._retrying(
                lambda: ref.create(data, retry=None), f"creating batch {batch_id!r}"
            )
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
        self._remember_expected(batch_id, count)
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

        Args:
            batch_id: The batch.
            include_players: Also list the recorded players (streams the
                subcollection in subcollection-read modes).

        Raises:
            BatchNotFoundError: No such batch.
        """
        validate_id("batch id", batch_id)
        ref = self._writer.batch_ref(batch_id)
        snap = await self._retrying(lambda: ref.get(retry=None), f"reading batch {batch_id!r}")
        if not snap.exists:
            raise BatchNotFoundError(f"batch {batch_id!r} does not exist")
        progress = progress_from(batch_id, self.mode, snap.to_dict() or {})
        if include_players and self.mode.reads_subcollection:
            players = await self._retrying(
                lambda: self._subcollection_players(batch_id), f"listing batch {batch_id!r}"
            )
            progress = dataclasses.replace(progress, completed_players=players)
        elif not include_players:
            progress = dataclasses.replace(progress, completed_players=())
        return progress

    async def validate(self, batch_id: str) -> ConsistencyReport:
        """Compare the batch's legacy array with its completions subcollection.

        One consistent snapshot (a read-only transaction): the batch document,
        ``count()``/``sum()`` aggregations over the completion documents and, when
        both structures exist, the completion ids. Judged under this manager's mode.

        Raises:
            InvalidIdError: Bad batch id.
            BatchNotFoundError: No such batch.
        """
        return await validate(self._client, self._layout, self.mode, batch_id, retry=self._retry)

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
        )

    async def wait_until_complete(
        self, batch_id: str, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> BatchProgress:
        """Wait until the batch is finalised and return its final progress.

        Wakes at once when this process finalises the batch, and polls otherwise
        (another process may finalise it). If every completion is recorded but
        nobody finalised (the finaliser crashed), this call finalises it; an owed
        ``on_complete`` whose lease expired runs here too. Nothing about the
        batch is kept once the call returns.

        Raises:
            BatchNotFoundError: No such batch.
            CompletionTimeoutError: ``timeout`` seconds passed first.
        """
        validate_id("batch id", batch_id)
        with self._finaliser.waiter(batch_id) as event:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        progress, _ = await self._retrying(
                            lambda: self._finaliser.read(batch_id), f"reading batch {batch_id!r}"
                        )
                        if progress.is_complete and not progress.is_finalised:
                            await self.finalize(batch_id)
                            progress, _ = await self._finaliser.read(batch_id)
                        if progress.is_finalised:
                            await self._deliver_owed(batch_id)
                            return await self.get_progress(batch_id)
                        try:
                            async with asyncio.timeout(poll_interval):
                                await event.wait()
                        except TimeoutError:
                            pass
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
        self._validate_player(player)
        count = validate_count("predictions_count", predictions_count)
        # Increment saturates at 2**63 - 1 instead of failing: refuse a count that
        # could take the batch's total there (cached per batch; one read at most).
        expected = await self._expected_count(batch_id)
        if count > f.MAX_COUNT // max(expected, 1):
            raise InvalidCountError(
                f"predictions_count {count} could overflow the 64-bit total of batch "
                f"{batch_id!r} ({expected} completions of at most {f.MAX_COUNT // expected})"
            )
        wait = self._retry.deadline if timeout is None else timeout
        lane = self._lane(batch_id)
        pending = Pending(Completion(player, count), deadline=started + wait)
        lane.submit(pending)
        try:
            async with asyncio.timeout(wait):
                result = await asyncio.shield(pending.future)
        except TimeoutError:
            arrived = self._settle(lane, pending)
            if arrived is None:
                self._recorder.failed += 1
                raise CompletionTimeoutError(
                    f"no confirmation for player {player!r} of batch {batch_id!r} within "
                    f"{wait}s; it was recorded whole or not at all: record it again to be sure"
                ) from None
            result = arrived  # the answer came in the very turn the timeout fired
        except asyncio.CancelledError:
            arrived = self._settle(lane, pending)
            if arrived is not None and arrived.batch_completed:
                self._hand_over(batch_id)  # never lost: the batch's next caller is told
            raise
        self._recorder.latencies.append(self._clock.monotonic() - started)
        return result

    @staticmethod
    def _settle(lane: Lane, pending: Pending) -> CompletionResult | None:
        """Stop waiting for ``pending``; its result if one arrived meanwhile."""
        future = pending.future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        lane.withdraw(pending)
        future.cancel()
        return None

    def _hand_over(self, batch_id: str) -> None:
        if len(self._untold) >= 10_000:  # bounded: a long-lived coordinator sees many batches
            self._untold.clear()
        self._untold.add(batch_id)

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the manager is closed")

    def _validate_player(self, player: object) -> None:
        validate_id("player id", player)
        if self.mode.writes_legacy:
            assert isinstance(player, str)
            validate_legacy_key(player)

    def _lane(self, batch_id: str) -> Lane:
        lane = self._lanes.get(batch_id)
        if lane is None:
            lane = Lane(
                batch_id,
                self._run_group,
                max_group_size=self._group_size,
                limit=AdaptiveLimit(self._max_in_flight),
                linger=self._linger,
                on_idle=self._drop_lane,
            )
            self._lanes[batch_id] = lane
        return lane

    def _drop_lane(self, lane: Lane) -> None:
        if self._lanes.get(lane.batch_id) is lane:
            del self._lanes[lane.batch_id]

    async def _retrying(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        result, _ = await run_with_retry(
            call, self._retry, what=what, clock=self._clock, rng=self._rng
        )
        return result

    async def _run_group(
        self,
        batch_id: str,
        group: list[Pending],
        limit: AdaptiveLimit,
        state: GroupState | None = None,
    ) -> None:
        """Write one group with retries and give every member its own outcome.

        Whatever happens (a cancellation included), every member's caller gets
        its result or an error before this returns.
        """
        try:
            await self._write_group(batch_id, group, limit, state or GroupState())
        finally:
            self._fail(
                batch_id,
                [p for p in group if not p.future.done()],
                ManagerClosedError(
                    "the manager closed while this completion was being written; it was "
                    "recorded whole or not at all: record it again to be sure"
                ),
            )

    async def _write_group(
        self, batch_id: str, group: list[Pending], limit: AdaptiveLimit, state: GroupState
    ) -> None:
        completions = [p.completion for p in group]
        started = self._clock.monotonic()
        budget = max(p.deadline for p in group) - started

        async def attempt() -> Any:
            self._recorder.attempts += 1
            if self._rate is not None:
                await self._rate.acquire()
            begun = self._clock.monotonic()
            outcome = await self._writer.write(batch_id, completions, state)
            limit.on_success(self._clock.monotonic() - begun)
            return outcome

        def on_failure(failure: AttemptFailure) -> None:
            if failure.kind in _CONTENTION:
                limit.on_contention()
            logger.debug(
                "attempt %d for %d completion(s) of batch %r failed: %s",
                failure.attempt,
                len(group),
                batch_id,
                failure.kind.value,
                extra={
                    "batch_id": batch_id,
                    "attempt": failure.attempt,
                    "kind": failure.kind.value,
                    "delay": failure.delay,
                },
            )
            self._recorder.emit(
                AttemptFailed(
                    batch_id,
                    len(group),
                    failure.attempt,
                    failure.kind,
                    failure.error,
                    failure.delay,
                )
            )

        try:
            outcome, attempts = await run_with_retry(
                attempt,
                self._retry,
                what=f"recording {len(group)} completion(s) of batch {batch_id!r}",
                deadline=max(budget, 0.001),
                clock=self._clock,
                rng=self._rng,
                on_failure=on_failure,
            )
        except BatchStateError as exc:
            if isinstance(exc, WriteFailedError) and len(group) > 1:
                await self._split(batch_id, group, limit, state)
            else:
                self._fail(batch_id, group, exc)
            return
        except Exception as exc:  # an unexpected error must still reach every caller
            if len(group) > 1:
                await self._split(batch_id, group, limit, state)
            else:
                wrapped = WriteFailedError(f"writing to batch {batch_id!r} failed: {exc!r}")
                wrapped.__cause__ = exc
                self._fail(batch_id, group, wrapped)
            return

        recorded = outcome.new_count
        self._recorder.emit(
            GroupCommitted(
                batch_id,
                len(group),
                recorded,
                len(group) - recorded,
                attempts,
                self._clock.monotonic() - started,
            )
        )
        flipped: BatchProgress | None = None
        owed = False
        try:
            flipped, owed = await self._finaliser.after_write(
                batch_id, outcome, self._expected_count
            )
        except Exception:
            # The completions are committed; a later completion, redelivery,
            # wait_until_complete() or finalize() finalises the batch.
            logger.exception(
                "finalisation check of batch %r failed", batch_id, extra={"batch_id": batch_id}
            )
        finally:
            # Tell every caller, even when cancelled mid-check: their writes are committed.
            self._resolve(batch_id, group, outcome, attempts, flipped is not None)
        if recorded:
            # Sampled per commit, not per completion: a hot batch commits groups of
            # hundreds, and a check per completion would rescan it continuously.
            self._validator.maybe_validate(batch_id)
        # The callback runs after the callers are told (its latency is not theirs); a
        # close cuts it after the drain timeout, and then it stays owed.
        if flipped is not None:
            await self._finaliser.notify(batch_id, flipped)
        elif owed:
            await self._deliver_owed(batch_id)

    def _resolve(
        self,
        batch_id: str,
        group: list[Pending],
        outcome: GroupOutcome,
        attempts: int,
        flipped: bool,
    ) -> None:
        """Give each caller its result; ``batch_completed`` to one if this group flipped."""
        waiting = [i for i, p in enumerate(group) if not p.future.done()]
        completer: int | None = None
        if flipped:
            new = [i for i in waiting if outcome.recorded[i]]
            candidates = new or waiting
            completer = candidates[-1] if candidates else None
            if completer is None:  # every caller stopped waiting: tell the batch's next one
                self._hand_over(batch_id)
        elif waiting and batch_id in self._untold:
            self._untold.discard(batch_id)
            completer = waiting[-1]
        for index, (pending, is_new) in enumerate(zip(group, outcome.recorded, strict=True)):
            if pending.future.done():
                continue
            if is_new:
                self._recorder.recorded += 1
            else:
                self._recorder.duplicates += 1
            pending.resolve(
                CompletionResult(
                    batch_id,
                    pending.completion.player,
                    CompletionStatus.RECORDED if is_new else CompletionStatus.DUPLICATE,
                    batch_completed=index == completer,
                    attempts=attempts,
                    group_size=len(group),
                )
            )

    async def _deliver_owed(self, batch_id: str) -> None:
        try:
            await self._finaliser.deliver_owed(batch_id)
        except Exception:
            logger.exception(
                "running the owed callback of batch %r failed",
                batch_id,
                extra={"batch_id": batch_id},
            )

    async def _split(
        self, batch_id: str, group: list[Pending], limit: AdaptiveLimit, state: GroupState
    ) -> None:
        """Retry each member alone, so one bad completion fails only its own caller.

        The members keep the group's write id: one its failed write recorded after
        all (an answer lost before the failure) is still this caller's RECORDED.
        """
        logger.warning(
            "a group of %d completions of batch %r failed; retrying each alone",
            len(group),
            batch_id,
            extra={"batch_id": batch_id, "group_size": len(group)},
        )
        for pending in group:
            await self._run_group(batch_id, [pending], limit, state)

    def _fail(self, batch_id: str, group: list[Pending], error: BaseException) -> None:
        if not group:
            return
        self._recorder.failed += len(group)
        self._recorder.emit(GroupFailed(batch_id, len(group), error))
        for pending in group:
            pending.fail(error)

    async def _expected_count(self, batch_id: str) -> int:
        expected = self._expected.get(batch_id)
        if expected is None:
            ref = self._writer.batch_ref(batch_id)
            snap = await self._retrying(
                lambda: ref.get(field_paths=[f.EXPECTED_COUNT], retry=None),
                f"reading batch {batch_id!r}",
            )
            if not snap.exists:
                raise BatchNotFoundError(
                    f"batch {batch_id!r} does not exist in {self._layout.collection!r}; "
                    "call create_batch first"
                )
            expected = int((snap.to_dict() or {}).get(f.EXPECTED_COUNT, 0))
            self._remember_expected(batch_id, expected)
        return expected

    def _remember_expected(self, batch_id: str, expected: int) -> None:
        if len(self._expected) >= 10_000:  # bounded: a long-lived coordinator sees many batches
            self._expected.clear()
        self._expected[batch_id] = expected

    async def _subcollection_players(self, batch_id: str) -> tuple[str, ...]:
        query = (
            self._writer.batch_ref(batch_id)
            .collection(self._layout.completions)
            .select([FieldPath.document_id()])
        )
        return tuple(sorted([snap.id async for snap in query.stream()]))
