"""The whole migration on the emulator, with traffic during every step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    CompletionStatus,
    Layout,
    MigrationMode,
)
from async_batchstate.consistency import reconcile, validate
from async_batchstate.migration import (
    backfill,
    cleanup_legacy,
    verify,
)

from ..helpers import (
    ManagerFactory,
    read_batch,
    read_completions,
)

pytestmark = pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting")

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


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
