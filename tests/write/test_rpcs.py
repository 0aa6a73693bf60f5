"""What each write path costs, counted in RPCs at the client's channel (never timed).

The lock-free path: a group of fresh completions is exactly one Commit; a group
with redeliveries costs one more BatchGetDocuments and one more Commit per
round of conflicts; a group of redeliveries only writes nothing. Transactions
(LEGACY, a dual-write batch not yet backfilled, ``write_path="transaction"``)
cost BeginTransaction, reads and Commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import CompletionStatus, MigrationMode
from async_batchstate.testing import FaultPoint, RpcCounter, batch_violations

from ..helpers import ManagerFactory

pytestmark = pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting")


async def _group(manager: object, batch_id: str, players: list[str]) -> list[CompletionStatus]:
    """Record ``players`` concurrently: they queue together and go out as one group."""
    results = await asyncio.gather(
        *(manager.record_completion(batch_id, p, 1) for p in players)  # type: ignore[attr-defined]
    )
    assert 1 == len({r.group_size for r in results})
    return [r.status for r in results]


@pytest.mark.parametrize(
    "mode",
    [m for m in MigrationMode if m.writes_subcollection],
    ids=lambda m: m.value,
)
async def test_a_fresh_group_costs_exactly_one_commit(
    mode: MigrationMode, make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """Ten new completions, one group: one Commit RPC, no read, no transaction."""
    manager = make_manager(mode=mode, validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", [f"p{i}" for i in range(10)])

    assert [CompletionStatus.RECORDED] * 10 == statuses
    assert {"Commit": 1} == dict(rpcs.counts)


async def test_a_group_with_redeliveries_costs_one_read_and_one_more_commit(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """Members already recorded: Commit fails whole, one lock-free read, one Commit of the rest."""
    manager = make_manager(validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    await _group(manager, "b", ["p0", "p1"])
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", ["p0", "p1", "p2", "p3"])

    dup, rec = CompletionStatus.DUPLICATE, CompletionStatus.RECORDED
    assert [dup, dup, rec, rec] == statuses
    assert {"Commit": 2, "BatchGetDocuments": 1} == dict(rpcs.counts)


async def test_a_group_of_redeliveries_only_writes_nothing(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Every member recorded already: one refused Commit and one read; the batch is untouched."""
    manager = make_manager(validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    await _group(manager, "b", ["p0", "p1", "p2"])
    ref = firestore_client.collection(batch_collection).document("b")
    before = (await ref.get()).update_time
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", ["p0", "p1", "p2"])

    assert [CompletionStatus.DUPLICATE] * 3 == statuses
    assert {"Commit": 1, "BatchGetDocuments": 1} == dict(rpcs.counts)
    assert before == (await ref.get()).update_time


async def test_legacy_groups_are_one_read_and_one_conditional_commit(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """LEGACY: the array is the only guard, so read it (no lock, no transaction) and commit
    on the condition that the batch document is unchanged since."""
    manager = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    rpcs = RpcCounter().attach(firestore_client)

    await _group(manager, "b", [f"p{i}" for i in range(5)])

    assert {"BatchGetDocuments": 1, "Commit": 1} == dict(rpcs.counts)


async def test_write_path_transaction_runs_every_group_through_a_transaction(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """write_path="transaction": begin, read the completion docs, commit (today's path)."""
    manager = make_manager(write_path="transaction", validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    rpcs = RpcCounter().attach(firestore_client)

    await _group(manager, "b", [f"p{i}" for i in range(5)])

    assert {"BeginTransaction": 1, "BatchGetDocuments": 1, "Commit": 1} == dict(rpcs.counts)


async def test_a_dual_write_batch_not_backfilled_reads_its_array_before_a_conditional_commit(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """A batch started by LEGACY writers: its array must be read (with the backfill flag), and
    the Commit is conditional on the batch being unchanged; a legacy-only player is a DUPLICATE."""
    legacy = make_manager(mode=MigrationMode.LEGACY, validation_rate=0.0)
    await legacy.create_batch("b", expected_count=100)
    await legacy.record_completion("b", "old", 1)
    manager = make_manager(mode=MigrationMode.DUAL_WRITE, validation_rate=0.0)
    await manager.record_completion("b", "warm-up", 1)  # expected count cached
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", ["old", "new"])

    assert [CompletionStatus.DUPLICATE, CompletionStatus.RECORDED] == statuses
    # Known not backfilled: ONE read (the array with the flag, and the members' docs), commit.
    assert {"BatchGetDocuments": 1, "Commit": 1} == dict(rpcs.counts)


async def test_a_carriage_return_id_is_written_with_the_whole_map_read_before(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """A CR in a player id cannot go in a field path: its group reads the legacy map and writes
    it whole, conditional on the batch being unchanged; groups without such an id stay one
    plain Commit."""
    manager = make_manager(validation_rate=0.0)
    await manager.create_batch("b", expected_count=100)
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", ["a\rb", "p"])

    assert [CompletionStatus.RECORDED] * 2 == statuses
    # Read the completion docs and the map in one RPC, then one conditional Commit.
    assert {"BatchGetDocuments": 1, "Commit": 1} == dict(rpcs.counts)
    rpcs.reset()
    await _group(manager, "b", ["q", "r"])
    assert {"Commit": 1} == dict(rpcs.counts)


async def test_a_member_committed_elsewhere_after_the_read_is_set_aside_not_waited_for(
    make_manager: ManagerFactory,
    other_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The race a read cannot close: another process commits a member between this group's read
    and its Commit. The refusal names it; the rest are committed at once, with no read to wait
    for, while that member alone is read beside them (whose it is)."""
    other = other_manager(validation_rate=0.0)
    steps: list[tuple[str, list[str]]] = []

    async def race(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        steps.append((at.value, sorted(players)))
        reads = [s for s, _ in steps].count("after_reads")
        if at is FaultPoint.AFTER_READS and reads == 1:
            await other.record_completion(batch_id, "p0", 1)
        elif at is FaultPoint.AFTER_READS and reads == 2:
            await other.record_completion(batch_id, "p2", 1)  # lands after the read

    manager = make_manager(validation_rate=0.0, fault_injector=race)
    await manager.create_batch("b", expected_count=100)
    await manager.record_completion("b", "warm-up", 1)  # settings cached
    steps.clear()
    rpcs = RpcCounter().attach(firestore_client)

    statuses = await _group(manager, "b", ["p0", "p1", "p2", "p3"])

    dup, rec = CompletionStatus.DUPLICATE, CompletionStatus.RECORDED
    assert [dup, rec, dup, rec] == statuses
    assert [
        ("before_begin", ["p0", "p1", "p2", "p3"]),
        ("after_reads", ["p0", "p1", "p2", "p3"]),
        ("before_commit", ["p0", "p1", "p2", "p3"]),  # refused: p0 exists; read all
        ("after_reads", ["p1", "p2", "p3"]),
        ("before_commit", ["p1", "p2", "p3"]),  # refused, naming p2: set aside
        ("before_commit", ["p1", "p3"]),  # at once: p2 is read beside this Commit
        ("after_commit", ["p1", "p3"]),
    ] == steps
    assert {"Commit": 3, "BatchGetDocuments": 2} == dict(rpcs.counts)
    mode = MigrationMode.DUAL_WRITE
    assert [] == await batch_violations(firestore_client, batch_collection, "b", mode)


@pytest.mark.parametrize("point", [FaultPoint.BEFORE_COMMIT, FaultPoint.AFTER_COMMIT])
async def test_a_fault_beside_a_set_aside_read_still_gives_every_member_its_outcome(
    point: FaultPoint,
    make_manager: ManagerFactory,
    other_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The Commit re-sent beside a set-aside read fails (before it is sent, or its answer is
    lost after it landed): the read is dropped, the next attempt reads what is stored."""
    other = other_manager(validation_rate=0.0)
    steps: list[tuple[FaultPoint, list[str]]] = []

    async def race(at: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        steps.append((at, sorted(players)))
        reads = [s for s, _ in steps].count(FaultPoint.AFTER_READS)
        if at is FaultPoint.AFTER_READS and reads == 1:
            await other.record_completion(batch_id, "p0", 1)
        elif at is FaultPoint.AFTER_READS and reads == 2:
            await other.record_completion(batch_id, "p2", 1)
        elif (at, sorted(players)) == (point, ["p1", "p3"]) and steps.count(steps[-1]) == 1:
            raise gexc.ServiceUnavailable("injected")

    manager = make_manager(validation_rate=0.0, fault_injector=race)
    await manager.create_batch("b", expected_count=100)
    await manager.record_completion("b", "warm-up", 1)
    steps.clear()

    statuses = await _group(manager, "b", ["p0", "p1", "p2", "p3"])

    dup, rec = CompletionStatus.DUPLICATE, CompletionStatus.RECORDED
    assert [dup, rec, dup, rec] == statuses
    mode = MigrationMode.DUAL_WRITE
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        mode,
        expected={"warm-up": 1, "p0": 1, "p1": 1, "p2": 1, "p3": 1},
    )
