"""Coordinator essentials: the roster, missing players, deadlines, expiry, late completions, listing."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchExistsError,
    BatchProgress,
    CompletionStatus,
    InvalidInputError,
    MigrationMode,
    RetryPolicy,
    UnexpectedPlayerError,
)
from async_batchstate._store.batch_info import BatchInfo
from async_batchstate._store.batches import batch_difference
from async_batchstate.testing import (
    EmulatorInfo,
    LostAnswers,
    RpcCounter,
    aclose_client,
    make_client,
)

from ..helpers import ManagerFactory, read_batch, read_completions

MODES = pytest.mark.parametrize("mode", list(MigrationMode), ids=lambda m: m.value)
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
INLINE = [f"p{i}" for i in range(5)]
CHUNKED = [f"player-{i:05d}-" + "x" * 20 for i in range(3000)]  # ~90 KB: chunk documents
ROSTERS = pytest.mark.parametrize("players", [INLINE, CHUNKED], ids=["inline", "chunked"])
FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=30.0, attempt_timeout=10.0)


class Calls:
    """A callback recording (batch id, status, key) of each run."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, str | None]] = []

    def __call__(self, batch_id: str, progress: BatchProgress) -> None:
        self.runs.append((batch_id, progress.status, progress.finalization_key))


@MODES
async def test_a_player_outside_the_roster_is_refused_before_anything_is_written(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """UnexpectedPlayerError (an InvalidInputError); the batch document is untouched."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_players=["p1", "p2"])
    before = await read_batch(firestore_client, batch_collection, "b")

    with pytest.raises(UnexpectedPlayerError) as caught:
        await manager.record_completion("b", "stranger", 1)

    assert isinstance(caught.value, InvalidInputError)
    assert before == await read_batch(firestore_client, batch_collection, "b")
    assert {} == await read_completions(firestore_client, batch_collection, "b")


@MODES
async def test_missing_players_shrink_as_completions_arrive(
    mode: MigrationMode, make_manager: ManagerFactory
) -> None:
    """BatchProgress.missing_players names exactly who has not reported yet."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_players=["p1", "p2", "p3"])
    assert ("p1", "p2", "p3") == (await manager.get_progress("b")).missing_players

    await manager.record_completion("b", "p2", 1)
    middle = await manager.get_progress("b")
    await asyncio.gather(*(manager.record_completion("b", p, 1) for p in ("p1", "p3")))
    final = await manager.get_progress("b")

    assert (("p1", "p3"), ("p2",)) == (middle.missing_players, middle.completed_players)
    assert ((), True) == (final.missing_players, final.is_finalized)


async def test_a_count_only_batch_has_no_missing_players(make_manager: ManagerFactory) -> None:
    """Without a roster nobody is known to be missing: the list is empty, not a guess."""
    manager = make_manager()
    await manager.create_batch("b", expected_count=3)

    assert () == (await manager.get_progress("b")).missing_players


async def test_the_roster_is_read_once_per_batch_per_process_under_concurrency(
    firestore_emulator: EmulatorInfo, make_manager: ManagerFactory, batch_collection: str
) -> None:
    """Another process (its own client) enforces the roster after ONE read of the batch, and
    writes nothing for unexpected players, with 60 concurrent calls."""
    players = [f"p{i}" for i in range(40)]
    await make_manager().create_batch("b", expected_players=players)
    client = make_client(firestore_emulator)
    rpcs = RpcCounter().attach(client)
    try:
        async with AsyncBatchStateManager(
            client, collection=batch_collection, mode=MigrationMode.DUAL_WRITE, validation_rate=0
        ) as other:
            calls = [*players, *[f"x{i}" for i in range(20)]]
            outcomes = await asyncio.gather(
                *(other.record_completion("b", p, 1) for p in calls), return_exceptions=True
            )
            reads = rpcs.counts["BatchGetDocuments"]
        completions = await read_completions(client, batch_collection, "b")
    finally:
        await aclose_client(client)

    refused = [o for o in outcomes if isinstance(o, UnexpectedPlayerError)]
    assert 20 == len(refused)
    assert set(players) == set(completions)
    # One read of the batch's settings (roster included); the flip's read once complete.
    assert 2 == reads


async def test_a_large_roster_lives_in_chunk_documents_and_is_enforced(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """3,000 long ids (~90 KB) do not fit inline: chunk documents hold them, outside the
    batch document; a fresh manager still enforces them and finds who is missing."""
    players = CHUNKED
    await make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY).create_batch(
        "b", expected_players=players
    )
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "roster" not in doc and doc["roster_chunks"] >= 1
    fresh = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY)

    await fresh.record_completion("b", players[0], 1)
    with pytest.raises(UnexpectedPlayerError):
        await fresh.record_completion("b", "not-on-the-roster", 1)
    progress = await fresh.get_progress("b")

    assert 2999 == len(progress.missing_players)
    assert players[0] not in progress.missing_players


# -- create_batch again: the same roster is a no-op, another one is refused ----------


@ROSTERS
async def test_the_same_roster_in_another_order_is_the_same_batch(
    players: list[str], make_manager: ManagerFactory
) -> None:
    """create_batch again with the roster reversed (as a fresh process would): False, and
    every player of it is still accepted."""
    await make_manager().create_batch("b", expected_players=players)
    fresh = make_manager()

    again = await fresh.create_batch("b", expected_players=players[::-1])
    result = await fresh.record_completion("b", players[-1], 1)

    assert (False, CompletionStatus.RECORDED) == (again, result.status)


@ROSTERS
async def test_another_roster_of_the_same_size_is_refused_saying_how_it_differs(
    players: list[str],
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Two players swapped for two others: BatchExistsError naming how many players only
    each roster has and the first of each; the stored batch is untouched."""
    await make_manager().create_batch("b", expected_players=players)
    before = await read_batch(firestore_client, batch_collection, "b")
    other = [*players[2:], "zz-new-1", "zz-new-2"]

    with pytest.raises(BatchExistsError) as caught:
        await make_manager().create_batch("b", expected_players=other)

    message = str(caught.value)
    assert "2 player(s) only in the stored one" in message
    assert f"{players[0][:37]!r}" in message or f"{players[0]!r}" in message
    assert "2 only in this call's ('zz-new-1', 'zz-new-2')" in message
    assert before == await read_batch(firestore_client, batch_collection, "b")


@ROSTERS
async def test_a_roster_batch_and_a_count_only_batch_of_the_same_size_differ(
    players: list[str], make_manager: ManagerFactory
) -> None:
    """A roster batch re-created with expected_count only, and a count-only batch
    re-created with a roster of its size: both BatchExistsError (either way the caller
    would be held to rules it did not ask for)."""
    manager = make_manager()
    await manager.create_batch("roster", expected_players=players)
    await manager.create_batch("count", expected_count=len(players))

    with pytest.raises(BatchExistsError, match=r"a roster of \d+ players, not expected_count"):
        await make_manager().create_batch("roster", expected_count=len(players))
    with pytest.raises(BatchExistsError, match="and no roster, not a roster of"):
        await make_manager().create_batch("count", expected_players=players)


@ROSTERS
async def test_a_lost_answer_to_a_roster_create_is_still_this_calls_creation(
    players: list[str], make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """The create of a roster batch applied, its answer lost: the retry's ALREADY_EXISTS is
    this call's own write (True); another call with the same roster then gets False."""
    manager = make_manager(retry=FAST)
    lost = LostAnswers(times=1, when=_is_create).attach(firestore_client)

    first = await manager.create_batch("b", expected_players=players)
    second = await manager.create_batch("b", expected_players=sorted(players, reverse=True))

    assert (1, True, False) == (lost.total_lost, first, second)


def _is_create(request: Any) -> bool:
    return any("created_by" in w.update.fields for w in request.writes)


@pytest.mark.parametrize(
    ("stored_count", "stored", "new", "expected"),
    [
        (3, None, BatchInfo(3), None),
        (3, frozenset("abc"), BatchInfo(3, frozenset("cab")), None),
        (3, None, BatchInfo(4), "expected_count=3, not 4"),
        (None, None, BatchInfo(4), "expected_count=None, not 4"),
        (3, None, BatchInfo(3, frozenset("abc")), "expected_count=3 and no roster, not a roster"),
        (3, frozenset("abc"), BatchInfo(3), "a roster of 3 players, not expected_count=3"),
        (
            3,
            frozenset("abc"),
            BatchInfo(3, frozenset("abd")),
            "another roster: 1 player(s) only in the stored one ('c'), 1 only in this call's ('d')",
        ),
        (
            5,
            frozenset("abcde"),
            BatchInfo(2, frozenset("yz")),
            "another roster: 5 player(s) only in the stored one ('a', 'b', 'c', ...), 2 only "
            "in this call's ('y', 'z')",
        ),
        (2, frozenset("ab"), BatchInfo(3, frozenset("abc")), "only in the stored one, 1 only"),
        (3, frozenset("ab"), BatchInfo(2, frozenset("ab")), "expected_count=3, not 2"),
        (
            1,
            frozenset(["x" * 100]),
            BatchInfo(1, frozenset("y")),
            f"({'x' * 37 + '...'!r}), 1 only",
        ),
    ],
    ids=[
        "same count",
        "same roster",
        "other count",
        "no count stored",
        "count then roster",
        "roster then count",
        "one swapped",
        "first few",
        "a superset",
        "hand-edited count",
        "long id cut",
    ],
)
def test_batch_difference_says_how_a_stored_batch_differs(
    stored_count: object, stored: frozenset[str] | None, new: BatchInfo, expected: str | None
) -> None:
    """The pure rule create_batch applies: None when alike, else words naming the difference."""
    difference = batch_difference(stored_count, stored, new)

    if expected is None:
        assert difference is None
    else:
        assert difference is not None and expected in difference


async def test_expire_moves_an_unfinished_batch_to_expired_once_with_reason_and_missing(
    make_manager: ManagerFactory,
) -> None:
    """Two managers expire at once: one True, status expired, reason and missing stored,
    on_expired run once."""
    calls = Calls()
    first = make_manager(on_expired=calls)
    second = make_manager(on_expired=calls)
    await first.create_batch("b", expected_players=["p1", "p2", "p3"])
    await first.record_completion("b", "p2", 1)

    results = await asyncio.gather(
        first.expire("b", reason="workers gone"), second.expire("b", reason="other")
    )
    progress = await first.get_progress("b")

    assert [True, False] == sorted(results, reverse=True)
    assert ("expired", True, False) == (
        progress.status,
        progress.is_terminal,
        progress.is_finalized,
    )
    assert progress.expired_reason in ("workers gone", "other")
    assert ("p1", "p3") == progress.missing_players
    assert [("b", "expired", progress.finalization_key)] == calls.runs


@pytest.mark.parametrize("attempt", range(4))
async def test_expire_racing_the_last_completion_from_two_processes_ends_in_one_status(
    attempt: int, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """One client records the last completion while another expires: exactly one terminal
    status, exactly one callback, and the completion is RECORDED or LATE accordingly."""
    clients = [make_client(firestore_emulator) for _ in range(2)]
    calls = Calls()
    try:
        recorder, expirer = (
            AsyncBatchStateManager(
                c,
                collection=batch_collection,
                mode=MigrationMode.DUAL_WRITE,
                on_complete=calls,
                on_expired=calls,
            )
            for c in clients
        )
        await recorder.create_batch("b", expected_players=["p1", "p2"])
        await recorder.record_completion("b", "p1", 1)
        await expirer.get_progress("b")  # both have the batch's settings cached

        result, expired = await asyncio.gather(
            recorder.record_completion("b", "p2", 1), expirer.expire("b", reason="race")
        )
        progress = await recorder.get_progress("b")
        await recorder.aclose()
        await expirer.aclose()
    finally:
        for client in clients:
            await aclose_client(client)

    assert progress.is_terminal
    assert 1 == len(calls.runs)
    assert progress.status == calls.runs[0][1]
    if progress.is_expired:
        assert (True, False) == (expired, result.batch_completed)
        assert result.status in (CompletionStatus.LATE, CompletionStatus.RECORDED)
    else:
        assert (False, True, CompletionStatus.RECORDED) == (
            expired,
            result.batch_completed,
            result.status,
        )


async def test_a_completion_after_expiry_is_counted_late_and_never_finalizes(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """LATE: stored and counted; the batch stays expired even once every player reported."""
    calls = Calls()
    manager = make_manager(on_complete=calls, on_expired=calls)
    await manager.create_batch("b", expected_players=["p1", "p2"])
    await manager.record_completion("b", "p1", 1)
    assert await manager.expire("b", reason="timeout")

    late = await manager.record_completion("b", "p2", 5)
    again = await manager.record_completion("b", "p2", 5)

    assert (CompletionStatus.LATE, False) == (late.status, late.batch_completed)
    assert CompletionStatus.DUPLICATE == again.status
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert ("expired", 2, 6) == (doc["status"], doc["completed_count"], doc["total_predictions"])
    assert ["expired"] == [status for _, status, _ in calls.runs]
    assert 1 == manager.stats().late


@MODES
async def test_a_passed_deadline_expires_the_batch_on_the_next_touch(
    mode: MigrationMode, make_manager: ManagerFactory
) -> None:
    """deadline in the past: the next completion expires it first and is LATE; progress and
    wait_until_complete return the expired batch instead of waiting."""
    calls = Calls()
    manager = make_manager(mode=mode, on_expired=calls)
    await manager.create_batch("late", expected_players=["p1", "p2"], deadline=PAST)
    await manager.create_batch("read", expected_count=2, deadline=dt.timedelta(seconds=-1))

    result = await manager.record_completion("late", "p1", 1)
    read = await manager.get_progress("read")
    waited = await manager.wait_until_complete("late", timeout=10)

    assert CompletionStatus.LATE == result.status
    assert ("expired", "deadline passed") == (read.status, read.expired_reason)
    assert ("expired", ("p2",), PAST) == (waited.status, waited.missing_players, waited.deadline)
    assert {"late", "read"} == {batch for batch, _, _ in calls.runs}


async def test_a_naive_deadline_is_refused(make_manager: ManagerFactory) -> None:
    """A datetime without a time zone is ambiguous across processes: InvalidInputError."""
    manager = make_manager()

    with pytest.raises(InvalidInputError):
        await manager.create_batch("b", expected_count=1, deadline=dt.datetime(2030, 1, 1))


async def test_list_batches_filters_by_status_and_age_and_paginates(
    make_manager: ManagerFactory,
) -> None:
    """Status filter, created_before, limit and pagination over pages of 2; stalled()."""
    manager = make_manager()
    for i in range(7):
        await manager.create_batch(f"b{i}", expected_count=1)
    for i in (0, 1, 2):
        await manager.record_completion(f"b{i}", "p", 1)
    await manager.expire("b3")

    done = [p.batch_id async for p in manager.list_batches(status="complete", page_size=2)]
    running = [p.batch_id async for p in manager.list_batches(status="in_progress", page_size=2)]
    everything = [p.batch_id async for p in manager.list_batches(page_size=2)]
    limited = [p.batch_id async for p in manager.list_batches(limit=3, page_size=2)]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    before = [p async for p in manager.list_batches(created_before=future, page_size=2)]
    stalled = [p.batch_id async for p in manager.stalled(older_than=0)]
    fresh = [p.batch_id async for p in manager.stalled(older_than=dt.timedelta(hours=1))]

    assert ["b0", "b1", "b2"] == done
    assert ["b4", "b5", "b6"] == running == stalled
    assert [f"b{i}" for i in range(7)] == everything
    assert ["b0", "b1", "b2"] == limited
    assert 7 == len(before) and all(p.completed_players == () for p in before)
    assert [] == fresh


# -- the CLI: async-batchstate batch show | list | expire --------------------------------


@pytest.fixture
def cli_env(firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI finds the test emulator through the environment, like a user's shell."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)


async def _run(*argv: str) -> int:
    from async_batchstate.cli import main

    return await asyncio.to_thread(main, list(argv))


async def test_cli_batch_show_prints_progress_missing_players_and_consistency(
    make_manager: ManagerFactory,
    batch_collection: str,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`batch show ID --json`: status, counts, missing players, deadline, consistency."""
    import json

    manager = make_manager()
    deadline = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    await manager.create_batch("b", expected_players=["p1", "p2"], deadline=deadline)
    await manager.record_completion("b", "p1", 4)

    code = await _run("batch", "show", "b", "--collection", batch_collection, "--json")
    shown = json.loads(capsys.readouterr().out)
    table = await _run("batch", "show", "b", "--collection", batch_collection)

    assert 0 == code == table
    assert ("in_progress", 1, 2, ["p2"], True) == (
        shown["status"],
        shown["completed_count"],
        shown["expected_count"],
        shown["missing_players"],
        shown["consistent"],
    )
    assert deadline.isoformat() == shown["deadline"]
    assert "missing players" in capsys.readouterr().out


async def test_cli_batch_list_and_expire(
    make_manager: ManagerFactory,
    batch_collection: str,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`batch list --status in_progress --older-than 0s`, then `batch expire ID --reason`:
    exit 0 for the expiring call, 1 for the second; the reason is stored."""
    import json

    manager = make_manager()
    for batch_id in ("a", "b"):
        await manager.create_batch(batch_id, expected_count=2)
    await manager.record_completion("a", "p", 1)
    await manager.record_completion("a", "q", 1)

    listed = await _run(
        "batch", "list", "--collection", batch_collection, "--status", "in_progress",
        "--older-than", "0s", "--json",
    )  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    first = await _run(
        "batch", "expire", "b", "--reason", "stuck", "--collection", batch_collection
    )
    second = await _run(
        "batch", "expire", "b", "--reason", "again", "--collection", batch_collection
    )

    assert (0, ["b"]) == (listed, [r["batch_id"] for r in rows])
    assert (0, 1) == (first, second)
    progress = await manager.get_progress("b")
    assert ("expired", "stuck") == (progress.status, progress.expired_reason)


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "show", "a/b"],
        ["batch", "expire", "__x__", "--reason", "r"],
        ["batch", "list", "--older-than", "soon"],
        ["batch", "list", "--limit", "0"],
        ["batch", "callbacks", "b", "--run", "no_such_module_here:f"],
        ["batch", "callbacks", "b", "--run", "json"],
    ],
)
async def test_cli_batch_bad_input_is_one_line_and_exit_2(
    argv: list[str], cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad ids and values: exit 2 with a one-line error, never a traceback."""
    with pytest.raises(SystemExit) as exited:
        await _run(*argv)

    err = capsys.readouterr().err
    assert 2 == exited.value.code
    assert "Traceback" not in err and "error:" in err


async def test_retain_for_stamps_a_finished_batch_and_its_documents_for_ttl(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """retain_for: the finishing write stamps expire_at on the batch; its completion
    documents get the same stamp; an unfinished batch gets none."""
    manager = make_manager(retain_for=dt.timedelta(days=30))
    await manager.create_batch("done", expected_players=["p1", "p2"])
    await manager.create_batch("open", expected_count=2)
    await asyncio.gather(*(manager.record_completion("done", p, 1) for p in ("p1", "p2")))
    await manager.record_completion("open", "p1", 1)
    await manager.aclose()

    done = await read_batch(firestore_client, batch_collection, "done")
    stamps = {d["expire_at"] for d in (await read_completions(
        firestore_client, batch_collection, "done")).values()}  # fmt: skip
    still_open = await read_batch(firestore_client, batch_collection, "open")
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < done["expire_at"] - now <= dt.timedelta(days=30)
    assert 1 == len(stamps) and dt.timedelta(days=29) < stamps.pop() - now
    assert "expire_at" not in still_open


async def test_cli_batch_callbacks_runs_an_owed_callback_once(
    make_manager: ManagerFactory,
    batch_collection: str,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """on_complete failed in the finalizing process, so the callback stays owed:
    `batch callbacks ID --run MODULE:FUNCTION` runs it with the batch's key (exit 0);
    run again, nothing is owed (exit 1)."""
    from ..helpers import CALLBACK_RUNS

    def broken(batch_id: str, progress: BatchProgress) -> None:
        raise RuntimeError("the coordinator's callback failed")

    manager = make_manager(on_complete=broken)
    await manager.create_batch("b", expected_count=1)
    await manager.record_completion("b", "p", 1)
    key = (await manager.get_progress("b")).finalization_key
    CALLBACK_RUNS.clear()
    argv = ["batch", "callbacks", "b", "--collection", batch_collection]
    argv += ["--run", "tests.helpers:record_callback", "--lease", "0.001"]

    first = await _run(*argv)
    second = await _run(*argv)

    assert (0, 1) == (first, second)
    assert [("b", key)] == CALLBACK_RUNS
