"""record_completion on the emulator: atomicity, idempotency, literal keys, bad input, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    BatchExistsError,
    BatchNotFoundError,
    CompletionStatus,
    ConfigurationError,
    DuplicatePlayerError,
    InvalidCountError,
    InvalidIdError,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.testing import FaultPoint

from ..helpers import ManagerFactory, read_batch, read_completions

pytestmark = [
    pytest.mark.guarantee("atomicity"),
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("bad-input"),
]

ALL_MODES = list(MigrationMode)


async def assert_consistent(
    client: AsyncClient,
    collection: str,
    batch_id: str,
    mode: MigrationMode,
    expected: dict[str, int],
) -> None:
    """Every structure the mode writes holds exactly ``expected`` (player -> count)."""
    doc = await read_batch(client, collection, batch_id)
    completions = await read_completions(client, collection, batch_id)
    total = sum(expected.values())
    if mode.writes_legacy:
        assert sorted(expected) == sorted(doc["completed_players"])
        assert expected == doc["predictions_by_player"]
        assert total == doc["total_predictions"]
    if mode.writes_subcollection:
        assert expected == {p: c["predictions_count"] for p, c in completions.items()}
        assert len(expected) == doc["completed_count"]
        assert total == doc["total_predictions_subcoll"]


class Boom(Exception):
    """An injected fault."""


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("point", [FaultPoint.AFTER_READS, FaultPoint.BEFORE_COMMIT])
async def test_fault_inside_the_transaction_leaves_both_structures_unchanged(
    mode: MigrationMode,
    point: FaultPoint,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """An exception after the writes are staged, before commit, writes nothing at all."""

    async def inject(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if at is point and "bad" in players:
            raise Boom

    manager = make_manager(mode=mode, fault_injector=inject)
    await manager.create_batch("b", expected_count=3)
    await manager.record_completion("b", "good", predictions_count=2)

    with pytest.raises(Exception) as info:
        await manager.record_completion("b", "bad", predictions_count=5)

    assert isinstance(info.value.__cause__ or info.value, Boom)
    await assert_consistent(firestore_client, batch_collection, "b", mode, {"good": 2})


@pytest.mark.parametrize("mode", [m for m in ALL_MODES if m.writes_subcollection])
async def test_a_commit_the_server_rejects_leaves_both_structures_unchanged(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The batch doc deleted between the reads and the commit: the commit fails, nothing lands."""
    ref = firestore_client.collection(batch_collection).document("b")

    async def delete_batch(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if at is FaultPoint.BEFORE_COMMIT:
            await ref.delete()

    manager = make_manager(mode=mode, fault_injector=delete_batch)
    await manager.create_batch("b", expected_count=3)

    with pytest.raises(BatchNotFoundError):
        await manager.record_completion("b", "p1", predictions_count=5)

    assert {} == await read_completions(firestore_client, batch_collection, "b")
    assert {} == await read_batch(firestore_client, batch_collection, "b")


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_sequential_redelivery_counts_once(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The same completion five times in a row: one RECORDED, four DUPLICATE, counted once."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_count=2)
    statuses = [
        (await manager.record_completion("b", "p1", predictions_count=7)).status for _ in range(5)
    ]
    assert [CompletionStatus.RECORDED] + [CompletionStatus.DUPLICATE] * 4 == statuses
    await assert_consistent(firestore_client, batch_collection, "b", mode, {"p1": 7})


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_redelivery_counts_once(
    mode: MigrationMode,
    coalesce: bool,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Five concurrent deliveries of one completion: exactly one RECORDED, counted once."""
    manager = make_manager(mode=mode, coalesce=coalesce)
    await manager.create_batch("b", expected_count=2)
    results = await asyncio.gather(
        *[manager.record_completion("b", "p1", predictions_count=7) for _ in range(5)]
    )
    assert 1 == sum(r.status is CompletionStatus.RECORDED for r in results)
    await assert_consistent(firestore_client, batch_collection, "b", mode, {"p1": 7})


async def test_redelivery_with_another_count_keeps_the_first(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """First write wins: a second report of a player with a new count is a DUPLICATE."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=2)
    await manager.record_completion("b", "p1", predictions_count=3)
    again = await manager.record_completion("b", "p1", predictions_count=30)
    assert CompletionStatus.DUPLICATE is again.status
    await assert_consistent(
        firestore_client, batch_collection, "b", MigrationMode.DUAL_WRITE, {"p1": 3}
    )


LEGACY_MODES = [m for m in MigrationMode if m.writes_legacy]


@pytest.mark.parametrize("mode", LEGACY_MODES, ids=lambda m: m.value)
async def test_a_player_id_with_a_carriage_return_keeps_its_count(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A carriage return is a legal id character: the player's entry in the map holds its count."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_players=["a\rb", "c"])
    await manager.record_completion("b", "a\rb", predictions_count=7)

    await assert_consistent(firestore_client, batch_collection, "b", mode, {"a\rb": 7})


@pytest.mark.parametrize("write_path", ["auto", "transaction"])
@pytest.mark.parametrize("mode", LEGACY_MODES, ids=lambda m: m.value)
async def test_carriage_return_ids_never_touch_their_line_feed_twins(
    mode: MigrationMode,
    write_path: str,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The emulator reads a CR in a field path as LF: ``a<CR>b``'s entry must not set or
    delete ``a<LF>b``'s. Groups mixing both, and entries written before, all keep their counts."""
    players = {"a\nb": 1, "a\rb": 2, "\r": 3, "\n": 4, "x\r\ny": 5, "x\ny": 6, "p": 7}
    manager = make_manager(mode=mode, write_path=write_path)
    await manager.create_batch("b", expected_players=list(players))
    await manager.record_completion("b", "a\nb", 1)
    await manager.record_completion("b", "a\rb", 2)
    results = await asyncio.gather(
        *(manager.record_completion("b", p, c) for p, c in list(players.items())[2:])
    )
    assert all(r.status is CompletionStatus.RECORDED for r in results)
    again = await manager.record_completion("b", "a\rb", 20)
    assert CompletionStatus.DUPLICATE is again.status

    await assert_consistent(firestore_client, batch_collection, "b", mode, players)


@pytest.mark.parametrize("mode", [MigrationMode.LEGACY, MigrationMode.DUAL_WRITE])
async def test_special_player_ids_are_literal_map_keys(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Dots, backticks and field names are stored as keys; no other field is touched."""
    players = {"a.b": 1, "`x`": 2, "total_predictions": 3, "spaces and ü": 4, "completed_count": 5}
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_players=list(players))
    for player, count in players.items():
        await manager.record_completion("b", player, predictions_count=count)

    doc = await read_batch(firestore_client, batch_collection, "b")
    assert players == doc["predictions_by_player"]
    assert 15 == doc["total_predictions"]
    assert "a" not in doc and "b" not in doc
    if mode.writes_subcollection:
        assert 5 == doc["completed_count"]
    await assert_consistent(firestore_client, batch_collection, "b", mode, players)


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_300_completions_from_100_tasks_are_exact(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """All counters exact; array length == completed_count == completion docs; totals == sum."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_count=300)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(300):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await manager.record_completion("b", f"player-{i}", predictions_count=i % 11)

    await asyncio.gather(*[worker() for _ in range(100)])

    expected = {f"player-{i}": i % 11 for i in range(300)}
    await assert_consistent(firestore_client, batch_collection, "b", mode, expected)
    progress = await manager.get_progress("b")
    assert (300, sum(expected.values()), True) == (
        progress.completed_count,
        progress.total_predictions,
        progress.is_finalized,
    )


@pytest.mark.parametrize(
    ("player", "count", "error"),
    [
        ("a/b", 1, InvalidIdError),
        ("", 1, InvalidIdError),
        ("..", 1, InvalidIdError),
        ("__x__", 1, InvalidIdError),
        ("x" * 1501, 1, InvalidIdError),
        ("p", -1, InvalidCountError),
        ("p", 2.5, InvalidCountError),
        ("p", "3", InvalidCountError),
        ("p", None, InvalidCountError),
    ],
)
async def test_bad_input_is_rejected_before_anything_is_written(
    player: str,
    count: int,
    error: type[Exception],
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Each bad argument raises its typed error and the batch stays untouched."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=2)
    before = await read_batch(firestore_client, batch_collection, "b")
    with pytest.raises(error):
        await manager.record_completion("b", player, predictions_count=count)
    assert before == await read_batch(firestore_client, batch_collection, "b")
    assert {} == await read_completions(firestore_client, batch_collection, "b")


@pytest.mark.parametrize("batch_id", ["a/b", "", "__batch__"])
async def test_bad_batch_ids_are_rejected(batch_id: str, make_manager: ManagerFactory) -> None:
    """Batch ids get the same document-id rules, in create and record."""
    manager = make_manager()
    with pytest.raises(InvalidIdError):
        await manager.create_batch(batch_id, expected_count=1)
    with pytest.raises(InvalidIdError):
        await manager.record_completion(batch_id, "p", predictions_count=1)


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_recording_into_an_unknown_batch_writes_nothing(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A batch never created: BatchNotFoundError, and no stray completion doc or batch doc."""
    manager = make_manager(mode=mode)
    with pytest.raises(BatchNotFoundError):
        await manager.record_completion("nope", "p1", predictions_count=1)
    assert {} == await read_completions(firestore_client, batch_collection, "nope")
    assert {} == await read_batch(firestore_client, batch_collection, "nope")


async def test_expected_players_given_twice_is_rejected(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A duplicate in expected_players is an error and creates nothing."""
    manager = make_manager()
    with pytest.raises(DuplicatePlayerError, match="p1"):
        await manager.create_batch("b", expected_players=["p1", "p2", "p1"])
    assert {} == await read_batch(firestore_client, batch_collection, "b")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"expected_count": 2, "expected_players": ["a", "b"]}],
)
async def test_create_batch_needs_exactly_one_expectation(
    kwargs: dict[str, object], make_manager: ManagerFactory
) -> None:
    """Neither or both of expected_count/expected_players is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        await make_manager().create_batch("b", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -3, 1.5])
async def test_create_batch_rejects_counts_below_one(
    count: object, make_manager: ManagerFactory
) -> None:
    """A batch expects at least one completion."""
    with pytest.raises(InvalidCountError):
        await make_manager().create_batch("b", expected_count=count)  # type: ignore[arg-type]


async def test_create_batch_is_idempotent_and_detects_conflicts(
    make_manager: ManagerFactory,
) -> None:
    """Same expectation again: False (no-op); a different one: BatchExistsError."""
    manager = make_manager()
    assert await manager.create_batch("b", expected_count=3) is True
    assert await manager.create_batch("b", expected_count=3) is False
    with pytest.raises(BatchExistsError, match="expected_count=3"):
        await manager.create_batch("b", expected_count=4)


async def test_retryable_errors_are_retried_transparently(make_manager: ManagerFactory) -> None:
    """Two injected UNAVAILABLE attempts, then success: the caller sees RECORDED, attempts=3."""
    failures = iter([gexc.ServiceUnavailable("blip"), gexc.Aborted("contention")])

    async def inject(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if at is FaultPoint.BEFORE_BEGIN:
            error = next(failures, None)
            if error is not None:
                raise error

    manager = make_manager(
        fault_injector=inject, retry=RetryPolicy(base_delay=0.001, max_delay=0.01)
    )
    await manager.create_batch("b", expected_count=1)
    result = await manager.record_completion("b", "p", predictions_count=1)
    assert (CompletionStatus.RECORDED, 3) == (result.status, result.attempts)
    stats = manager.stats()
    assert {"unavailable": 1, "aborted": 1} == stats.failures_by_cause
    assert 2 == stats.retries
