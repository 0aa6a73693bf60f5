"""One transaction that records a group of completions of one batch.

The transaction never reads the hot batch document in the modes that write
the subcollection: it reads only the group's completion documents (to skip
the ones that exist: idempotency), creates the new ones and applies ONE
batch-document update made of transforms (``Increment``, ``ArrayUnion``,
server timestamps), which needs no read. Concurrent transactions on the same
batch then contend only on the completion documents they share. In LEGACY
mode there are no completion documents, so the batch document's
``completed_players`` array is the only record of what was counted and is
read in the transaction.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP, ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional
from google.cloud.firestore_v1.field_path import FieldPath

from . import _layout as f
from ._config import MigrationMode
from ._errors import BatchNotFoundError, WriteFailedError
from ._layout import Layout


class FaultPoint(enum.Enum):
    """Steps of one write attempt at which a ``fault_injector`` is called."""

    BEFORE_BEGIN = "before_begin"
    AFTER_READS = "after_reads"
    BEFORE_COMMIT = "before_commit"
    """All writes are staged in the transaction; nothing is committed."""
    AFTER_COMMIT = "after_commit"
    """The commit succeeded; no caller has been told yet."""


FaultInjector = Callable[[FaultPoint, str, Sequence[str]], Awaitable[None]]
"""``async (point, batch_id, players) -> None``; raise to inject a fault."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One worker's report: ``player`` finished with ``predictions_count`` predictions."""

    player: str
    predictions_count: int


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    """What one committed transaction did.

    Attributes:
        recorded: Per input completion, True if this transaction counted it.
        completed_count: The batch's count of distinct completions right after
            this commit, when the commit reports it (None if nothing was written).
    """

    recorded: tuple[bool, ...]
    completed_count: int | None = None

    @property
    def new_count(self) -> int:
        """Completions counted by this transaction."""
        return sum(self.recorded)


@dataclass(frozen=True, slots=True)
class _Staged:
    recorded: tuple[bool, ...]
    counter_index: int | None
    legacy_count: int | None


T = TypeVar("T")
P = ParamSpec("P")


async def run_transactional(
    fn: Callable[Concatenate[AsyncTransaction, P], Awaitable[T]],
    transaction: AsyncTransaction,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``async_transactional(fn)(transaction, ...)``, without hiding why an attempt failed.

    On any failure the plain client rolls back, and an error of that rollback
    replaces the real one (which survives only as ``__context__``): when
    ``begin_transaction`` itself failed or was cancelled it raises
    ``ValueError("... cannot be rolled back")``; after a connection reset its
    own retry may find the transaction already closed (``INTERNAL: Can't swap
    from CLOSED to ACTIVE``, ``INVALID_ARGUMENT: Transaction is invalid or
    closed``). That turned a retryable UNAVAILABLE into a fatal error and
    swallowed the ``CancelledError`` of a timeout or a task cancellation.
    Re-raise the real one.
    """
    try:
        return await async_transactional(fn)(transaction, *args, **kwargs)
    except Exception as exc:
        hidden = exc.__context__
        if exc.__cause__ is None and hidden is not None and _raised_by_rollback(exc):
            raise hidden from None
        raise


def _raised_by_rollback(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_rollback":
            return True
        tb = tb.tb_next
    return False


_CUT_OFF = (
    asyncio.CancelledError,
    TimeoutError,
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
)
"""Errors after which a begun transaction's rollback may not have reached the server."""


def _is_transform(value: object) -> bool:
    return value is SERVER_TIMESTAMP or isinstance(value, ArrayUnion | Increment)


class GroupWriter:
    """Builds and runs the one-transaction write of a group of completions."""

    def __init__(
        self,
        client: AsyncClient,
        layout: Layout,
        mode: MigrationMode,
        fault_injector: FaultInjector | None = None,
    ) -> None:
        self._client = client
        self._layout = layout
        self._mode = mode
        self._inject = fault_injector
        self._releases: set[asyncio.Task[None]] = set()
        self._backfilled_batches: set[str] = set()

    def batch_ref(self, batch_id: str) -> Any:
        """The batch document."""
        return self._client.collection(self._layout.collection).document(batch_id)

    def completion_ref(self, batch_id: str, player: str) -> Any:
        """The completion document of ``player`` in ``batch_id``."""
        return self.batch_ref(batch_id).collection(self._layout.completions).document(player)

    async def transact(
        self,
        fn: Callable[Concatenate[AsyncTransaction, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[T, AsyncTransaction]:
        """Run ``fn`` in ONE transaction attempt; the result and the committed transaction.

        If the attempt is cut off (timeout, cancellation, connection lost) after
        the transaction began, the plain client's rollback may have been lost
        with the connection. The server then keeps the abandoned transaction's
        locks until it expires (60 s idle), and every later attempt that reads
        the same document waits behind it: one network blip would block a
        player (or, for the batch document, a whole batch) for a minute. So the
        transaction is rolled back again in the background until that succeeds.
        """
        transaction = self._client.transaction(max_attempts=1)
        began: list[bytes] = []

        async def body(txn: AsyncTransaction, /, *a: P.args, **kw: P.kwargs) -> T:
            began.append(txn.id)
            return await fn(txn, *a, **kw)

        try:
            result = await run_transactional(body, transaction, *args, **kwargs)
        except _CUT_OFF:
            if began:
                self._release_later(began[-1])
            raise
        return result, transaction

    def _release_later(self, transaction_id: bytes) -> None:
        task = asyncio.get_running_loop().create_task(
            self._release(transaction_id), name="async-batchstate rollback"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, transaction_id: bytes) -> None:
        """Best-effort rollback of an abandoned transaction, bounded (~40 s in all)."""
        for attempt in range(8):
            orphan = self._client.transaction()
            # No public API rolls back by id; the server's answer is all that matters.
            orphan._id = transaction_id  # type: ignore[assignment]
            try:
                async with asyncio.timeout(2.0):
                    await orphan._rollback()
                return
            except (TimeoutError, gexc.ServiceUnavailable, gexc.DeadlineExceeded):
                await asyncio.sleep(min(4.0, 0.25 * 2**attempt))
            except Exception:  # already rolled back or expired: nothing holds a lock
                return

    async def aclose(self) -> None:
        """Stop background rollbacks (the server expires what they did not release)."""
        tasks = list(self._releases)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _fault(self, point: FaultPoint, batch_id: str, group: Sequence[Completion]) -> None:
        if self._inject is not None:
            await self._inject(point, batch_id, [c.player for c in group])

    async def write(self, batch_id: str, group: Sequence[Completion]) -> GroupOutcome:
        """Run ONE transaction attempt that records ``group`` (retries are the caller's).

        Within the group the first completion of a player wins; later ones
        with the same player are duplicates.

        Raises:
            BatchNotFoundError: The batch document does not exist; nothing was written.
            WriteFailedError: A non-retryable Firestore error; nothing was written.
            google.api_core.exceptions.GoogleAPICallError: Retryable errors, unchanged.
        """
        await self._fault(FaultPoint.BEFORE_BEGIN, batch_id, group)
        try:
            staged, transaction = await self.transact(self._stage, batch_id, group)
        except gexc.NotFound as exc:
            raise BatchNotFoundError(
                f"batch {batch_id!r} does not exist in {self._layout.collection!r}; "
                "call create_batch first"
            ) from exc
        except gexc.InvalidArgument as exc:
            if "invalid or closed" in str(exc):
                # The plain client retried a commit whose answer a dropped connection
                # lost, and the server had already committed (or expired) it: the
                # outcome is unknown, not refused. Retrying is safe (idempotent).
                unknown = f"transaction outcome unknown: {exc}"
                raise gexc.ServiceUnavailable(unknown) from exc  # type: ignore[no-untyped-call]
            raise WriteFailedError(f"Firestore refused the write to batch {batch_id!r}") from exc
        except (gexc.FailedPrecondition, gexc.PermissionDenied) as exc:
            raise WriteFailedError(f"Firestore refused the write to batch {batch_id!r}") from exc
        await self._fault(FaultPoint.AFTER_COMMIT, batch_id, group)
        count = staged.legacy_count
        if staged.counter_index is not None:
            # Increment's transform result is the counter's value after this commit:
            # the completion check needs no extra read of the hot document.
            batch_result = (transaction.write_results or [])[-1]
            count = int(batch_result.transform_results[staged.counter_index].integer_value)
        return GroupOutcome(staged.recorded, count)

    async def _stage(
        self, transaction: AsyncTransaction, batch_id: str, group: Sequence[Completion]
    ) -> _Staged:
        batch_ref = self.batch_ref(batch_id)
        first_index: dict[str, int] = {}
        for index, completion in enumerate(group):
            first_index.setdefault(completion.player, index)

        completions = batch_ref.collection(self._layout.completions)
        refs = {p: completions.document(p) for p in first_index}
        if self._mode.writes_subcollection:
            existing = {
                snap.reference.id
                async for snap in self._client.get_all(
                    list(refs.values()), transaction=transaction, retry=None
                )
                if snap.exists
            }
            if self._mode.writes_legacy and not await self._backfilled(batch_id):
                # Players recorded in LEGACY mode are in the array without a completion
                # doc: they are duplicates too, or Increment counts them twice.
                existing |= await self._legacy_players(transaction, batch_ref, batch_id)
        else:
            existing = await self._legacy_players(transaction, batch_ref, batch_id)
        await self._fault(FaultPoint.AFTER_READS, batch_id, group)

        new = [group[i] for p, i in first_index.items() if p not in existing]
        counter_index: int | None = None
        if new:
            for completion in new:
                if self._mode.writes_subcollection:
                    transaction.create(
                        refs[completion.player],
                        {
                            f.PLAYER_LOOKUP: completion.player,
                            f.PREDICTIONS_COUNT: completion.predictions_count,
                            f.COMPLETED_AT: SERVER_TIMESTAMP,
                        },
                    )
            update = self._batch_update(new)
            transaction.update(batch_ref, update)
            if self._mode.writes_subcollection:
                # The client sends a write's field transforms sorted by field path.
                transforms = sorted(
                    FieldPath.from_string(k) for k, v in update.items() if _is_transform(v)
                )
                counter_index = transforms.index(FieldPath(f.COMPLETED_COUNT))
        await self._fault(FaultPoint.BEFORE_COMMIT, batch_id, group)
        new_indexes = {first_index[c.player] for c in new}
        return _Staged(
            recorded=tuple(i in new_indexes for i in range(len(group))),
            counter_index=counter_index,
            legacy_count=None
            if self._mode.writes_subcollection or not new
            else len(existing) + len(new),
        )

    def remember_backfilled(self, batch_id: str) -> None:
        """Note that ``batch_id`` has a completion doc for every legacy player."""
        if len(self._backfilled_batches) >= 10_000:  # bounded for long-lived coordinators
            self._backfilled_batches.clear()
        self._backfilled_batches.add(batch_id)

    async def _backfilled(self, batch_id: str) -> bool:
        """Whether every player in the batch's legacy array has a completion document.

        A plain read outside the transaction: it takes no lock on the hot batch
        document, so the usual (flagged) batch keeps the read-free fast path.
        Once true it is remembered (batches this manager created are known
        without a read): the flag is only cleared by a LEGACY writer, which
        during a rollout may race with dual writers anyway (see README).
        """
        if batch_id in self._backfilled_batches:
            return True
        snap = await self.batch_ref(batch_id).get(
            field_paths=[f.COMPLETIONS_BACKFILLED], retry=None
        )
        done = bool(snap.exists and (snap.to_dict() or {}).get(f.COMPLETIONS_BACKFILLED) is True)
        if done:
            self.remember_backfilled(batch_id)
        return done

    async def _legacy_players(
        self, transaction: AsyncTransaction, batch_ref: Any, batch_id: str
    ) -> set[str]:
        async for snap in self._client.get_all(
            [batch_ref], field_paths=[f.COMPLETED_PLAYERS], transaction=transaction, retry=None
        ):
            if snap.exists:
                return set((snap.to_dict() or {}).get(f.COMPLETED_PLAYERS, ()))
        raise BatchNotFoundError(f"batch {batch_id!r} does not exist; call create_batch first")

    def _batch_update(self, new: Sequence[Completion]) -> dict[str, Any]:
        total = sum(c.predictions_count for c in new)
        data: dict[str, Any] = {}
        if self._mode.writes_legacy:
            data[f.COMPLETED_PLAYERS] = ArrayUnion([c.player for c in new])
            for c in new:
                data[f.player_field(c.player)] = c.predictions_count
            data[f.TOTAL_PREDICTIONS] = Increment(total)
            data[f.UPDATED_AT] = SERVER_TIMESTAMP
            if not self._mode.writes_subcollection:
                # This write adds players without completion documents.
                data[f.COMPLETIONS_BACKFILLED] = DELETE_FIELD
        if self._mode.writes_subcollection:
            data[f.COMPLETED_COUNT] = Increment(len(new))
            data[f.TOTAL_PREDICTIONS_SUBCOLL] = Increment(total)
            data[f.LAST_UPDATED] = SERVER_TIMESTAMP
        return data
