"""Migration tooling on the emulator: backfill, verify, status, cleanup-legacy, the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1 import ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from async_batchstate import (
    CompletionStatus,
    ConfigurationError,
    InvalidIdError,
    Layout,
    MigrationMode,
)
from async_batchstate.cli import main
from async_batchstate.consistency import reconcile, validate
from async_batchstate.migration._run import (
    COMPLETIONS_BACKFILLED,
    BatchState,
    Checkpoint,
    FileCheckpoint,
    FirestoreCheckpoint,
    MigrationError,
    MigrationProgress,
    backfill,
    cleanup_legacy,
    status,
    verify,
)
from async_batchstate.testing import EmulatorInfo, FakeClock

from .helpers import ManagerFactory, fail_one_batch, read_batch, read_completions

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


async def _seed_legacy(
    client: AsyncClient, collection: str, batches: int, players: int = 3
) -> None:
    """Batches as the old code left them: array, map and total only (raw batched writes)."""
    col = client.collection(collection)
    for start in range(0, batches, 500):
        writes = client.batch()
        for i in range(start, min(start + 500, batches)):
            names = [f"p{j}" for j in range(players)]
            writes.set(
                col.document(f"b{i:05d}"),
                {
                    "expected_count": players + 1,
                    "status": "in_progress",
                    "completed_players": names,
                    "predictions_by_player": {n: j + 1 for j, n in enumerate(names)},
                    "total_predictions": sum(range(1, players + 1)),
                },
            )
        await writes.commit()


async def _sum_field(client: AsyncClient, collection: str, name: str) -> int:
    rows = await client.collection(collection).sum(name, alias="s").get()
    return int(rows[0][0].value)


async def test_backfill_creates_missing_docs_and_counters(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Each array player gets a completion doc with its map count; counters match; marked."""
    await _seed_legacy(firestore_client, batch_collection, 2)
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


async def test_carriage_return_ids_survive_every_migration_step(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Players with CR (and their LF twins) recorded in LEGACY, then in DUAL_WRITE before the
    backfill: backfill copies each count, verify and reconcile find nothing to fix, and the
    subcollection reads the same progress after cleanup."""
    players = {"a\rb": 1, "a\nb": 2, "\r": 3, "c\r\nd": 4, "c\nd": 5}
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_count=len(players) + 1)
    for player in list(players)[:3]:
        await legacy.record_completion("b", player, players[player])
    dual = make_manager(mode=DUAL)
    for player in list(players)[3:]:
        await dual.record_completion("b", player, players[player])
    layout = Layout(batch_collection)
    assert (
        players
        == (await read_batch(firestore_client, batch_collection, "b"))["predictions_by_player"]
    )

    summary = await backfill(firestore_client, layout, DUAL)

    assert 3 == summary.completions_created
    completions = await read_completions(firestore_client, batch_collection, "b")
    assert players == {k: v["predictions_count"] for k, v in completions.items()}
    assert (await verify(firestore_client, layout, DUAL)).ok
    fixed = await reconcile(firestore_client, layout, DUAL, "b", dry_run=True)
    assert ((), (), ()) == (
        fixed.legacy_counts_fixed,
        fixed.completions_created,
        fixed.completions_updated,
    )
    before = await make_manager(mode=DUAL).get_progress("b")
    assert (await cleanup_legacy(firestore_client, layout, SUB_ONLY)).ok
    after = await make_manager(mode=SUB_ONLY).get_progress("b")
    assert (5, 15, sorted(players)) == (
        before.completed_count,
        before.total_predictions,
        list(before.completed_players),
    )
    assert (before.completed_count, before.total_predictions, before.completed_players) == (
        after.completed_count,
        after.total_predictions,
        after.completed_players,
    )


async def test_backfill_twice_creates_nothing_the_second_time(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Idempotent: a second run finds every doc and changes nothing."""
    await _seed_legacy(firestore_client, batch_collection, 3)
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
    await _seed_legacy(firestore_client, batch_collection, 1)
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
    await _seed_legacy(firestore_client, batch_collection, 2)

    summary = await backfill(firestore_client, Layout(batch_collection), DUAL, dry_run=True)

    assert 6 == summary.completions_created
    assert {} == await read_completions(firestore_client, batch_collection, "b00000")
    assert "completed_count" not in await read_batch(firestore_client, batch_collection, "b00000")


async def test_backfill_batch_id_filter_touches_only_those(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """--batch-id: the other batches stay legacy-only."""
    await _seed_legacy(firestore_client, batch_collection, 3)

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
    await _seed_legacy(firestore_client, batch_collection, 1)
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
    await _seed_legacy(firestore_client, batch_collection, batches)
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
    assert 3 * batches == await _sum_field(firestore_client, batch_collection, "completed_count")
    assert 6 * batches == await _sum_field(
        firestore_client, batch_collection, "total_predictions_subcoll"
    )


async def test_a_cancelled_backfill_returns_promptly(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Cancelling a backfill mid-run ends it at once: nothing is left waiting to be drained."""
    await _seed_legacy(firestore_client, batch_collection, 30)
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
    await _seed_legacy(firestore_client, batch_collection, 6)
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
    await _seed_legacy(firestore_client, batch_collection, 4)
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


# -- the checkpoint stores ------------------------------------------------------------------


async def test_file_checkpoint_loads_none_then_the_last_state_saved(tmp_path: Path) -> None:
    """No file: None. Each save replaces the whole state, atomically (no temporary file left)."""
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    assert None is await checkpoint.load()

    await checkpoint.save({"last_done": "b00001", "finished": False, "mode": "dual_write"})
    await checkpoint.save({"last_done": "b00007", "finished": True})

    assert {"last_done": "b00007", "finished": True} == await checkpoint.load()
    assert ["backfill.json"] == sorted(p.name for p in tmp_path.iterdir())


async def test_firestore_checkpoint_loads_none_then_the_last_state_saved(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A document ``<collection>_migration/<name>``: None before any save; each save replaces
    the state and stamps ``saved_at``; checkpoints of other names are independent."""
    layout = Layout(batch_collection)
    checkpoint = FirestoreCheckpoint(firestore_client, layout)
    other = FirestoreCheckpoint(firestore_client, layout, name="other")
    assert None is await checkpoint.load()

    await checkpoint.save({"last_done": "b00001", "finished": False, "mode": "dual_write"})
    await checkpoint.save({"last_done": "b00007", "finished": True})
    loaded = await checkpoint.load()

    assert loaded is not None
    assert {"last_done", "finished", "saved_at"} == loaded.keys()
    assert ("b00007", True) == (loaded["last_done"], loaded["finished"])
    assert isinstance(loaded["saved_at"], datetime)
    assert None is await other.load()
    snap = (
        await firestore_client.collection(f"{batch_collection}_migration")
        .document("backfill")
        .get()
    )
    assert snap.exists


async def test_firestore_checkpoint_refuses_a_bad_name(firestore_client: AsyncClient) -> None:
    """The name is a document id: validated like batch ids."""
    with pytest.raises(InvalidIdError):
        FirestoreCheckpoint(firestore_client, Layout("batches"), name="a/b")


async def test_a_finished_checkpoint_makes_the_next_backfill_start_over(
    firestore_client: AsyncClient, batch_collection: str, tmp_path: Path
) -> None:
    """After a finished run the next one walks every batch again (cheap: nothing to write)."""
    await _seed_legacy(firestore_client, batch_collection, 3)
    layout = Layout(batch_collection)
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    await backfill(firestore_client, layout, DUAL, checkpoint=checkpoint)

    again = await backfill(firestore_client, layout, DUAL, checkpoint=checkpoint)

    assert (None, 3, 0) == (again.resumed_after, again.batches, again.completions_created)


async def test_dry_runs_and_batch_id_runs_neither_read_nor_save_the_checkpoint(
    firestore_client: AsyncClient, batch_collection: str, tmp_path: Path
) -> None:
    """Only a full, real run moves the checkpoint; a stale one does not restrict the others."""
    await _seed_legacy(firestore_client, batch_collection, 3)
    layout = Layout(batch_collection)
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    stale = {"last_done": "b00002", "finished": False, "mode": "dual_write"}
    await checkpoint.save(stale)

    dry = await backfill(firestore_client, layout, DUAL, dry_run=True, checkpoint=checkpoint)
    one = await backfill(
        firestore_client, layout, DUAL, batch_ids=["b00000"], checkpoint=checkpoint
    )

    assert (None, 3) == (dry.resumed_after, dry.batches)
    assert (None, 1) == (one.resumed_after, one.batches)
    assert stale == await checkpoint.load()


async def _dual_batches(make_manager: ManagerFactory, count: int = 3) -> None:
    manager = make_manager(mode=DUAL)
    for i in range(count):
        await manager.create_batch(f"d{i}", expected_count=5)
        await manager.record_completion(f"d{i}", "p1", predictions_count=2)
        await manager.record_completion(f"d{i}", "p2", predictions_count=3)


async def _corrupt(client: AsyncClient, collection: str, batch_id: str) -> None:
    await (
        client.collection(collection)
        .document(batch_id)
        .update(
            {
                "completed_players": ArrayUnion(["ghost"]),
                FieldPath("predictions_by_player", "ghost").to_api_repr(): 1,
                "total_predictions": Increment(1),
                "completed_count": Increment(1),
            }
        )
    )


async def test_cleanup_refuses_while_a_batch_is_inconsistent(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """One bad batch: refused with its reasons, and no batch loses its legacy fields."""
    await _dual_batches(make_manager)
    await _corrupt(firestore_client, batch_collection, "d1")

    summary = await cleanup_legacy(firestore_client, Layout(batch_collection), SUB_ONLY)

    assert summary.refused
    assert {"d1"} == {batch for batch, _ in summary.reasons}
    for i in range(3):
        assert (
            LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, f"d{i}")).keys()
        )


async def test_cleanup_succeeds_after_repair_and_reads_stay_the_same(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """After reconcile the cleanup removes legacy fields; SUBCOLLECTION_ONLY progress unchanged."""
    await _dual_batches(make_manager)
    await _corrupt(firestore_client, batch_collection, "d1")
    layout = Layout(batch_collection)
    await reconcile(firestore_client, layout, DUAL, "d1")
    reader = make_manager(mode=SUB_ONLY)
    before = [await reader.get_progress(f"d{i}") for i in range(3)]

    summary = await cleanup_legacy(firestore_client, layout, SUB_ONLY)

    assert summary.ok
    assert ("d0", "d1", "d2") == summary.cleaned
    for i in range(3):
        assert (
            not LEGACY_FIELDS
            & (await read_batch(firestore_client, batch_collection, f"d{i}")).keys()
        )
    assert before == [await reader.get_progress(f"d{i}") for i in range(3)]


async def test_cleanup_refuses_outside_subcollection_only(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Writers still reading/writing the array: refused, nothing removed."""
    await _dual_batches(make_manager, 1)

    summary = await cleanup_legacy(
        firestore_client, Layout(batch_collection), MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS
    )

    assert summary.refused
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d0")).keys()


async def test_cleanup_dry_run_lists_and_keeps(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A dry run names the batches it would clean and removes nothing."""
    await _dual_batches(make_manager, 2)

    summary = await cleanup_legacy(
        firestore_client, Layout(batch_collection), SUB_ONLY, dry_run=True
    )

    assert ("d0", "d1") == summary.cleaned
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d0")).keys()


async def test_cleanup_failure_of_one_batch_is_listed_and_the_others_are_cleaned(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch whose removal keeps failing is in ``failures`` (not ``skipped``), keeps its
    legacy fields, and the other batches are cleaned."""
    await _dual_batches(make_manager, 3)
    raised = fail_one_batch(monkeypatch, "d1")

    summary = await cleanup_legacy(firestore_client, Layout(batch_collection), SUB_ONLY)

    assert (("d0", "d2"), ()) == (summary.cleaned, summary.skipped)
    assert ["d1"] == [batch for batch, _ in summary.failures]
    assert "PermissionDenied" in summary.failures[0][1]
    assert "\n" not in summary.failures[0][1]
    assert False is summary.ok
    assert ["ServiceUnavailable", "PermissionDenied"] == [type(e).__name__ for e in raised]
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d1")).keys()
    assert not LEGACY_FIELDS & (await read_batch(firestore_client, batch_collection, "d2")).keys()


async def test_backfill_failure_of_one_batch_is_listed_and_the_checkpoint_stops_before_it(
    firestore_client: AsyncClient,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """One batch failing after the retries leaves the others backfilled, is listed with a
    one-line reason, and the checkpoint resumes before it (not "finished")."""
    await _seed_legacy(firestore_client, batch_collection, 4)
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
    await _seed_legacy(firestore_client, batch_collection, 1)

    with pytest.raises(InvalidIdError, match="must not contain '/'"):
        await backfill(
            firestore_client, Layout(batch_collection), DUAL, batch_ids=["b00000", "a/b"]
        )

    assert {} == await read_completions(firestore_client, batch_collection, "b00000")


async def test_file_checkpoint_that_is_not_json_is_a_configuration_error(tmp_path: Any) -> None:
    """A checkpoint file that is not a JSON object raises ConfigurationError naming the file."""
    path = tmp_path / "checkpoint.json"
    path.write_text("[1, 2]", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=r"checkpoint\.json"):
        await FileCheckpoint(path).load()


async def test_status_counts_each_state(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Legacy-only, dual, subcollection-only and inconsistent batches are counted apart."""
    await _seed_legacy(firestore_client, batch_collection, 2)
    await _dual_batches(make_manager, 3)
    await _corrupt(firestore_client, batch_collection, "d2")
    sub_only = make_manager(mode=SUB_ONLY)
    await sub_only.create_batch("s0", expected_count=2)
    await sub_only.record_completion("s0", "p1", predictions_count=1)

    summary = await status(firestore_client, Layout(batch_collection), DUAL)

    assert {
        BatchState.LEGACY_ONLY: 2,
        BatchState.DUAL: 2,
        # s0 was created by SUBCOLLECTION_ONLY (array_partial): not a DUAL_WRITE mismatch
        BatchState.SUBCOLLECTION_ONLY: 1,
        BatchState.INCONSISTENT: 1,  # d2
    } == dict(summary.counts)


# -- the whole migration, with traffic during every step --------------------------------------


class _Ledger:
    """What must be true: the first count of every distinct player recorded, per batch."""

    def __init__(self, batches: list[str]) -> None:
        self.first: dict[str, dict[str, int]] = {b: {} for b in batches}

    async def record(self, manager: Any, batch: str, player: str, count: int) -> None:
        result = await manager.record_completion(batch, player, predictions_count=count)
        expected = (
            CompletionStatus.DUPLICATE if player in self.first[batch] else CompletionStatus.RECORDED
        )
        assert expected == result.status, f"{player} of {batch} in {manager.mode.name}"
        self.first[batch].setdefault(player, count)

    async def check(self, manager: Any) -> None:
        for batch, players in self.first.items():
            progress = await manager.get_progress(batch)
            assert (len(players), sum(players.values()), tuple(sorted(players))) == (
                progress.completed_count,
                progress.total_predictions,
                progress.completed_players,
            ), f"{batch} read in {manager.mode.name}"


@pytest.mark.parametrize(
    "redeliver_legacy_before_backfill",
    [False, True],
)
async def test_five_step_migration_loses_and_doubles_nothing(
    redeliver_legacy_before_backfill: bool,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """LEGACY -> DUAL_WRITE -> backfill -> SUBCOLLECTION_READS -> SUBCOLLECTION_ONLY -> cleanup.

    Completions (new ones and redeliveries with a different count) arrive during
    every step; after each step progress, read from the mode's structure, equals
    the ledger of first counts, and the batches verify clean where they should.
    """
    layout = Layout(batch_collection)
    batches = ["b0", "b1", "b2"]
    ledger = _Ledger(batches)
    players = [f"p{i}" for i in range(12)]

    async def record_all(manager: Any, names: list[str], bump: int = 0) -> None:
        await asyncio.gather(
            *(
                ledger.record(manager, b, p, players.index(p) + 1 + bump)
                for b in batches
                for p in names
            )
        )

    # 1. LEGACY: the old world.
    legacy = make_manager(mode=MigrationMode.LEGACY)
    for batch in batches:
        await legacy.create_batch(batch, expected_count=len(players))
    await record_all(legacy, players[0:3])
    await ledger.check(legacy)

    # 2. DUAL_WRITE everywhere; a LEGACY straggler still writes during the rollout.
    dual = make_manager(mode=DUAL)
    await asyncio.gather(record_all(dual, players[3:5]), record_all(legacy, players[5:6]))
    await record_all(dual, players[3:4], bump=100)  # redeliveries: duplicates
    if redeliver_legacy_before_backfill:
        # A player recorded in LEGACY (array only, not yet backfilled) redelivered in DUAL_WRITE.
        await record_all(dual, players[0:1], bump=100)
    await ledger.check(dual)

    # 3. backfill while completions and redeliveries keep arriving.
    summary, _ = await asyncio.gather(
        backfill(firestore_client, layout, DUAL, concurrency=2),
        record_all(dual, players[6:8]),
    )
    await record_all(dual, players[0:2], bump=200)  # legacy players, now backfilled
    assert summary.ok
    assert (await verify(firestore_client, layout, DUAL)).ok
    await ledger.check(dual)

    # 4. DUAL_WRITE_SUBCOLLECTION_READS.
    reads = make_manager(mode=MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS)
    await asyncio.gather(record_all(reads, players[8:9]), record_all(dual, players[2:3], bump=300))
    assert (await verify(firestore_client, layout, reads.mode)).ok
    await ledger.check(reads)

    # 5. SUBCOLLECTION_ONLY.
    sub_only = make_manager(mode=SUB_ONLY)
    await asyncio.gather(
        record_all(sub_only, players[9:11]), record_all(reads, players[5:6], bump=400)
    )
    await ledger.check(sub_only)

    # 6. cleanup-legacy while the last completions arrive.
    cleaned, *_ = await asyncio.gather(
        cleanup_legacy(firestore_client, layout, SUB_ONLY),
        record_all(sub_only, players[11:12]),
        record_all(sub_only, players[4:5], bump=500),
    )
    assert not cleaned.refused
    if cleaned.skipped:  # a batch changed between the check and its transaction
        cleaned = await cleanup_legacy(firestore_client, layout, SUB_ONLY)
    await ledger.check(sub_only)
    for batch in batches:
        doc = await read_batch(firestore_client, batch_collection, batch)
        report = await validate(firestore_client, layout, SUB_ONLY, batch)
        assert not LEGACY_FIELDS & doc.keys()
        assert report.is_consistent
        assert (12, 78) == (report.completion_docs, report.completion_predictions_sum)
        assert "complete" == doc["status"]


# -- the command line --------------------------------------------------------------------------


def _cli(collection: str, *args: str) -> list[str]:
    return ["migrate", args[0], "--collection", collection, "--no-progress", *args[1:]]


async def test_cli_verify_exits_zero_when_clean(
    make_manager: ManagerFactory,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate verify` on consistent batches prints the summary and returns 0."""
    await _dual_batches(make_manager, 2)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(main, _cli(batch_collection, "verify", "--mode", "dual_write"))

    assert 0 == code
    assert "batches checked" in capsys.readouterr().out


async def test_cli_verify_exits_nonzero_on_mismatch(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate verify` lists the inconsistent batch and returns 1."""
    await _dual_batches(make_manager, 2)
    await _corrupt(firestore_client, batch_collection, "d0")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(main, _cli(batch_collection, "verify", "--mode", "dual_write"))

    assert 1 == code
    assert "ghost" not in capsys.readouterr().err


async def test_cli_backfill_then_status(
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate backfill` with the environment's mode flags, then `status` shows dual batches."""
    await _seed_legacy(firestore_client, batch_collection, 3)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    monkeypatch.setenv("ENABLE_SUBCOLLECTION_COMPLETIONS", "true")
    monkeypatch.setenv("DUAL_WRITE_MODE", "true")

    backfilled = await asyncio.to_thread(main, _cli(batch_collection, "backfill"))
    counted = await asyncio.to_thread(main, _cli(batch_collection, "status"))

    out = capsys.readouterr().out
    assert (0, 0) == (backfilled, counted)
    assert "completion docs created" in out
    assert 9 == await _sum_field(firestore_client, batch_collection, "completed_count")


async def test_cli_cleanup_refusal_exits_nonzero(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate cleanup-legacy` with an inconsistent batch prints the reason and returns 1."""
    await _dual_batches(make_manager, 1)
    await _corrupt(firestore_client, batch_collection, "d0")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(
        main, _cli(batch_collection, "cleanup-legacy", "--mode", "subcollection_only")
    )

    assert 1 == code
    assert "d0: " in capsys.readouterr().out


def test_cli_without_emulator_or_project_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither FIRESTORE_EMULATOR_HOST nor GOOGLE_CLOUD_PROJECT: exit 2 naming both."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    code = main(["migrate", "status", "--no-progress"])

    err = capsys.readouterr().err
    assert 2 == code
    assert "FIRESTORE_EMULATOR_HOST" in err
    assert "GOOGLE_CLOUD_PROJECT" in err
