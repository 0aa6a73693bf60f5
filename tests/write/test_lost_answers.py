"""Lost answers: the server applied a write, the client never heard. Outcomes stay exactly once.

``LostAnswers`` lets the emulator apply a Commit and then hands the client
UNAVAILABLE (or UNKNOWN, CANCELLED) instead of the answer, below the client's
own retry. For every write the library sends (group commit, lock-free and
transactional; the finalization flip; create_batch) and in every mode: exactly
one RECORDED per player, exactly one ``batch_completed=True``, ``on_complete``
at least once with one key, counts exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import BatchProgress, CompletionStatus, MigrationMode, RetryPolicy
from async_batchstate.testing import LostAnswers, batch_violations

from ..helpers import ManagerFactory

pytestmark = [
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
    pytest.mark.guarantee("typed-errors"),
]

FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=30.0, attempt_timeout=10.0)
PATHS = [
    pytest.param(mode, path, id=f"{mode.value}-{path}")
    for mode in MigrationMode
    for path in ("auto", "transaction")
    if not (mode is MigrationMode.LEGACY and path == "transaction")  # LEGACY: always a txn
]


def _transform_fields(request: Any) -> set[str]:
    return {t.field_path for w in request.writes for t in w.update_transforms}


def is_group_commit(request: Any) -> bool:
    """A Commit that records completions (it moves a counter or the array)."""
    return bool({"completed_count", "completed_players"} & _transform_fields(request))


def is_flip(request: Any) -> bool:
    """The Commit that finalizes a batch."""
    return any("finalised_by" in w.update_mask.field_paths for w in request.writes)


def is_create_batch(request: Any) -> bool:
    """The Commit of create_batch."""
    return any("created_by" in w.update.fields for w in request.writes)


class Callbacks:
    """Records every on_complete call with its idempotency key."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []

    def __call__(self, batch_id: str, progress: BatchProgress) -> None:
        self.keys.append(progress.finalization_key)


async def _record_all(
    manager: Any, batch_id: str, players: dict[str, int], redeliver_every: int = 4
) -> list[Any]:
    calls = [*players, *list(players)[::redeliver_every]]
    return await asyncio.gather(
        *(manager.record_completion(batch_id, p, players[p]) for p in calls)
    )


def _assert_exactly_once(results: list[Any], players: dict[str, int]) -> None:
    recorded = Counter(r.player for r in results if r.status is CompletionStatus.RECORDED)
    assert {p: 1 for p in players} == dict(recorded)
    assert 1 == sum(r.batch_completed for r in results)


@pytest.mark.parametrize(("mode", "path"), PATHS)
@pytest.mark.parametrize("code", ["UNAVAILABLE", "UNKNOWN", "CANCELLED"])
async def test_lost_group_commit_answers_still_give_one_recorded_per_player(
    mode: MigrationMode,
    path: str,
    code: str,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Group commits applied but unanswered: each caller that wrote is still told RECORDED."""
    callbacks = Callbacks()
    manager = make_manager(
        mode=mode, write_path=path, retry=FAST, max_group_size=6, on_complete=callbacks
    )
    players = {f"p{i}": i % 5 for i in range(24)}
    await manager.create_batch("b", expected_players=list(players))
    lost = LostAnswers(times=3, when=is_group_commit, code=code).attach(firestore_client)

    results = await _record_all(manager, "b", players)

    # Up to 3: a chosen Commit that is refused (a retry meeting its own members) gives
    # its turn back, but only to Commits sent after it, and groups overlap their retries.
    assert 1 <= lost.total_lost <= 3
    _assert_exactly_once(results, players)
    assert 1 == len(set(callbacks.keys)) and callbacks.keys[0] is not None
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", mode, expected=players, require_finalized=True
    )
    assert len(players) == manager.stats().recorded


@pytest.mark.parametrize(("mode", "path"), PATHS)
async def test_lost_answer_to_the_flip_still_tells_exactly_one_caller(
    mode: MigrationMode,
    path: str,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The flip committed, its answer lost: the retry finds its own id; one batch_completed."""
    callbacks = Callbacks()
    manager = make_manager(mode=mode, write_path=path, retry=FAST, on_complete=callbacks)
    players = {f"p{i}": 1 for i in range(10)}
    await manager.create_batch("b", expected_players=list(players))
    lost = LostAnswers(times=1, when=is_flip).attach(firestore_client)

    results = await _record_all(manager, "b", players)

    assert 1 == lost.total_lost
    _assert_exactly_once(results, players)
    assert 1 == len(callbacks.keys)
    progress = await manager.get_progress("b")
    assert progress.is_finalized
    assert f"b/{progress.finalizer_id}" == callbacks.keys[0]
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", mode, expected=players, require_finalized=True
    )


async def test_lost_answers_to_finalize_repeatedly_still_flip_once(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """finalize() whose flip answers are lost twice returns True once; a second call False."""
    callbacks = Callbacks()
    writer = make_manager(retry=FAST)
    await writer.create_batch("b", expected_count=2)
    LostAnswers(times=2, when=is_flip).attach(firestore_client)
    # A manager without on_complete records; finalize() by another one is what flips.
    manager = make_manager(retry=FAST, on_complete=callbacks)
    # Record without finalizing: the writer's own flip would win otherwise.
    await (
        firestore_client.collection(writer.layout.collection)
        .document("b")
        .update({"completed_players": ["x", "y"], "completed_count": 2})
    )

    assert (True, False) == (await manager.finalize("b"), await manager.finalize("b"))
    assert 1 == len(callbacks.keys)


@pytest.mark.parametrize("mode", list(MigrationMode), ids=lambda m: m.value)
async def test_lost_answer_to_create_batch_is_still_this_calls_creation(
    mode: MigrationMode, make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """create_batch applied, answer lost: the retry's ALREADY_EXISTS is its own write -> True."""
    manager = make_manager(mode=mode, retry=FAST)
    lost = LostAnswers(times=1, when=is_create_batch).attach(firestore_client)

    first = await manager.create_batch("b", expected_count=3)
    second = await manager.create_batch("b", expected_count=3)

    assert 1 == lost.total_lost
    assert (True, False) == (first, second)


async def test_two_managers_with_lost_answers_and_shared_redeliveries(
    make_manager: ManagerFactory, firestore_emulator: Any, batch_collection: str
) -> None:
    """Two clients (as two processes), the same players redelivered to both, answers lost on
    both: every player RECORDED exactly once across them, one batch_completed."""
    from async_batchstate.testing import aclose_client, make_client

    players = {f"p{i}": i for i in range(40)}
    clients = [make_client(firestore_emulator) for _ in range(2)]
    try:
        from async_batchstate import AsyncBatchStateManager

        managers = [
            AsyncBatchStateManager(
                c, collection=batch_collection, mode=MigrationMode.DUAL_WRITE, retry=FAST
            )
            for c in clients
        ]
        await managers[0].create_batch("b", expected_players=list(players))
        for client in clients:
            LostAnswers(times=2, when=is_group_commit).attach(client)
        calls = [(managers[i % 2], p) for i, p in enumerate(players)]
        calls += [(managers[(i + 1) % 2], p) for i, p in enumerate(players) if i % 3 == 0]
        results = await asyncio.gather(*(m.record_completion("b", p, players[p]) for m, p in calls))
        for manager in managers:
            await manager.aclose()
        _assert_exactly_once(results, players)
        assert [] == await batch_violations(
            clients[0],
            batch_collection,
            "b",
            MigrationMode.DUAL_WRITE,
            expected=players,
            require_finalized=True,
        )
    finally:
        for client in clients:
            await aclose_client(client)


async def test_lost_answers_to_backfill_and_reconcile_leave_exact_counts(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Backfill's and reconcile's commits applied but unanswered: the retries redo nothing
    twice; the batch ends consistent with exact counts."""
    from async_batchstate import Layout
    from async_batchstate.consistency import Source
    from async_batchstate.migration import backfill

    players = {f"p{i}": i for i in range(12)}
    legacy = make_manager(mode=MigrationMode.LEGACY)
    await legacy.create_batch("b", expected_players=list(players))
    for player, count in players.items():
        await legacy.record_completion("b", player, count)
    lost = LostAnswers(times=2).attach(firestore_client)  # every kind of Commit

    summary = await backfill(firestore_client, Layout(batch_collection), MigrationMode.DUAL_WRITE)
    manager = make_manager(mode=MigrationMode.DUAL_WRITE)
    await manager.reconcile("b", source=Source.LEGACY)

    assert (2, ()) == (lost.total_lost, summary.failures)
    assert [] == await batch_violations(
        firestore_client, batch_collection, "b", MigrationMode.DUAL_WRITE, expected=players
    )


async def test_every_commit_answer_lost_still_gives_each_entry_point_its_outcome(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Every Commit applied, every answer lost (create, completion, flip, expiry, claim,
    done mark): each public call still returns what it did, never a raw client error, and
    every owed callback ends done after one run."""
    from ..helpers import read_batch

    ran: list[tuple[str, str]] = []

    def callback(batch_id: str, progress: BatchProgress) -> None:
        ran.append((batch_id, progress.status))

    bare = make_manager(retry=FAST)  # finishes a batch without callbacks: owed to the other
    await bare.create_batch("owed", expected_count=1)
    await bare.record_completion("owed", "p", 1)
    manager = make_manager(retry=FAST, on_complete=callback, on_expired=callback)
    lost = LostAnswers(times=None).attach(firestore_client)

    created = [await manager.create_batch(b, expected_count=1) for b in ("done", "gone")]
    completion = await manager.record_completion("done", "p", 1)
    expired = await manager.expire("gone")
    again = await manager.finalize("done")
    delivered = await manager.deliver_owed_callbacks("owed")
    await manager.aclose()  # waits for the background callback of "done"
    lost.armed = False

    assert ([True, True], True, True, False, True) == (
        created,
        completion.batch_completed,
        expired,
        again,
        delivered,
    )
    assert CompletionStatus.RECORDED is completion.status
    assert [("done", "complete"), ("gone", "expired"), ("owed", "complete")] == sorted(ran)
    assert lost.total_lost >= 8
    for batch_id in ("done", "gone", "owed"):
        doc = await read_batch(firestore_client, batch_collection, batch_id)
        assert "callback_owed" not in doc and "callback_done_at" in doc, batch_id
