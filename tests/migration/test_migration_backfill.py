"""Backfill on the emulator: completion documents from the legacy array, resumable, per-batch failures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1 import ArrayUnion
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.base_query import FieldFilter

from async_batchstate import (
    InvalidIdError,
    Layout,
    MigrationMode,
)
from async_batchstate.migration import (
    Checkpoint,
    FileCheckpoint,
    FirestoreCheckpoint,
    MigrationError,
    MigrationProgress,
    backfill,
    verify,
)
from async_batchstate.testing import FakeClock

from ..helpers import (
    COMPLETIONS_BACKFILLED,
    ManagerFactory,
    fail_one_batch,
    read_batch,
    read_completions,
    seed_legacy,
    sum_field,
)

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


async def test_backfill_creates_missing_docs_and_counters(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Each array player gets a completion doc with its map count; counters match; marked."""
    await seed_legacy(firestore_client, batch_collection, 2)
    layout = Layout(batch_collection)

    summary = await backfill(firestore_client, layout, DUAL)

    doc = await read_batch(firestore_client, batch_collection, "b00000")
    completions = await read_completions(firestore_client, batch_collection, "b00000")
    assert (2, 6) == (summary.batches, summary.completions_created)
    assert {"p0": 1, "p1": 2, "p2": 3} == {
        k: v["predictions_count"] for k, v in completions.items()
    }
    assert (3, 6, 6) == (
        doc["completed_count"],
        doc["total_predictions_subcoll"],
        doc["total_predictions"],
    )
    assert doc[COMPLETIONS_BACKFILLED] is True
    assert (await verify(firestore_client, layout, DUAL)).ok


async def test_backfill_twice_creates_nothing_the_second_time(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Idempotent: a second run finds every doc and changes nothing."""
    await seed_legacy(firestore_client, batch_collection, 3)
    layout = Layout(batch_collection)
    await backfill(firestore_client, layout, DUAL)
    before = await read_batch(firestore_client, batch_collection, "b00001")

    again = await backfill(firestore_client, layout, DUAL)

    assert (0, 0) == (again.completions_created, again.changed)
    assert before == await read_batch(firestore_client, batch_collection, "b00001")


async def test_backfill_keeps_completions_recorded_in_dual_write(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Players dual-written before the backfill are not created or counted again."""
    await seed_legacy(firestore_client, batch_collection, 1)
    manager = make_manager(mode=DUAL)
    await manager.record_completion("b00000", "late", predictions_count=10)

    summary = await backfill(firestore_client, Layout(batch_collection), DUAL)

    doc = await read_batch(firestore_client, batch_collection, "b00000")
    assert 3 == summary.completions_created
    assert (4, 16, 16) == (
        doc["completed_count"],
        doc["total_predictions_subcoll"],
        doc["total_predictions"],
    )


async def test_backfill_dry_run_writes_nothing(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A dry run counts what it would create and leaves the data alone."""
    await seed_legacy(firestore_client, batch_collection, 2)

    summary = await backfill(firestore_client, Layout(batch_collection), DUAL, dry_run=True)

    assert 6 == summary.completions_created
    assert {} == await read_completions(firestore_client, batch_collection, "b00000")
    assert "completed_count" not in await read_batch(firestore_client, batch_collection, "b00000")


async def test_backfill_batch_id_filter_touches_only_those(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """--batch-id: the other batches stay legacy-only."""
    await seed_legacy(firestore_client, batch_collection, 3)

    summary = await backfill(firestore_client, Layout(batch_collection), DUAL, batch_ids=["b00001"])

    assert 1 == summary.batches
    assert {} == await read_completions(firestore_client, batch_collection, "b00000")
    assert 3 == len(await read_completions(firestore_client, batch_collection, "b00001"))


async def test_backfill_refuses_legacy_mode(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """LEGACY writers would record players without docs behind the backfill's back."""
    with pytest.raises(MigrationError, match="DUAL_WRITE"):
        await backfill(firestore_client, Layout(batch_collection), MigrationMode.LEGACY)


async def test_backfill_leaves_player_without_count_and_does_not_mark(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """No count in predictions_by_player: no invented doc, no backfilled mark, reported."""
    await seed_legacy(firestore_client, batch_collection, 1)
    ref = firestore_client.collection(batch_collection).document("b00000")
    await ref.update({"completed_players": ArrayUnion(["nocount"])})

    summary = await backfill(firestore_client, Layout(batch_collection), DUAL)

    assert (("b00000", "nocount"),) == summary.unknown_counts
    assert not summary.ok
    assert COMPLETIONS_BACKFILLED not in await read_batch(
        firestore_client, batch_collection, "b00000"
    )


async def _backfilled(client: AsyncClient, collection: str) -> set[str]:
    """Ids of the batches that carry the backfilled mark."""
    query = client.collection(collection).where(
        filter=FieldFilter(COMPLETIONS_BACKFILLED, "==", True)
    )
    return {snap.id async for snap in query.stream()}


class _WatchedCheckpoint:
    """A ``Checkpoint`` that sets ``reached`` once a saved ``last_done`` is at least ``until``."""

    def __init__(self, inner: Checkpoint, until: str) -> None:
        self.inner = inner
        self.until = until
        self.reached = asyncio.Event()

    async def load(self) -> dict[str, Any] | None:
        return await self.inner.load()

    async def save(self, state: Mapping[str, Any]) -> None:
        await self.inner.save(state)
        if (state.get("last_done") or "") >= self.until:
            self.reached.set()


async def test_backfill_interrupted_then_resumed_does_exactly_the_rest(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Cancelled once its checkpoint passed 15 batches: the next run starts right after the
    saved checkpoint, handles exactly the batches after it, and every batch ends backfilled
    once, counts exact (what the interrupted run did past its checkpoint is not redone)."""
    batches = 40
    await seed_legacy(firestore_client, batch_collection, batches)
    ids = [f"b{i:05d}" for i in range(batches)]
    layout = Layout(batch_collection)
    checkpoint = _WatchedCheckpoint(FirestoreCheckpoint(firestore_client, layout), ids[14])
    first = asyncio.create_task(
        backfill(
            firestore_client,
            layout,
            DUAL,
            concurrency=4,
            checkpoint=checkpoint,
            checkpoint_interval=0.0,
        )
    )
    await checkpoint.reached.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    saved = await checkpoint.load()
    assert saved is not None
    assert (False, "dual_write") == (saved["finished"], saved["mode"])
    rest = [b for b in ids if b > saved["last_done"]]
    assert 0 < len(rest) <= batches - 15

    handled: list[str] = []
    second = await backfill(
        firestore_client,
        layout,
        DUAL,
        concurrency=4,
        checkpoint=checkpoint,
        progress=lambda p: handled.append(p.batch_id),
    )

    assert (saved["last_done"], len(rest), True) == (
        second.resumed_after,
        second.batches,
        second.ok,
    )
    assert rest == sorted(handled)
    assert set(ids) == await _backfilled(firestore_client, batch_collection)
    assert {"last_done": ids[-1], "finished": True, "mode": "dual_write"}.items() <= (
        await checkpoint.load() or {}
    ).items()
    checked = await verify(firestore_client, layout, DUAL)
    assert (batches, ()) == (checked.checked, checked.inconsistent)
    assert 3 * batches == await sum_field(firestore_client, batch_collection, "completed_count")
    assert 6 * batches == await sum_field(
        firestore_client, batch_collection, "total_predictions_subcoll"
    )


async def test_a_cancelled_backfill_returns_promptly(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Cancelling a backfill mid-run ends it at once: nothing is left waiting to be drained."""
    await seed_legacy(firestore_client, batch_collection, 30)
    some_done = asyncio.Event()

    def on_progress(p: MigrationProgress) -> None:
        if p.done >= 5:
            some_done.set()

    run = asyncio.create_task(
        backfill(
            firestore_client, Layout(batch_collection), DUAL, concurrency=1, progress=on_progress
        )
    )
    await some_done.wait()
    run.cancel()
    done, _ = await asyncio.wait({run}, timeout=2.0)

    assert {run} == done
    assert run.cancelled()


class _SavesCheckpoint:
    """A ``Checkpoint`` in memory that keeps every state saved."""

    def __init__(self) -> None:
        self.saves: list[dict[str, Any]] = []

    async def load(self) -> dict[str, Any] | None:
        return self.saves[-1] if self.saves else None

    async def save(self, state: Mapping[str, Any]) -> None:
        self.saves.append(dict(state))


async def test_backfill_saves_its_checkpoint_by_the_interval_of_its_clock(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """checkpoint_interval is measured on ``clock``: with half a fake second per batch and
    an interval of 1 s, every second batch is saved, then the finished run."""
    await seed_legacy(firestore_client, batch_collection, 6)
    clock = FakeClock()
    checkpoint = _SavesCheckpoint()

    summary = await backfill(
        firestore_client,
        Layout(batch_collection),
        DUAL,
        concurrency=1,
        checkpoint=checkpoint,
        checkpoint_interval=1.0,
        progress=lambda _: clock.advance(0.5),
        clock=clock,
    )

    assert (6, True) == (summary.batches, summary.ok)
    assert [
        ("b00001", False),
        ("b00003", False),
        ("b00005", False),
        ("b00005", True),
    ] == [(s["last_done"], s["finished"]) for s in checkpoint.saves]


async def test_file_checkpoint_resumes_after_saved_batch(
    firestore_client: AsyncClient, batch_collection: str, tmp_path: Path
) -> None:
    """A local checkpoint file left by an unfinished run makes the next run start after it."""
    await seed_legacy(firestore_client, batch_collection, 4)
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    await checkpoint.save({"last_done": "b00001", "finished": False})

    summary = await backfill(
        firestore_client, Layout(batch_collection), DUAL, checkpoint=checkpoint
    )

    assert ("b00001", 2) == (summary.resumed_after, summary.batches)
    assert {} == await read_completions(firestore_client, batch_collection, "b00000")
    assert {
        "last_done": "b00003",
        "finished": True,
        "mode": "dual_write",
    } == await checkpoint.load()


async def test_backfill_failure_of_one_batch_is_listed_and_the_checkpoint_stops_before_it(
    firestore_client: AsyncClient,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """One batch failing after the retries leaves the others backfilled, is listed with a
    one-line reason, and the checkpoint resumes before it (not "finished")."""
    await seed_legacy(firestore_client, batch_collection, 4)
    fail_one_batch(monkeypatch, "b00001")
    checkpoint = FileCheckpoint(tmp_path / "checkpoint.json")

    summary = await backfill(
        firestore_client, Layout(batch_collection), DUAL, concurrency=2, checkpoint=checkpoint
    )

    assert (4, 3, 9) == (summary.batches, summary.changed, summary.completions_created)
    assert ["b00001"] == [batch for batch, _ in summary.failures]
    assert "\n" not in summary.failures[0][1]
    assert {} == await read_completions(firestore_client, batch_collection, "b00001")
    assert 3 == len(await read_completions(firestore_client, batch_collection, "b00003"))
    assert {"last_done": "b00000", "finished": False, "mode": "dual_write"} == (
        await checkpoint.load()
    )


async def test_backfill_refuses_bad_batch_id_before_touching_anything(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """An id Firestore cannot store raises InvalidIdError itself (no ExceptionGroup), and the
    valid ids listed with it are not backfilled."""
    await seed_legacy(firestore_client, batch_collection, 1)

    with pytest.raises(InvalidIdError, match="must not contain '/'"):
        await backfill(
            firestore_client, Layout(batch_collection), DUAL, batch_ids=["b00000", "a/b"]
        )

    assert {} == await read_completions(firestore_client, batch_collection, "b00000")
