"""Pinned regressions of issue 28: situations a hostile rollout found, each failing before.

Each manager has its own client where the situation needs processes (a cache of its own).
The model (``test_model_fleet.py``) explores their families; these pin the instances.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from google.cloud.firestore_v1 import DELETE_FIELD, ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionStatus,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.testing import (
    EmulatorInfo,
    FaultPoint,
    LostAnswers,
    aclose_client,
    batch_violations,
    make_client,
)

from ..helpers import ManagerFactory, read_batch, read_completions
from .test_lost_answers import is_group_commit

pytestmark = [
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("rolling-deploys-and-rollbacks"),
]

FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=30.0, attempt_timeout=10.0)


async def test_a_batch_born_in_subcollection_only_keeps_its_guard_through_every_mode(
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    firestore_client: AsyncClient,
) -> None:
    """SUBCOLLECTION_ONLY creates b (4 expected) and records p0; DUAL_WRITE records p1; LEGACY p2;
    p2 redelivered to the SUBCOLLECTION_ONLY and DUAL_WRITE processes is a DUPLICATE for both:
    the batch stays in progress at 3/4 until p3, and every structure counts p2 once."""
    third = make_client(firestore_emulator)
    try:
        only = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY, validation_rate=0.0)
        dual = other_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
        legacy = AsyncBatchStateManager(
            third, collection=batch_collection, mode=MigrationMode.LEGACY, validation_rate=0.0
        )
        async with legacy:
            await only.create_batch("b", expected_count=4)
            await only.record_completion("b", "p0-warm", 1)  # a cache that believes "guarded"
            await dual.record_completion("b", "p1", 1)
            await legacy.record_completion("b", "p2", 2)
            again_only = await only.record_completion("b", "p2", 2)
            again_dual = await dual.record_completion("b", "p2", 2)
            in_progress = await only.get_progress("b", include_players=False)
            last = await dual.record_completion("b", "p3", 3)

        assert (CompletionStatus.DUPLICATE, CompletionStatus.DUPLICATE) == (
            again_only.status,
            again_dual.status,
        )
        assert not again_only.batch_completed and not again_dual.batch_completed
        assert "in_progress" == in_progress.status
        assert last.batch_completed
        docs = await read_completions(firestore_client, batch_collection, "b")
        assert {"p0-warm", "p1", "p2"} <= set(docs)
        assert [] == await batch_violations(
            firestore_client, batch_collection, "b", MigrationMode.DUAL_WRITE
        )
    finally:
        await aclose_client(third)


async def test_the_guard_is_stated_at_creation_by_every_mode_that_writes_documents(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """completions_backfilled is true from create_batch in every mode but LEGACY, and a
    LEGACY write to such a batch never clears it."""
    for mode in MigrationMode:
        manager = make_manager(mode=mode, validation_rate=0.0)
        await manager.create_batch(f"b-{mode.value}", expected_count=2)
    legacy = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    for mode in MigrationMode:
        await legacy.record_completion(f"b-{mode.value}", "p", 1)

    stated = {
        mode: (await read_batch(firestore_client, batch_collection, f"b-{mode.value}")).get(
            "completions_backfilled"
        )
        for mode in MigrationMode
    }
    expected = {mode: (True if mode.writes_subcollection else None) for mode in MigrationMode}
    assert expected == stated


@pytest.mark.parametrize(
    "mode", [MigrationMode.DUAL_WRITE, MigrationMode.SUBCOLLECTION_ONLY, MigrationMode.LEGACY]
)
async def test_late_or_recorded_after_lost_answers_agrees_with_the_expiry(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    mode: MigrationMode,
) -> None:
    """Every completion's answer is lost; the expiry lands while some of those writes wait to
    retry: a completion is told LATE exactly when the expiry found it missing, RECORDED
    exactly when it did not (never decided by comparing commit timestamps, which tie)."""
    players = [f"p{i:03d}" for i in range(90)]
    expirer = make_manager(mode=mode, retry=FAST, validation_rate=0.0)
    retried: set[str] = set()
    expired: list[bool] = []

    async def expire_on_a_retry(point: FaultPoint, batch_id: str, group: Sequence[str]) -> None:
        if point is not FaultPoint.BEFORE_BEGIN or not set(group) & set(players[30:60]):
            return
        if retried & set(group) and not expired:
            expired.append(await expirer.expire("b", reason="test"))  # after this one landed
        retried.update(group)

    writer = make_manager(
        mode=mode, retry=FAST, validation_rate=0.0, fault_injector=expire_on_a_retry
    )
    await writer.create_batch("b", expected_players=players)
    LostAnswers(times=None, when=is_group_commit).attach(firestore_client)

    results = [*await asyncio.gather(*(writer.record_completion("b", p, 1) for p in players[:30]))]
    results += await asyncio.gather(*(writer.record_completion("b", p, 1) for p in players[30:60]))
    results += await asyncio.gather(*(writer.record_completion("b", p, 1) for p in players[60:]))
    stored = await read_batch(firestore_client, batch_collection, "b")

    assert "expired" == stored["status"]
    missing = set(stored["missing_players"])  # what the expiry itself found
    told = {r.player: r.status for r in results}
    assert set(players[60:]) <= missing
    assert {p: CompletionStatus.LATE for p in missing} == {
        p: s for p, s in told.items() if s is CompletionStatus.LATE
    }
    assert {CompletionStatus.RECORDED} == {s for p, s in told.items() if p not in missing}


async def test_transaction_path_with_four_lost_commit_answers_tells_recorded(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """write_path="transaction": four Commit answers lost in a row (the client re-sends on a
    closed transaction and is refused): the completion is stored and its caller told
    RECORDED; the redelivery is a DUPLICATE."""
    manager = make_manager(write_path="transaction", retry=FAST, validation_rate=0.0)
    await manager.create_batch("b", expected_count=2)
    lost = LostAnswers(methods=("Commit",), times=4).attach(firestore_client)

    first = await manager.record_completion("b", "p1", 5)
    again = await manager.record_completion("b", "p1", 5)

    assert (CompletionStatus.RECORDED, CompletionStatus.DUPLICATE) == (first.status, again.status)
    assert lost.total_lost >= 2


async def test_legacy_recognises_its_own_lost_write_however_many_groups_land_meanwhile(
    other_manager: Any, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """A LEGACY write lands, its answer is lost, and 150 LEGACY groups of another process
    land before the retry reads: the caller is told RECORDED, not DUPLICATE."""
    client = make_client(firestore_emulator)
    busy = other_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    retries = 0

    async def meanwhile(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        nonlocal retries
        if point is FaultPoint.BEFORE_BEGIN and "p0" in players:
            retries += 1
            if retries == 2:  # the retry after the lost answer, before it reads
                for i in range(150):
                    await busy.record_completion("b", f"q{i}", 1)

    try:
        lost = LostAnswers(times=1, when=is_group_commit).attach(client)
        async with AsyncBatchStateManager(
            client,
            collection=batch_collection,
            mode=MigrationMode.LEGACY,
            retry=FAST,
            validation_rate=0.0,
            fault_injector=meanwhile,
        ) as legacy:
            await legacy.create_batch("b", expected_count=200)
            result = await legacy.record_completion("b", "p0", 3)
        assert 1 == lost.total_lost
        assert CompletionStatus.RECORDED == result.status
    finally:
        await aclose_client(client)


@pytest.mark.guarantee("extra-players-a-batch-without-a-roster")
async def test_a_batch_without_a_roster_never_counts_past_its_expected_count(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """expected_count=1 and three distinct players: the first completes the batch; the
    others are extras that never move the reported count past 1, and validate() finds
    the batch consistent."""
    manager = make_manager(validation_rate=0.0)
    await manager.create_batch("b", expected_count=1)

    results = [await manager.record_completion("b", p, 2**32) for p in ("p1", "p2", "p3")]
    progress = await manager.get_progress("b", include_players=False)
    report = await manager.validate("b")

    assert [True, False, False] == [r.batch_completed for r in results]
    assert (1, "complete") == (progress.completed_count, progress.status)
    assert report.is_consistent, report
    data = await read_batch(firestore_client, batch_collection, "b")
    assert all(
        isinstance(v, int) and 0 <= v < 2**63
        for k, v in data.items()
        if k in ("completed_count", "total_predictions", "total_predictions_subcoll")
    )


@pytest.mark.parametrize(
    "reader", [MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS, MigrationMode.SUBCOLLECTION_ONLY]
)
async def test_a_player_only_in_the_array_is_recorded_for_a_subcollection_reader(
    make_manager: ManagerFactory, other_manager: Any, reader: MigrationMode
) -> None:
    """Found by the fleet model: LEGACY records p1 on a batch it created (p1 has no
    completion document); a subcollection-reading process lists p1 as recorded, and its
    expiry does not name p1 missing, as the batch's count already says."""
    legacy = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    other = other_manager(mode=reader, validation_rate=0.0)
    await legacy.create_batch("b", expected_players=["p1", "p2", "p3"])
    await legacy.record_completion("b", "p1", 1)

    progress = await other.get_progress("b")
    expired = await other.expire("b")
    final = await legacy.get_progress("b")

    assert (("p1",), ("p2", "p3")) == (progress.completed_players, progress.missing_players)
    assert expired
    assert ("p2", "p3") == final.missing_players


async def test_late_or_recorded_with_many_processes_racing_the_expiry(
    make_manager: ManagerFactory,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Four processes trickle completions into a batch, every answer lost, while a fifth
    expires it; batches until three expired. Each caller is told LATE exactly when the expiry found its
    player missing. Writes landing in the expiry's millisecond carry its commit timestamp,
    so an outcome decided by comparing timestamps breaks here."""
    clients = [make_client(firestore_emulator) for _ in range(4)]
    writers = [
        AsyncBatchStateManager(c, collection=batch_collection, retry=FAST, validation_rate=0.0)
        for c in clients
    ]
    expirer = make_manager(retry=FAST, validation_rate=0.0)
    for client in clients:
        LostAnswers(times=None, when=is_group_commit).attach(client)
    mismatched: list[tuple[str, set[str], set[str]]] = []
    expiries = 0
    spacing = 0.012  # between arrivals; doubled after a round the expiry lost to the writes
    try:
        for round_ in range(16):
            if expiries == 3:
                break
            batch_id = f"b{round_}"
            players = [f"p{i:03d}" for i in range(60)]
            await expirer.create_batch(batch_id, expected_players=players)

            async def write(
                i: int, player: str, batch_id: str = batch_id, spacing: float = spacing
            ) -> Any:
                await asyncio.sleep(i * spacing)
                return await writers[i % 4].record_completion(batch_id, player, 1)

            async def expire_midway(batch_id: str = batch_id, spacing: float = spacing) -> None:
                await asyncio.sleep(20 * spacing)
                await expirer.expire(batch_id, reason="test")

            results, _ = await asyncio.gather(
                asyncio.gather(*(write(i, p) for i, p in enumerate(players))), expire_midway()
            )
            stored = await read_batch(firestore_client, batch_collection, batch_id)
            if stored["status"] != "expired":
                # The expiry lost every race to the writes (each needs a quiet moment
                # between its read and its conditional update): nothing to compare.
                spacing = min(2 * spacing, 0.1)
                continue
            expiries += 1
            missing = set(stored["missing_players"])
            late = {r.player for r in results if r.status is CompletionStatus.LATE}
            if missing != late:
                mismatched.append((batch_id, missing - late, late - missing))
    finally:
        for writer in writers:
            await writer.aclose()
        for client in clients:
            await aclose_client(client)

    assert expiries >= 1, "no expiry won a race: nothing compared"
    assert [] == mismatched


# -- found by the hostile review of the fixes above ---------------------------------------


async def test_a_guard_that_was_never_stored_is_never_believed(
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch as 0.2's SUBCOLLECTION_ONLY left it (documents, no array, no guard field): a
    DUAL_WRITE redelivery that commits nothing must not cache "guarded"; after LEGACY
    records B, B redelivered to that process is a DUPLICATE and the batch stays open."""
    only = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY, validation_rate=0.0)
    await only.create_batch("b", expected_count=3)
    await only.record_completion("b", "A", 1)
    ref = firestore_client.collection(batch_collection).document("b")
    await ref.update({"completions_backfilled": DELETE_FIELD})  # as 0.2 created it
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    legacy = other_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)

    again = await dual.record_completion("b", "A", 1)
    b_legacy = await legacy.record_completion("b", "B", 1)
    b_again = await dual.record_completion("b", "B", 1)
    stored = await read_batch(firestore_client, batch_collection, "b")

    assert [CompletionStatus.DUPLICATE, CompletionStatus.RECORDED, CompletionStatus.DUPLICATE] == [
        again.status,
        b_legacy.status,
        b_again.status,
    ]
    assert ("in_progress", 1, 1) == (
        stored["status"],
        stored["completed_count"],
        stored["legacy_only_count"],
    )


@pytest.mark.parametrize("mode", [MigrationMode.DUAL_WRITE, MigrationMode.LEGACY])
async def test_a_split_group_tells_a_repeated_player_duplicate(
    make_manager: ManagerFactory, mode: MigrationMode
) -> None:
    """A group P, P, Q fails after its commit and is retried member by member: the second P
    caller is a DUPLICATE, not a second RECORDED."""
    failed: list[bool] = []

    async def fail_once(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.AFTER_COMMIT and not failed:
            failed.append(True)
            raise RuntimeError("injected after the commit")

    manager = make_manager(mode=mode, retry=FAST, validation_rate=0.0, fault_injector=fail_once)
    await manager.create_batch("b", expected_count=3)

    results = await asyncio.gather(*(manager.record_completion("b", p, 1) for p in ("P", "P", "Q")))

    assert failed
    statuses = sorted((r.player, r.status.value) for r in results)
    assert [("P", "duplicate"), ("P", "recorded"), ("Q", "recorded")] == statuses


async def test_reconcile_keeps_the_count_of_a_mixed_batch(
    make_manager: ManagerFactory, other_manager: Any
) -> None:
    """A LEGACY batch of 4 with A and C recorded by LEGACY and B by DUAL_WRITE: reconcile
    (from the array) creates A's and C's documents and the count stays 3, so the batch is
    neither finalized nor finalizable."""
    legacy = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    dual = other_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    await legacy.create_batch("b", expected_count=4)
    await legacy.record_completion("b", "A", 1)
    await dual.record_completion("b", "B", 1)
    await legacy.record_completion("b", "C", 1)

    await legacy.reconcile("b")
    progress = await dual.get_progress("b", include_players=False)

    assert (3, "in_progress") == (progress.completed_count, progress.status)
    assert not await dual.finalize("b")


async def test_a_player_a_0_1_legacy_writer_added_is_a_duplicate(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A LEGACY-created batch that a DUAL_WRITE process wrote, then a 0.1-era LEGACY writer
    (array, map and total only; no legacy_only_count) adds B: B redelivered to the dual
    process is a DUPLICATE (the array is read until the batch is backfilled)."""
    legacy = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    await legacy.create_batch("b", expected_count=3)
    await dual.record_completion("b", "A", 1)
    await (
        firestore_client.collection(batch_collection)
        .document("b")
        .update(
            {
                "completed_players": ArrayUnion(["B"]),
                "predictions_by_player.B": 1,
                "total_predictions": Increment(1),
            }
        )
    )

    again = await dual.record_completion("b", "B", 1)

    assert CompletionStatus.DUPLICATE == again.status
    stored = await read_batch(firestore_client, batch_collection, "b")
    assert (2, "in_progress") == (stored["total_predictions"], stored["status"])


async def test_array_modes_list_extra_players_recorded_only_in_the_subcollection(
    make_manager: ManagerFactory, other_manager: Any
) -> None:
    """expected 2, no roster: C by SUBCOLLECTION_ONLY, A and B by DUAL_WRITE. Every mode
    lists all three (the count stays 2)."""
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    only = other_manager(mode=MigrationMode.SUBCOLLECTION_ONLY, validation_rate=0.0)
    await dual.create_batch("b", expected_count=2)
    await only.record_completion("b", "C", 1)
    await dual.record_completion("b", "A", 1)
    await dual.record_completion("b", "B", 1)

    seen = [await m.get_progress("b") for m in (dual, only)]

    assert [(("A", "B", "C"), 2)] * 2 == [(p.completed_players, p.completed_count) for p in seen]
