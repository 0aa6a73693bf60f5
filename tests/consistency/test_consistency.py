"""validate, reconcile and sampled validation on the emulator, with batches corrupted on purpose."""

from __future__ import annotations

from google.cloud.firestore_v1 import ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from async_batchstate import Layout, MigrationMode
from async_batchstate.consistency import Source, reconcile, validate

from ..helpers import ManagerFactory, read_batch, read_completions

DUAL = MigrationMode.DUAL_WRITE


async def healthy_batch(make_manager: ManagerFactory) -> None:
    manager = make_manager(mode=DUAL)
    await manager.create_batch("b", expected_count=10)
    await manager.record_completion("b", "p1", predictions_count=3)
    await manager.record_completion("b", "p2", predictions_count=4)


async def corrupt(client: AsyncClient, collection: str) -> None:
    """The old torn dual-write: the array gets ``ghost`` but no completion doc; a counter +1."""
    await (
        client.collection(collection)
        .document("b")
        .update(
            {
                "completed_players": ArrayUnion(["ghost"]),
                FieldPath("predictions_by_player", "ghost").to_api_repr(): 5,
                "total_predictions": Increment(5),
                "completed_count": Increment(1),
            }
        )
    )


async def test_validate_healthy_batch_is_consistent(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A batch written only through the manager has equal structures and no problem."""
    await healthy_batch(make_manager)

    report = await validate(firestore_client, Layout(batch_collection), DUAL, "b")

    assert () == report.problems
    assert report.is_consistent
    assert (2, 2, 2) == (report.legacy_array_length, report.completed_count, report.completion_docs)
    assert (7, 7, 7) == (
        report.total_predictions,
        report.total_predictions_subcoll,
        report.completion_predictions_sum,
    )


async def test_validate_catches_corrupted_batch(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Array-only player and off-by-one counter show up as the exact numbers and names."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)

    report = await validate(firestore_client, Layout(batch_collection), DUAL, "b")

    assert not report.is_consistent
    assert ("ghost",) == report.players_only_in_array
    assert () == report.players_only_in_subcollection
    assert (3, 3, 2) == (report.legacy_array_length, report.completed_count, report.completion_docs)
    assert (12, 7, 7) == (
        report.total_predictions,
        report.total_predictions_subcoll,
        report.completion_predictions_sum,
    )
    assert 3 == len(report.problems)  # array-only player, count vs docs, legacy vs subcoll total


async def test_report_summary_is_one_line_with_the_problems(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """summary() names the compared numbers and, for a mismatch, the problems."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)

    report = await validate(firestore_client, Layout(batch_collection), DUAL, "b")

    assert "\n" not in report.summary()
    assert "completed_count=3 docs=2" in report.summary()
    assert report.problems[0] in report.summary()


async def test_validate_names_players_only_in_subcollection(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A completion doc whose player is missing from the array is listed by name."""
    await healthy_batch(make_manager)
    ref = firestore_client.collection(batch_collection).document("b")
    await (
        ref.collection("completions")
        .document("orphan")
        .set({"player_lookup": "orphan", "predictions_count": 0})
    )

    report = await validate(firestore_client, Layout(batch_collection), DUAL, "b")

    assert ("orphan",) == report.players_only_in_subcollection


async def test_legacy_only_batch_is_inconsistent_under_dual_write(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A LEGACY-recorded batch has players only in the array until backfilled."""
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_count=3)
    await legacy.record_completion("b", "p1", predictions_count=2)

    report = await validate(firestore_client, Layout(batch_collection), DUAL, "b")
    as_legacy = await validate(
        firestore_client, Layout(batch_collection), MigrationMode.LEGACY, "b"
    )

    assert ("p1",) == report.players_only_in_array
    assert not report.is_consistent
    assert as_legacy.is_consistent


async def test_stale_legacy_subset_is_consistent_in_subcollection_only(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """In SUBCOLLECTION_ONLY the array stops growing: players only in the subcollection are fine."""
    await healthy_batch(make_manager)
    sub_only = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY)
    await sub_only.record_completion("b", "p3", predictions_count=1)

    report = await validate(
        firestore_client, Layout(batch_collection), MigrationMode.SUBCOLLECTION_ONLY, "b"
    )

    assert ("p3",) == report.players_only_in_subcollection
    assert report.is_consistent


async def test_reconcile_repairs_corrupted_batch_from_subcollection(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The subcollection wins: the ghost leaves the array and map, counters match the docs."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    layout = Layout(batch_collection)

    result = await reconcile(firestore_client, layout, DUAL, "b")

    doc = await read_batch(firestore_client, batch_collection, "b")
    assert ("ghost",) == result.legacy_removed
    assert {"completed_count": (3, 2), "total_predictions": (12, 7)} == dict(result.counters)
    assert ["p1", "p2"] == sorted(doc["completed_players"])
    assert {"p1": 3, "p2": 4} == doc["predictions_by_player"]
    assert (await validate(firestore_client, layout, DUAL, "b")).is_consistent


async def test_second_reconcile_changes_nothing(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Reconciling a repaired (consistent) batch reports and writes no change."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    layout = Layout(batch_collection)
    await reconcile(firestore_client, layout, DUAL, "b")
    before = await read_batch(firestore_client, batch_collection, "b")

    again = await reconcile(firestore_client, layout, DUAL, "b")

    assert not again.changed
    assert before == await read_batch(firestore_client, batch_collection, "b")


async def test_reconcile_from_legacy_creates_missing_completion_doc(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The array wins: the ghost gets a completion doc with its map count; counters follow."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    layout = Layout(batch_collection)

    result = await reconcile(firestore_client, layout, DUAL, "b", source=Source.LEGACY)

    completions = await read_completions(firestore_client, batch_collection, "b")
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert ("ghost",) == result.completions_created
    assert 5 == completions["ghost"]["predictions_count"]
    assert (3, 12) == (doc["completed_count"], doc["total_predictions_subcoll"])
    assert (await validate(firestore_client, layout, DUAL, "b")).is_consistent


async def test_reconcile_dry_run_writes_nothing(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A dry run reports the repair and leaves the batch as it was."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    before = await read_batch(firestore_client, batch_collection, "b")

    result = await reconcile(firestore_client, Layout(batch_collection), DUAL, "b", dry_run=True)

    assert ("ghost",) == result.legacy_removed
    assert before == await read_batch(firestore_client, batch_collection, "b")


async def test_reconcile_over_transaction_write_limit_uses_several_transactions(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """450 missing completion docs (> 400 per transaction) are created in 2 transactions."""
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_count=450)
    players = [f"p{i:03d}" for i in range(450)]
    await (
        firestore_client.collection(batch_collection)
        .document("b")
        .update(
            {
                "completed_players": players,
                "predictions_by_player": dict.fromkeys(players, 2),
                "total_predictions": 900,
            }
        )
    )
    layout = Layout(batch_collection)

    result = await reconcile(firestore_client, layout, DUAL, "b", source=Source.LEGACY)

    assert 450 == len(result.completions_created)
    assert 2 == result.transactions
    assert (await validate(firestore_client, layout, DUAL, "b")).is_consistent
