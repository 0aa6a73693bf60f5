"""Rolling deploys and rollbacks: modes side by side on one batch, each in its own client.

During a rollout old and new modes write the same batches. Every completion counts
once, whichever mode created the batch and whichever modes wrote it, the batch is
finalized once all its completions are recorded, and the finishing caller is told. Each manager here has its own
``AsyncClient``, as a process of its own would.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    CompletionStatus,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.testing import (
    EmulatorInfo,
    FakeClock,
    FaultPoint,
    LostAnswers,
)

from ..helpers import Keys, ManagerFactory, read_batch, run_workers

pytestmark = [
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("rolling-deploys-and-rollbacks"),
]

FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=30.0, attempt_timeout=10.0)


async def test_a_legacy_write_to_a_dual_batch_is_a_duplicate_for_the_dual_process_at_once(
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A DUAL_WRITE process that created a batch writes it lock-free. A LEGACY process (a
    rollback) records p1: on a batch completion documents guard, it creates p1's document
    too, so a redelivery of p1 to the dual process right after is a DUPLICATE, and the last
    player finalizes the batch (its count includes the LEGACY player), tells its caller and
    runs on_complete."""
    keys = Keys()
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, on_complete=keys, validation_rate=0.0)
    legacy = other_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    await dual.create_batch("b", expected_count=4)
    await dual.record_completion("b", "p0", 1)

    await legacy.record_completion("b", "p1", 10)
    second = await dual.record_completion("b", "p2", 100)  # commits; sees the LEGACY write
    again = await dual.record_completion("b", "p1", 10)
    last = await dual.record_completion("b", "p3", 1000)
    final = await dual.wait_until_complete("b", timeout=10)

    assert CompletionStatus.RECORDED == second.status
    assert CompletionStatus.DUPLICATE == again.status
    assert last.batch_completed
    assert (True, 4, 1111) == (final.is_finalized, final.completed_count, final.total_predictions)
    assert [final.finalization_key] == keys.keys
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert 1111 == doc["total_predictions"]


async def test_a_redelivery_to_a_dual_process_idle_since_a_legacy_write_counts_once(
    make_manager: ManagerFactory, other_manager: Any, firestore_client: AsyncClient
) -> None:
    """The dual process has not written the batch since the LEGACY write (and believes it
    guarded, as it created it): the redelivery is a DUPLICATE all the same, however long after."""
    clock = FakeClock()
    dual = make_manager(mode=MigrationMode.DUAL_WRITE, clock=clock, validation_rate=0.0)
    legacy = other_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    await dual.create_batch("b", expected_count=3)
    await dual.record_completion("b", "p0", 1)
    await legacy.record_completion("b", "p1", 10)

    clock.advance(3600)
    again = await dual.record_completion("b", "p1", 10)

    assert CompletionStatus.DUPLICATE == again.status
    progress = await dual.get_progress("b")
    assert (2, 11) == (progress.completed_count, progress.total_predictions)


@pytest.mark.parametrize(
    "finisher",
    [MigrationMode.DUAL_WRITE, MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS, MigrationMode.LEGACY],
)
async def test_a_batch_created_by_subcollection_only_is_finalized_by_a_rolled_back_process(
    finisher: MigrationMode,
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Rolling back from SUBCOLLECTION_ONLY: a batch it created and half recorded is finished by
    a process in another mode; that process finalizes it, tells its caller, runs on_complete,
    and reports every player (not only those in the array it wrote)."""
    keys = Keys()
    new = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY, validation_rate=0.0)
    old = other_manager(mode=finisher, on_complete=keys, validation_rate=0.0)
    await new.create_batch("b", expected_players=["p1", "p2", "p3"])
    await new.record_completion("b", "p1", 1)
    await new.record_completion("b", "p2", 2)

    again = await old.record_completion("b", "p1", 1)
    last = await old.record_completion("b", "p3", 3)
    final = await old.wait_until_complete("b", timeout=10)

    assert CompletionStatus.DUPLICATE == again.status
    assert last.batch_completed
    assert (True, 3) == (final.is_finalized, final.completed_count)
    assert ("p1", "p2", "p3") == final.completed_players
    assert [final.finalization_key] == keys.keys


async def test_an_explicit_finalize_in_dual_write_counts_what_subcollection_only_wrote(
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A SUBCOLLECTION_ONLY process recorded the last player and died before flipping (its
    write is planted as it makes it): a DUAL_WRITE finalize() counts the completion documents
    and flips the batch."""
    from google.cloud.firestore_v1 import Increment

    new = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY, validation_rate=0.0)
    old = other_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    await new.create_batch("b", expected_count=2)
    await new.record_completion("b", "p1", 1)
    ref = firestore_client.collection(batch_collection).document("b")
    write = firestore_client.batch()
    write.create(ref.collection("completions").document("p2"), {"predictions_count": 2})
    write.update(ref, {"completed_count": Increment(1), "total_predictions_subcoll": Increment(2)})
    await write.commit()

    assert await old.finalize("b")
    assert (True, 2) == ((p := await old.get_progress("b")).is_finalized, p.completed_count)


@pytest.mark.parametrize(
    "writers",
    [
        (MigrationMode.LEGACY, MigrationMode.DUAL_WRITE),
        (MigrationMode.DUAL_WRITE, MigrationMode.SUBCOLLECTION_ONLY),
        (MigrationMode.LEGACY, MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS),
    ],
    ids=lambda w: "+".join(m.value for m in w),
)
async def test_two_modes_alternating_on_one_batch_finalize_it_once_with_exact_players(
    writers: tuple[MigrationMode, MigrationMode],
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A rollout in both directions: two modes alternate over 12 players with every player
    redelivered to the other mode. Exactly one finalization, one caller told, and the batch's
    count as every mode counts it is the roster."""
    keys = Keys()
    first = make_manager(mode=writers[0], on_complete=keys, validation_rate=0.0)
    second = other_manager(mode=writers[1], on_complete=keys, validation_rate=0.0)
    players = [f"p{i}" for i in range(12)]
    await first.create_batch("b", expected_players=players)
    told = 0
    for index, player in enumerate(players):
        mine, theirs = (first, second) if index % 2 else (second, first)
        result = await mine.record_completion("b", player, 1)
        told += result.batch_completed
        result = await theirs.record_completion("b", player, 1)  # the redelivery
        told += result.batch_completed
        assert CompletionStatus.DUPLICATE == result.status

    final = await first.wait_until_complete("b", timeout=10)
    assert (1, True, 12) == (told, final.is_finalized, final.completed_count)
    assert 1 == len(keys.keys)


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        (MigrationMode.DUAL_WRITE, "auto"),
        (MigrationMode.DUAL_WRITE, "transaction"),
        (MigrationMode.SUBCOLLECTION_ONLY, "auto"),
        (MigrationMode.SUBCOLLECTION_ONLY, "transaction"),
        (MigrationMode.LEGACY, "auto"),
    ],
)
@pytest.mark.parametrize("expired_first", [True, False], ids=["written-late", "expired-between"])
async def test_late_or_recorded_is_what_held_when_the_write_landed_despite_a_lost_answer(
    mode: MigrationMode,
    path: str,
    expired_first: bool,
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
) -> None:
    """The first attempt's Commit lands, its answer is lost, the retry finds it. Written after
    the expiry: LATE. Written before an expiry that happened between the two attempts:
    RECORDED."""
    expirer = other_manager(mode=mode)
    begins = 0

    async def expire_between(point: FaultPoint, batch_id: str, players: Any) -> None:
        nonlocal begins
        if point is FaultPoint.BEFORE_BEGIN:
            begins += 1
            if begins == 2 and not expired_first:
                assert await expirer.expire(batch_id)

    manager = make_manager(mode=mode, write_path=path, retry=FAST, fault_injector=expire_between)
    await manager.create_batch("b", expected_count=3)
    await manager.record_completion("b", "p0", 1)
    begins = 0
    if expired_first:
        assert await expirer.expire("b")
    lost = LostAnswers(times=1, when=_records_completions).attach(firestore_client)

    result = await manager.record_completion("b", "p1", 1)

    assert 1 == lost.total_lost
    expected = CompletionStatus.LATE if expired_first else CompletionStatus.RECORDED
    assert expected == result.status


def _records_completions(request: Any) -> bool:
    fields = {t.field_path for w in request.writes for t in w.update_transforms}
    return "total_predictions" in fields or "completed_count" in fields


async def test_counts_stay_exact_across_a_full_rollout_and_rollback(
    make_manager: ManagerFactory,
    other_manager: Any,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """LEGACY -> DUAL_WRITE -> SUBCOLLECTION_ONLY -> DUAL_WRITE -> LEGACY over one batch, two
    processes always one step apart (a rolling deploy), each player redelivered to both."""
    steps = [
        MigrationMode.LEGACY,
        MigrationMode.DUAL_WRITE,
        MigrationMode.SUBCOLLECTION_ONLY,
        MigrationMode.DUAL_WRITE,
        MigrationMode.LEGACY,
    ]
    clock = FakeClock()
    players = {f"p{i}": i for i in range(len(steps) * 3)}
    creator = make_manager(mode=steps[0], validation_rate=0.0)
    await creator.create_batch("b", expected_players=list(players))
    names = iter(players)
    told = 0
    for old_mode, new_mode in itertools.pairwise(steps):
        old = make_manager(mode=old_mode, clock=clock, validation_rate=0.0)
        new = other_manager(mode=new_mode, validation_rate=0.0)
        for _ in range(3):
            player = next(names)
            for manager in (new, old, new):
                told += (
                    await manager.record_completion("b", player, players[player])
                ).batch_completed
            clock.advance(3600)
    rest = list(names)
    last = make_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    for player in rest:
        told += (await last.record_completion("b", player, players[player])).batch_completed

    final = await last.wait_until_complete("b", timeout=10)
    assert (1, True, len(players)) == (told, final.is_finalized, final.completed_count)
    # Each structure is whole in itself; together they hold every player exactly once.
    doc = await read_batch(firestore_client, batch_collection, "b")
    docs = {
        d.id: (d.to_dict() or {})["predictions_count"]
        async for d in firestore_client.collection(batch_collection)
        .document("b")
        .collection("completions")
        .stream()
    }
    legacy = dict(doc["predictions_by_player"])
    assert sorted(legacy) == sorted(doc["completed_players"])
    assert (sum(legacy.values()), sum(docs.values())) == (
        doc["total_predictions"],
        doc["total_predictions_subcoll"],
    )
    assert len(docs) == doc["completed_count"]
    assert players == {**legacy, **docs}
    assert len(set(legacy) - set(docs)) == doc["legacy_only_count"]


@pytest.mark.parametrize(
    "modes",
    [
        (MigrationMode.DUAL_WRITE, MigrationMode.LEGACY) * 2,
        (MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS, MigrationMode.SUBCOLLECTION_ONLY) * 2,
    ],
    ids=["dual+legacy", "reads+subcollection_only"],
)
async def test_four_processes_in_two_modes_redelivering_each_other_count_once(
    modes: tuple[MigrationMode, ...],
    firestore_emulator: EmulatorInfo,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A rolling deploy under load: four OS processes, alternately in two modes, each records
    its 60 players and redelivers the next process's (in the other mode). Every player counts
    once, one process finalizes, one caller is told, on_complete runs once."""
    share = 60
    await make_manager(mode=modes[0]).create_batch("b", expected_count=4 * share)

    reports = await run_workers(firestore_emulator, batch_collection, "b", share, list(modes))

    results = [r for report in reports for r in report["results"]]
    assert (4 * share, 4 * share) == (
        sum(r["status"] == "recorded" for r in results),
        sum(r["status"] == "duplicate" for r in results),
    )
    assert 1 == sum(r["completed"] for r in results)
    assert 1 == sum(len(report["finalized"]) for report in reports)
    assert 0 == sum(report["failed"] for report in reports)
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert (4 * share, "complete") == (
        doc["completed_count"] + doc.get("legacy_only_count", 0),
        doc["status"],
    )


@pytest.mark.parametrize(
    "writers",
    [
        (MigrationMode.DUAL_WRITE, MigrationMode.SUBCOLLECTION_ONLY),
        (MigrationMode.SUBCOLLECTION_ONLY, MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS),
        (MigrationMode.DUAL_WRITE, MigrationMode.LEGACY),
    ],
    ids=lambda w: "+".join(m.value for m in w),
)
async def test_validation_never_alerts_on_a_batch_two_modes_wrote(
    writers: tuple[MigrationMode, MigrationMode],
    make_manager: ManagerFactory,
    other_manager: ManagerFactory,
) -> None:
    """Every commit validated in both processes, each under its own mode's rules, while they
    alternate on one batch: no alert (the array a SUBCOLLECTION_ONLY writer leaves partial
    is partial by design), and validate() finds the batch consistent under both modes."""
    alerts: list[Any] = []
    knobs: dict[str, Any] = {
        "validation_rate": 1.0,
        "validation_interval": 0.0,
        "alert_hooks": [alerts.append],
    }
    first = make_manager(mode=writers[0], **knobs)
    second = other_manager(mode=writers[1], **knobs)
    await first.create_batch("b", expected_count=8)
    for index in range(8):
        manager = first if index % 2 else second
        await manager.record_completion("b", f"p{index}", index)
    reports = [await first.validate("b"), await second.validate("b")]
    await first.aclose()
    await second.aclose()

    assert [] == alerts
    assert [(), ()] == [r.problems for r in reports]
