"""The public API as a user writes it, checked by mypy (``assert_type``); never executed.

If a refactoring changes a public signature or a result's field types, mypy
fails here before a user's type checker does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, assert_type

from google.cloud.firestore_v1.async_client import AsyncClient

import async_batchstate
from async_batchstate import (
    AsyncBatchStateManager,
    BatchNotFoundError,
    BatchProgress,
    BatchStateError,
    Clock,
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    InvalidInputError,
    ManagerClosedError,
    MigrationMode,
    OnComplete,
    RetryExhaustedError,
    RetryPolicy,
    Stats,
    SystemClock,
    WriteFailedError,
)
from async_batchstate.consistency import ConsistencyReport, ReconcileResult
from async_batchstate.instrumentation import Event, GroupCommitted, Hook
from async_batchstate.migration import FileCheckpoint, MigrationProgress
from async_batchstate.testing import (
    EmulatorInfo,
    FakeClock,
    FaultInjector,
    FaultPoint,
    batch_violations,
    make_client,
)


def moved_names() -> None:
    """Names 0.2 moved or removed are errors to a type checker, not ``Any``.

    The package's ``__getattr__`` (raising at run time, naming the new home) is hidden
    from type checkers. Were it visible, these lookups would type as ``Any`` and the
    ignores would be unused: an error under strict's ``warn_unused_ignores``.
    """
    from async_batchstate import AdaptiveLimit as removed  # type: ignore[attr-defined]
    from async_batchstate import FaultPoint as moved  # type: ignore[attr-defined]

    _ = (moved, removed, async_batchstate.ConsistencyReport)  # type: ignore[attr-defined]


def renamed_attributes(stats: Stats, progress: BatchProgress) -> None:
    """0.1's attribute names that 0.2 renamed are errors to a type checker, not ``Any``."""
    _ = stats.transactions  # type: ignore[attr-defined]
    _ = stats.aborts_by_cause  # type: ignore[attr-defined]
    _ = stats.batches_finalised  # type: ignore[attr-defined]
    _ = progress.is_finalised  # type: ignore[attr-defined]
    assert_type(stats.commits, int)
    assert_type(progress.is_finalized, bool)


async def on_complete(batch_id: str, progress: BatchProgress) -> None:
    assert_type(progress.finalization_key, str | None)


def sync_on_complete(batch_id: str, progress: BatchProgress) -> None:
    pass


def hook(event: Event) -> None:
    if isinstance(event, GroupCommitted):
        assert_type(event.group_size, int)


async def inject(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
    pass


async def record(client: AsyncClient) -> None:
    callbacks: list[OnComplete] = [on_complete, sync_on_complete]  # async or sync
    hooks: list[Hook] = [hook]
    injector: FaultInjector = inject
    retry = RetryPolicy(base_delay=0.05, max_delay=1.0, deadline=30.0, attempt_timeout=5.0)
    assert_type(retry.deadline, float)
    mode = MigrationMode.from_env()
    assert_type(mode, MigrationMode)
    assert_type(MigrationMode.from_env({"DUAL_WRITE_MODE": "true"}), MigrationMode)

    async with AsyncBatchStateManager(
        client,
        collection="prediction_batches",
        mode=mode,
        retry=retry,
        on_complete=callbacks[0],
        hooks=hooks,
        fault_injector=injector,
        max_group_size=100,
        linger=0.001,
    ) as manager:
        assert_type(manager, AsyncBatchStateManager)
        assert_type(await manager.create_batch("b", expected_players=["p1", "p2"]), bool)
        assert_type(await manager.create_batch("c", expected_count=3), bool)

        result = await manager.record_completion("b", "p1", 4, timeout=10)
        assert_type(result, CompletionResult)
        assert_type(result.status, CompletionStatus)
        assert_type(result.batch_completed, bool)
        assert_type(result.player, str)
        assert_type(result.attempts, int)
        assert_type(result.group_size, int)

        progress = await manager.get_progress("b", include_players=False)
        assert_type(progress, BatchProgress)
        assert_type(progress.completed_count, int)
        assert_type(progress.expected_count, int)
        assert_type(progress.total_predictions, int)
        assert_type(progress.completed_players, tuple[str, ...])
        assert_type(progress.is_complete, bool)
        assert_type(progress.is_finalized, bool)
        assert_type(await manager.wait_until_complete("b", timeout=30), BatchProgress)
        assert_type(await manager.finalize("b"), bool)

        report = await manager.validate("b")
        assert_type(report, ConsistencyReport)
        assert_type(report.is_consistent, bool)
        assert_type(report.problems, tuple[str, ...])
        repair = await manager.reconcile("b", dry_run=True)
        assert_type(repair, ReconcileResult)
        assert_type(repair.changed, bool)

        stats = manager.stats()
        assert_type(stats, Stats)
        assert_type(stats.recorded, int)
        assert_type(stats.latency_p99, float)

    try:
        await manager.record_completion("b", "p2", 1)
    except (CompletionTimeoutError, ManagerClosedError):
        pass  # recorded whole or not at all: deliver again
    except RetryExhaustedError as exc:
        assert_type(exc.attempts, int)
        assert_type(exc.last_cause, BaseException)
    except (BatchNotFoundError, InvalidInputError, WriteFailedError) as exc:
        assert_type(exc, BatchNotFoundError | InvalidInputError | WriteFailedError)
    except BatchStateError as exc:
        assert_type(exc, BatchStateError)
    await manager.aclose(drain_timeout=5)


async def testing_helpers(emulator: EmulatorInfo) -> None:
    clock = FakeClock()
    as_clock: Clock = clock
    assert_type(as_clock.monotonic(), float)
    assert_type(as_clock.now(), dt.datetime)
    async with as_clock.timeout(1.0):
        await as_clock.sleep(0.5)
    clock.advance(2.0)
    assert_type(clock.sleeps, list[float])
    real: Clock = SystemClock()
    async with real.timeout(None):
        pass
    client = make_client(emulator)
    assert_type(client, AsyncClient)
    manager = AsyncBatchStateManager(client, clock=clock, mode=MigrationMode.DUAL_WRITE)
    violations = await batch_violations(
        client, "prediction_batches", "b", manager.mode, expected={"p1": 4}
    )
    assert_type(violations, list[str])


async def migration(progress: MigrationProgress) -> None:
    assert_type(progress.done, int)
    assert_type(progress.total, int | None)
    assert_type(await FileCheckpoint("backfill.json").load(), dict[str, Any] | None)
