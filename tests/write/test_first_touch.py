"""RPCs of a process's first completion for a batch against its later ones, per mode and
roster shape: the figures docs/performance.md ("A batch's first touch") states.

A first touch reads the batch's settings (expected count, roster, deadline, guard): one
BatchGetDocuments, and one more for a roster kept in chunk documents. In a mode that
writes completion documents its Commit goes beside that read, conditional on the batch's
``unchecked`` marker: it lands on a batch born guarded without roster or deadline (one
round trip), and is refused whole on any other (then the settings are checked and the
Commit sent again). After that a completion costs what its write path costs: one Commit
lock-free, a read and a conditional Commit where the legacy array must be read (LEGACY).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from google.api_core.exceptions import PermissionDenied, ServiceUnavailable
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionStatus,
    InvalidCountError,
    MigrationMode,
    UnexpectedPlayerError,
)
from async_batchstate._store import roster
from async_batchstate.testing import (
    EmulatorInfo,
    FaultPoint,
    RpcCounter,
    aclose_client,
    make_client,
)

from ..helpers import Injector, read_completions

ROSTERS = {
    "no roster": None,
    "inline roster": [f"p{i}" for i in range(100)],
    "chunked roster": [f"player-{i:08d}" for i in range(2_000)],  # > 16 KiB of ids
}
WARM = {
    MigrationMode.LEGACY: Counter(BatchGetDocuments=1, Commit=1),
    MigrationMode.DUAL_WRITE: Counter(Commit=1),
    MigrationMode.SUBCOLLECTION_ONLY: Counter(Commit=1),
}


@pytest.mark.parametrize("roster", list(ROSTERS))
@pytest.mark.parametrize("mode", list(WARM), ids=lambda m: m.name)
async def test_a_first_touch_costs_the_settings_read_and_then_what_a_warm_write_costs(
    mode: MigrationMode,
    roster: str,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A fresh process: its first completion of a batch sends the settings read (plus the
    roster's chunks where they are chunked) and then the warm write; its second sends
    the warm write only."""
    players = ROSTERS[roster]
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection, mode=mode)
    if players is None:
        await creator.create_batch("b", expected_count=3_000)
    else:
        await creator.create_batch("b", expected_players=players)
    await creator.aclose()
    first_player, second_player = ("p0", "p1") if players is None else players[:2]

    client = make_client(firestore_emulator)
    manager = AsyncBatchStateManager(
        client, collection=batch_collection, mode=mode, validation_rate=0.0
    )
    try:
        with RpcCounter().attach(client) as first:
            await manager.record_completion("b", first_player, 1)
        with RpcCounter().attach(client) as warm:
            await manager.record_completion("b", second_player, 1)
    finally:
        await manager.aclose()
        await aclose_client(client)

    settings = Counter(BatchGetDocuments=2 if roster == "chunked roster" else 1)
    refused = Counter(Commit=1 if mode.writes_subcollection and players is not None else 0)
    assert WARM[mode] == warm.counts
    assert WARM[mode] + settings + refused == first.counts


@contextlib.asynccontextmanager
async def fresh(
    firestore_emulator: EmulatorInfo, collection: str, **kwargs: Any
) -> AsyncIterator[tuple[AsyncBatchStateManager, AsyncClient]]:
    """A manager on a client of its own (a process that has read no batch yet), closed after."""
    client = make_client(firestore_emulator)
    kwargs.setdefault("validation_rate", 0.0)
    manager = AsyncBatchStateManager(client, collection=collection, **kwargs)
    try:
        yield manager, client
    finally:
        await manager.aclose()
        await aclose_client(client)


async def test_an_answer_lost_on_the_first_touch_is_recorded_once(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The first touch's Commit lands and its answer is lost (UNAVAILABLE after the commit):
    the retry finds its own write, the caller is told RECORDED once, a redelivery is a
    DUPLICATE, and the batch counts the player once."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=2)
    await creator.aclose()
    lost = Injector(FaultPoint.AFTER_COMMIT, ServiceUnavailable("injected: answer lost"), times=1)
    async with fresh(firestore_emulator, batch_collection, fault_injector=lost) as (
        manager,
        _client,
    ):
        first = await manager.record_completion("b", "p1", 4)
        again = await manager.record_completion("b", "p1", 4)
        progress = await manager.get_progress("b")
    assert 1 == lost.raised
    assert (CompletionStatus.RECORDED, CompletionStatus.DUPLICATE) == (first.status, again.status)
    assert (1, 4) == (progress.completed_count, progress.total_predictions)


async def test_a_first_touch_of_an_expired_batch_is_late(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch without roster or deadline, expired by ``expire()``: a process's first
    completion of it lands beside its settings read and is answered LATE, never finalizing."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=1)
    assert await creator.expire("b", reason="workers lost")
    await creator.aclose()
    async with fresh(firestore_emulator, batch_collection) as (manager, _client):
        late = await manager.record_completion("b", "p1", 1)
        progress = await manager.get_progress("b")
    assert (CompletionStatus.LATE, False) == (late.status, late.batch_completed)
    assert "expired" == progress.status


@pytest.mark.parametrize("shape", ["roster", "deadline"])
async def test_a_first_touch_of_a_batch_with_settings_to_check_writes_nothing_unchecked(
    shape: str,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A roster refuses an outsider on a first touch and writes nothing; a passed deadline
    expires the batch before the first touch's completion, which is then LATE."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    if shape == "roster":
        await creator.create_batch("b", expected_players=["p1", "p2"])
    else:
        await creator.create_batch("b", expected_count=2, deadline=dt.timedelta(milliseconds=1))
    await creator.aclose()
    await asyncio.sleep(0.01)
    async with fresh(firestore_emulator, batch_collection) as (manager, _client):
        if shape == "roster":
            with pytest.raises(UnexpectedPlayerError):
                await manager.record_completion("b", "outsider", 1)
            answer = None
        else:
            answer = await manager.record_completion("b", "p1", 1)
        progress = await manager.get_progress("b")
        stored = await read_completions(firestore_client, batch_collection, "b")
    if shape == "roster":
        assert ({}, 0) == (stored, progress.completed_count)
    else:
        assert answer is not None and CompletionStatus.LATE == answer.status
        assert "expired" == progress.status


async def test_a_batch_without_its_marker_takes_the_checked_path(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch that could have a marker but has none (made by an older version): the first
    touch's Commit is refused whole, the settings are checked, and the completion is
    recorded once."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=1)
    await creator.aclose()
    batch = firestore_client.collection(batch_collection).document("b")
    await batch.collection("roster").document("unchecked").delete()
    async with fresh(firestore_emulator, batch_collection) as (manager, client):
        with RpcCounter().attach(client) as rpcs:
            result = await manager.record_completion("b", "p1", 1)
        progress = await manager.get_progress("b")
    assert (CompletionStatus.RECORDED, True) == (result.status, result.batch_completed)
    assert 2 <= rpcs.counts["Commit"]  # the refused one, the recorded one (and the flip)
    assert progress.is_finalized and 1 == progress.completed_count


class HoldFirstGroup:
    """Holds the first group's attempt 0.2 s before it starts: the next caller queues behind."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_BEGIN:
            self.calls += 1
            if self.calls == 1:
                await asyncio.sleep(0.2)


@pytest.mark.parametrize("shape", ["roster", "deadline"])
async def test_callers_checked_and_unchecked_in_one_group_are_all_recorded(
    shape: str,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch with settings to check: the first caller's first touch is refused and it
    checks; a second caller queued unchecked meanwhile shares its next group. Both are
    RECORDED (the internal SettingsNeeded never reaches a caller)."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    if shape == "roster":
        await creator.create_batch("b", expected_players=[f"p{i}" for i in range(10)])
    else:
        await creator.create_batch("b", expected_count=10, deadline=dt.timedelta(hours=1))
    await creator.aclose()
    async with fresh(firestore_emulator, batch_collection, fault_injector=HoldFirstGroup()) as (
        manager,
        _client,
    ):
        first = asyncio.ensure_future(manager.record_completion("b", "p1", 1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(manager.record_completion("b", "p2", 1))
        results = await asyncio.gather(first, second, return_exceptions=True)
        failures = manager.stats().failures_by_cause
    assert [CompletionStatus.RECORDED] * 2 == [getattr(r, "status", r) for r in results]
    assert not failures  # checking a batch's settings is not a failure


async def test_a_first_touch_whose_settings_read_fails_after_its_commit_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The first touch's Commit lands; the settings read beside it is refused. The caller
    is told RECORDED (its write landed), and the batch, complete, is finalized."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=1)
    await creator.aclose()
    real = roster.BatchInfoCache._read
    reads = 0

    async def refused_once(self: roster.BatchInfoCache, batch_id: str) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            await asyncio.sleep(0.3)  # answered after the Commit
            raise PermissionDenied("injected: read refused")
        return await real(self, batch_id)

    monkeypatch.setattr(roster.BatchInfoCache, "_read", refused_once)
    async with fresh(firestore_emulator, batch_collection) as (manager, _client):
        result = await manager.record_completion("b", "p1", 1)
        progress = await manager.wait_until_complete("b", timeout=10)
    assert CompletionStatus.RECORDED == result.status
    assert progress.is_finalized and 1 == progress.completed_count


async def test_a_marker_left_under_a_batch_id_is_not_inherited(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch document deleted without its subcollections (a TTL policy, by hand), the id
    created again with a roster: the old marker is gone, so an outsider's first touch is
    refused, not recorded unchecked."""
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await creator.create_batch("b", expected_count=1)
    await firestore_client.collection(batch_collection).document("b").delete()
    await creator.create_batch("b", expected_players=["p1", "p2"])
    await creator.aclose()
    async with fresh(firestore_emulator, batch_collection) as (manager, _client):
        with pytest.raises(UnexpectedPlayerError):
            await manager.record_completion("b", "outsider", 1)
    assert {} == await read_completions(firestore_client, batch_collection, "b")


async def test_the_largest_count_is_judged_alike_first_touch_or_not(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """At the edge of the count bound (expected 2**31, a count of 2**32) a first touch and a
    later completion get the same answer."""
    mode = MigrationMode.SUBCOLLECTION_ONLY
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection, mode=mode)
    await creator.create_batch("b", expected_count=2**31)
    await creator.aclose()
    async with fresh(firestore_emulator, batch_collection, mode=mode) as (manager, _):
        for player in ("p1", "p2"):  # a first touch, then a completion with settings held
            with pytest.raises(InvalidCountError):
                await manager.record_completion("b", player, 2**32)
