"""Owed callbacks: every finish owes one, whoever finished; run in the background, under a lease.

Issue 17, points 3, 5 (callbacks), 7 and 10, on the real emulator with two clients
(two processes' worth of managers) where the situation has two: a manager (or the
CLI) without callbacks finishes a batch and a coordinator with them runs what is
owed; no callback runs inside a caller's ``record_completion``; a lost answer to a
claim is retried, never a raw client error; a callback slower than its lease is
not started again elsewhere while it runs, and a runner whose lease was taken
learns it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchProgress,
    BatchStateError,
    CompletionStatus,
    ConfigurationError,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.testing import (
    EmulatorInfo,
    FaultyProxy,
    LostAnswers,
    aclose_client,
    make_client,
)

from ..helpers import ManagerFactory, fast_reconnect, read_batch

pytestmark = [
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
    pytest.mark.guarantee("one-run-at-a-time-per-lease"),
    pytest.mark.guarantee("typed-errors"),
]

FAST = RetryPolicy(base_delay=0.005, max_delay=0.05, deadline=20.0, attempt_timeout=10.0)
LEASE = 0.5


class Runs:
    """A callback that records each run (batch, status, key) and may take a while."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.runs: list[tuple[str, str, str | None]] = []
        self.running = 0
        self.most_at_once = 0
        self.started = asyncio.Event()

    async def __call__(self, batch_id: str, progress: BatchProgress) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        self.runs.append((batch_id, progress.status, progress.finalization_key))


async def eventually(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait until ``check()`` holds (polling; generous for a loaded machine)."""
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


async def doc_until(
    client: AsyncClient, collection: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Batch ``b``'s document, read until ``check`` holds for it."""
    async with asyncio.timeout(15):
        while not check(doc := await read_batch(client, collection, "b")):
            await asyncio.sleep(0.05)
    return doc


# -- point 3: every finish owes its callback -----------------------------------------------


async def test_an_expiry_by_a_manager_without_callbacks_owes_on_expired(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A callback-less manager expires the batch: on_expired is owed (unclaimed), and the
    coordinator's deliver_owed_callbacks runs it at once, with the expiry's key."""
    bare = make_manager()
    await bare.create_batch("b", expected_count=2)
    assert await bare.expire("b", reason="operator")
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert (True, None) == (doc.get("callback_owed"), doc.get("callback_claimed_by"))

    expired = Runs()
    coordinator = other_manager(on_expired=expired)  # the default 60 s lease: unclaimed
    ran = await coordinator.deliver_owed_callbacks("b")

    assert True is ran
    assert [("b", "expired", f"b/{doc['finalised_by']}")] == expired.runs
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc


async def test_a_completion_by_a_manager_without_on_complete_owes_it_to_the_next_touch(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A manager without on_complete finalizes the batch; the coordinator's next completion
    of it (a redelivery) runs the owed on_complete in the background."""
    bare = make_manager()
    await bare.create_batch("b", expected_count=1)
    assert (await bare.record_completion("b", "p", 1)).batch_completed
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert (True, None) == (doc.get("callback_owed"), doc.get("callback_claimed_by"))

    completed = Runs()
    coordinator = other_manager(on_complete=completed)
    again = await coordinator.record_completion("b", "p", 1)
    await eventually(lambda: bool(completed.runs))

    assert CompletionStatus.DUPLICATE is again.status
    assert [("b", "complete", f"b/{doc['finalised_by']}")] == completed.runs


async def test_an_overdue_batch_expired_by_a_dashboards_get_progress_owes_on_expired(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """get_progress on an overdue batch by a callback-less manager expires it; the
    coordinator's own get_progress (its next touch) runs the owed on_expired."""
    dashboard = make_manager()
    await dashboard.create_batch("b", expected_count=2, deadline=dt.timedelta(seconds=-1))
    assert "expired" == (await dashboard.get_progress("b")).status

    expired = Runs()
    coordinator = other_manager(on_expired=expired)
    await coordinator.get_progress("b")
    await eventually(lambda: bool(expired.runs))

    assert ["expired"] == [status for _, status, _ in expired.runs]
    await eventually(lambda: expired.running == 0)


async def test_a_coordinators_sweep_runs_what_a_callback_less_manager_left_owed(
    make_manager: ManagerFactory, other_manager: Callable[..., AsyncBatchStateManager]
) -> None:
    """Nobody touches the batches again: the coordinator's periodic sweep of
    ``callback_owed == True`` runs the owed on_complete and on_expired anyway."""
    completed, expired = Runs(), Runs()
    coordinator = other_manager(
        on_complete=completed, on_expired=expired, callback_sweep_interval=0.1
    )
    await coordinator.create_batch("idle", expected_count=1)  # it is up and running
    bare = make_manager()
    await bare.create_batch("done", expected_count=1)
    await bare.create_batch("gone", expected_count=1)
    await bare.record_completion("done", "p", 1)
    await bare.expire("gone", reason="operator")

    await eventually(lambda: bool(completed.runs and expired.runs))

    assert (["done"], ["gone"]) == (
        [b for b, _, _ in completed.runs],
        [b for b, _, _ in expired.runs],
    )


async def test_a_manager_with_only_on_complete_leaves_an_expirys_lease_unclaimed(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """It owes on_expired but cannot run it, so it claims no lease: a coordinator with
    on_expired runs it at once instead of waiting a whole lease."""
    half = make_manager(on_complete=Runs())
    await half.create_batch("b", expected_count=2)
    assert await half.expire("b")
    expired = Runs()

    ran = await other_manager(on_expired=expired).deliver_owed_callbacks("b")

    assert (True, ["expired"]) == (ran, [status for _, status, _ in expired.runs])


@pytest.mark.parametrize("knob", ["callback_lease", "callback_sweep_interval"])
def test_a_bad_lease_or_sweep_interval_is_a_configuration_error(
    knob: str, firestore_client: AsyncClient
) -> None:
    """Both must be a positive finite number of seconds (the sweep interval may be None)."""
    bads: tuple[Any, ...] = (0, -1.0, float("nan"), float("inf"), "30", True)
    for bad in bads:
        with pytest.raises(ConfigurationError, match=knob):
            AsyncBatchStateManager(firestore_client, **{knob: bad})


CLI_RUNS: list[tuple[str, str]] = []


def cli_callback(batch_id: str, progress: BatchProgress) -> None:
    """The coordinator's callback, as `batch callbacks ID --run` loads it."""
    CLI_RUNS.append((batch_id, progress.status))


async def test_cli_expire_then_cli_callbacks_runs_the_owed_on_expired(
    make_manager: ManagerFactory,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`batch expire ID` (a manager without callbacks) owes on_expired; `batch callbacks ID
    --run MODULE:FUNCTION` then reports and runs it, and a second call finds nothing owed."""
    from async_batchstate.cli import main

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    CLI_RUNS.clear()
    await make_manager().create_batch("b", expected_count=2)
    where = ["--collection", batch_collection]
    run = [*where, "--run", f"{__name__}:cli_callback"]

    expired = await asyncio.to_thread(main, ["batch", "expire", "b", "--reason", "stuck", *where])
    ran = await asyncio.to_thread(main, ["batch", "callbacks", "b", *run])
    out = capsys.readouterr().out
    again = await asyncio.to_thread(main, ["batch", "callbacks", "b", *run])

    assert (0, 0, 1) == (expired, ran, again)
    assert "ran the owed callback" in out
    assert [("b", "expired")] == CLI_RUNS


# -- point 5: no callback inside a caller's record_completion -------------------------------


@pytest.mark.guarantee("callbacks-never-hold-a-caller")
async def test_a_completion_on_an_overdue_batch_never_waits_for_on_expired(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """record_completion on an overdue batch expires it and returns LATE while on_expired
    (which would never return by itself) still runs, in another task; released, it is done."""
    release = asyncio.Event()
    seen: list[asyncio.Task[Any] | None] = []

    async def on_expired(batch_id: str, progress: BatchProgress) -> None:
        seen.append(asyncio.current_task())
        await release.wait()

    manager = make_manager(on_expired=on_expired)
    await manager.create_batch("b", expected_count=2, deadline=dt.timedelta(seconds=-1))

    async def record() -> Any:
        caller = asyncio.current_task()
        result = await manager.record_completion("b", "p", 1, timeout=10)
        return caller, result

    async with asyncio.timeout(10):
        caller, result = await asyncio.create_task(record())
    await eventually(lambda: bool(seen))

    assert CompletionStatus.LATE is result.status
    assert caller not in seen
    release.set()
    await doc_until(firestore_client, batch_collection, lambda d: "callback_done_at" in d)
    assert 1 == len(seen)


async def test_close_waits_for_a_background_callback_within_its_drain(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The finalizing caller is answered while on_complete still runs; aclose with a long
    enough drain waits for it, and it ends done, once."""
    slow = Runs(seconds=0.5)
    manager = make_manager(on_complete=slow)
    await manager.create_batch("b", expected_count=1)

    result = await manager.record_completion("b", "p", 1)
    running = slow.running
    await manager.aclose(drain_timeout=30)

    assert (True, 1, 1) == (result.batch_completed, running, len(slow.runs))
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc


# -- point 7: lost answers and client errors never leak --------------------------------------


def _written(request: Any) -> tuple[set[str], set[str]]:
    """A Commit's field paths: (set or deleted by its mask, set by transforms)."""
    mask = {p for w in request.writes for p in w.update_mask.field_paths}
    transforms = {t.field_path for w in request.writes for t in w.update_transforms}
    return mask, transforms


def is_claim(request: Any) -> bool:
    """The Commit that claims an owed callback (not the finishing write, not the done mark)."""
    mask = _written(request)[0]
    return "callback_claimed_by" in mask and not {"finalised_by", "callback_owed"} & mask


def is_lease_write(request: Any) -> bool:
    """A renewal of a callback's lease, or its done mark."""
    mask, transforms = _written(request)
    renewal = not mask and transforms == {"callback_claimed_at"}
    return renewal or "callback_done_at" in transforms


async def test_a_lost_answer_to_the_claim_is_retried_and_the_callback_runs_once(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """The claim of an owed callback applied, its answer lost (UNAVAILABLE): the retry finds
    its own claim id, so deliver_owed_callbacks runs the callback once and returns True."""
    bare = make_manager()
    await bare.create_batch("b", expected_count=1)
    await bare.record_completion("b", "p", 1)
    completed = Runs()
    coordinator = make_manager(on_complete=completed, retry=FAST)
    lost = LostAnswers(times=1, when=is_claim).attach(firestore_client)

    ran = await coordinator.deliver_owed_callbacks("b")

    assert (1, True, 1) == (lost.total_lost, ran, len(completed.runs))
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc


async def test_lost_answers_to_every_renewal_and_the_done_mark_keep_one_run(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Every lease renewal and the done mark applied but unanswered: the runner keeps its
    lease (another manager never runs the callback) and the callback ends done, once."""
    slow = Runs(seconds=1.5)
    first = make_manager(on_complete=slow, callback_lease=LEASE, retry=FAST)
    lost = LostAnswers(times=None, when=is_lease_write).attach(firestore_client)
    await first.create_batch("b", expected_count=1)
    await first.record_completion("b", "p", 1)
    await slow.started.wait()
    other = Runs()
    second = other_manager(on_complete=other, callback_lease=LEASE)

    tries = []
    while slow.running:
        tries.append(await second.deliver_owed_callbacks("b"))
        await asyncio.sleep(0.05)
    doc = await doc_until(firestore_client, batch_collection, lambda d: "callback_done_at" in d)

    assert lost.total_lost >= 2  # renewals and the done mark
    assert ([], 1) == (other.runs, len(slow.runs))
    assert not any(tries)
    assert "callback_owed" not in doc


async def test_lost_answer_to_an_expiry_still_expires_once(
    make_manager: ManagerFactory, firestore_client: AsyncClient
) -> None:
    """expire()'s write applied, its answer lost: True once, then False; on_expired once."""
    expired = Runs()
    manager = make_manager(on_expired=expired, retry=FAST)
    await manager.create_batch("b", expected_count=2)
    lost = LostAnswers(times=1, when=lambda r: "finalised_by" in _written(r)[0])
    lost.attach(firestore_client)

    first = await manager.expire("b", reason="r")
    second = await manager.expire("b", reason="r")

    assert (1, True, False) == (lost.total_lost, first, second)
    assert 1 == len(expired.runs)


@pytest_asyncio.fixture
async def black_holed(
    firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FaultyProxy, AsyncClient]]:
    """A client whose connections go through a ``FaultyProxy`` (to black-hole later)."""
    fast_reconnect(monkeypatch)
    async with FaultyProxy(firestore_emulator.host) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        try:
            yield proxy, client
        finally:
            await proxy.restore()
            await aclose_client(client)


async def test_every_public_entry_point_under_a_black_hole_raises_a_batch_state_error(
    black_holed: tuple[FaultyProxy, AsyncClient],
    make_manager: ManagerFactory,
    batch_collection: str,
) -> None:
    """Network black-holed: each public call ends (within its retry deadline) in a
    BatchStateError, never a raw client error or a hang; aclose still returns."""
    proxy, client = black_holed
    setup = make_manager()
    await setup.create_batch("b", expected_count=2)
    await setup.record_completion("b", "p1", 1)
    short = RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=1.0, attempt_timeout=0.3)
    manager = AsyncBatchStateManager(
        client,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        retry=short,
        on_complete=Runs(),
    )
    await proxy.blackhole()

    async def listed() -> None:
        async for _ in manager.list_batches():
            pass

    async def stalled() -> None:
        async for _ in manager.stalled(0):
            pass

    calls: dict[str, Callable[[], Any]] = {
        "create_batch": lambda: manager.create_batch("new", expected_count=1),
        "record_completion": lambda: manager.record_completion("b", "p2", 1, timeout=2),
        "expire": lambda: manager.expire("b"),
        "finalize": lambda: manager.finalize("b"),
        "deliver_owed_callbacks": lambda: manager.deliver_owed_callbacks("b"),
        "get_progress": lambda: manager.get_progress("b"),
        "list_batches": listed,
        "stalled": stalled,
        "wait_until_complete": lambda: manager.wait_until_complete("b", timeout=2),
        "validate": lambda: manager.validate("b"),
        "reconcile": lambda: manager.reconcile("b"),
        "reconcile(dry_run)": lambda: manager.reconcile("b", dry_run=True),
    }
    escaped: dict[str, str] = {}
    for name, call in calls.items():
        try:
            async with asyncio.timeout(20):
                await call()
            escaped[name] = "returned"
        except BatchStateError:
            pass
        except Exception as exc:  # what the test is about: anything else escaping
            escaped[name] = repr(exc)
    async with asyncio.timeout(20):
        await manager.aclose(drain_timeout=1.0)

    assert {} == escaped


def test_client_errors_at_the_boundary_become_batch_state_errors() -> None:
    """A fatal client error escaping a public entry point is a WriteFailedError, a retryable
    one a RetryExhaustedError; each keeps the original as its cause."""
    from google.api_core import exceptions as gexc

    from async_batchstate import RetryExhaustedError, WriteFailedError
    from async_batchstate._write.boundary import typed_errors, typed_iteration

    @typed_errors
    async def refused() -> None:
        raise gexc.PermissionDenied("no")

    @typed_errors
    async def down() -> None:
        raise gexc.ServiceUnavailable("down")

    async def pages() -> AsyncIterator[int]:
        yield 1
        raise gexc.InvalidArgument("bad page")

    async def run() -> list[BaseException]:
        errors: list[BaseException] = []
        for call in (refused, down):
            try:
                await call()
            except BatchStateError as exc:
                errors.append(exc)
        try:
            async for _ in typed_iteration(pages(), "listing"):
                pass
        except BatchStateError as exc:
            errors.append(exc)
        return errors

    errors = asyncio.run(run())

    assert [WriteFailedError, RetryExhaustedError, WriteFailedError] == [type(e) for e in errors]
    assert [gexc.PermissionDenied, gexc.ServiceUnavailable, gexc.InvalidArgument] == [
        type(e.__cause__) for e in errors
    ]


# -- point 10: a callback slower than its lease ----------------------------------------------


async def test_a_callback_slower_than_its_lease_is_not_started_again_while_it_runs(
    make_manager: ManagerFactory,
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """on_complete takes 2 s against a 0.5 s lease: its runner renews the lease, so another
    process's deliveries and sweep find it held the whole time; one run, then done."""
    slow = Runs(seconds=2.0)
    first = make_manager(on_complete=slow, callback_lease=LEASE)
    await first.create_batch("b", expected_count=1)
    await first.record_completion("b", "p", 1)
    await slow.started.wait()
    other = Runs()
    second = other_manager(on_complete=other, callback_lease=LEASE, callback_sweep_interval=0.1)

    tries = []
    while slow.running:
        tries.append(await second.deliver_owed_callbacks("b"))
        await asyncio.sleep(0.05)
    await doc_until(firestore_client, batch_collection, lambda d: "callback_done_at" in d)

    assert ([], 1) == (other.runs, len(slow.runs))
    assert len(tries) > 5 and not any(tries)


async def test_a_runner_that_loses_its_lease_learns_it_and_leaves_the_done_mark(
    black_holed: tuple[FaultyProxy, AsyncClient],
    other_manager: Callable[..., AsyncBatchStateManager],
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner's network is black-holed while its callback runs: its renewals cannot
    land, another process takes the lease after it and runs the callback (marking it done);
    the first runner, its network back, logs that it lost the lease and marks nothing."""
    proxy, client = black_holed
    release = asyncio.Event()
    first_runs: list[str | None] = []

    async def held(batch_id: str, progress: BatchProgress) -> None:
        first_runs.append(progress.finalization_key)
        await release.wait()

    first = AsyncBatchStateManager(
        client,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        on_complete=held,
        callback_lease=LEASE,
        retry=RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=5.0, attempt_timeout=0.5),
    )
    await first.create_batch("b", expected_count=1)
    await first.record_completion("b", "p", 1)
    await eventually(lambda: bool(first_runs))
    await proxy.blackhole()
    taker = Runs()
    second = other_manager(on_complete=taker, callback_lease=LEASE)

    async with asyncio.timeout(15):
        while not await second.deliver_owed_callbacks("b"):
            await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="async_batchstate"):
        await proxy.restore()
        release.set()
        await first.aclose(drain_timeout=15)

    assert [first_runs[0]] == [key for _, _, key in taker.runs]
    assert "lost its lease" in caplog.text
    doc = await read_batch(firestore_client, batch_collection, "b")
    assert "callback_owed" not in doc and "callback_done_at" in doc
