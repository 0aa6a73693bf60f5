"""Network faults between the client and Firestore, through the shipped ``FaultyProxy``.

Every test runs a load of concurrent completions through a loopback proxy,
breaks the network in the middle of it, restores it, then redelivers every
completion whose caller got an error (as Pub/Sub would) and reads the batch
back directly: the counters must be exact, nothing doubled or half-written.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchProgress,
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    MigrationMode,
    RetryExhaustedError,
    RetryPolicy,
)
from async_batchstate.testing import (
    EmulatorInfo,
    FaultPoint,
    FaultyProxy,
    aclose_client,
    batch_violations,
    make_client,
)

from ..helpers import FaultGate, fast_reconnect

pytestmark = [
    pytest.mark.guarantee("atomicity"),
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("deadline"),
]

SLACK = 1.0
"""Seconds a caller may overrun its deadline (scheduling on a busy 2-core machine)."""


@dataclass
class Proxied:
    proxy: FaultyProxy
    client: AsyncClient


@pytest_asyncio.fixture
async def proxied(
    firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Proxied]:
    """A client whose every connection to the emulator goes through a ``FaultyProxy``
    (reconnecting quickly after a cut: ``fast_reconnect``)."""
    fast_reconnect(monkeypatch)
    async with FaultyProxy(firestore_emulator.host) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        try:
            yield Proxied(proxy, client)
        finally:
            await proxy.restore()
            await aclose_client(client)


@dataclass
class Outcome:
    player: str
    seconds: float
    result: CompletionResult | None = None
    error: BaseException | None = None


async def run_load(
    manager: AsyncBatchStateManager,
    batch_id: str,
    counts: dict[str, int],
    *,
    spread: float,
    timeout: float,
    fault: Callable[[], Awaitable[None]],
) -> list[Outcome]:
    """Start one caller per player over ``spread`` seconds while ``fault`` runs."""
    rng = random.Random(7)

    async def caller(player: str) -> Outcome:
        await asyncio.sleep(rng.uniform(0, spread))
        started = time.monotonic()
        try:
            result = await manager.record_completion(
                batch_id, player, counts[player], timeout=timeout
            )
            return Outcome(player, time.monotonic() - started, result=result)
        except Exception as exc:
            return Outcome(player, time.monotonic() - started, error=exc)

    callers = [asyncio.create_task(caller(p)) for p in counts]
    await fault()
    return list(await asyncio.gather(*callers))


async def redeliver(
    manager: AsyncBatchStateManager, batch_id: str, counts: dict[str, int], players: list[str]
) -> list[CompletionResult]:
    """Record ``players`` again, as Pub/Sub redelivers unacknowledged messages."""
    return list(
        await asyncio.gather(
            *(manager.record_completion(batch_id, p, counts[p], timeout=30) for p in players)
        )
    )


def check_outcomes(outcomes: list[Outcome], timeout: float) -> list[str]:
    """Every caller succeeded or got a typed error within its deadline; the failed players.

    A network fault is never a refusal: the error must say "not confirmed in
    time" (``CompletionTimeoutError`` / ``RetryExhaustedError``), not
    ``WriteFailedError`` ("Firestore refused the write, nothing written").
    """
    for o in outcomes:
        assert o.seconds <= timeout + SLACK, f"{o.player} waited {o.seconds:.2f}s > {timeout}s"
        if o.error is not None:
            assert isinstance(o.error, CompletionTimeoutError | RetryExhaustedError), repr(o.error)
    return [o.player for o in outcomes if o.error is not None]


async def assert_exact(
    manager: AsyncBatchStateManager,
    reader: AsyncClient,
    collection: str,
    batch_id: str,
    counts: dict[str, int],
    results: list[CompletionResult],
    finalized: list[str],
) -> None:
    """The batch holds exactly ``counts``, finalized once, nobody told RECORDED twice."""
    progress: BatchProgress = await manager.wait_until_complete(batch_id, timeout=30)
    assert len(counts) == progress.completed_count
    assert sum(counts.values()) == progress.total_predictions
    assert [] == await batch_violations(
        reader, collection, batch_id, manager.mode, expected=counts, require_finalized=True
    )
    recorded = [r.player for r in results if r.status is CompletionStatus.RECORDED]
    assert len(set(recorded)) == len(recorded), "a player was told RECORDED twice"
    assert [batch_id] == finalized
    assert sum(r.batch_completed for r in results) <= 1


@pytest.mark.parametrize(
    ("outage", "deadline"),
    [
        pytest.param(1.5, 10.0, id="short-cut-callers-ride-it-out"),
        pytest.param(3.0, 2.0, id="long-cut-callers-fail-typed"),
    ],
)
async def test_connection_cut_mid_load_then_redelivery_is_exact(
    outage: float,
    deadline: float,
    proxied: Proxied,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Resetting every connection mid-load: typed errors in time, exact counts after redelivery."""
    finalized: list[str] = []
    loading = FaultGate(FaultPoint.AFTER_COMMIT, count=2)
    policy = RetryPolicy(base_delay=0.05, max_delay=0.5, deadline=deadline, attempt_timeout=1.0)
    manager = AsyncBatchStateManager(
        proxied.client,
        fault_injector=loading,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        retry=policy,
        max_group_size=20,
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": i % 7 for i in range(150)}
    await manager.create_batch("b", expected_players=list(counts))

    async def cut() -> None:
        await loading.wait()  # mid-load: groups are committing, callers still arriving
        await proxied.proxy.cut()
        await asyncio.sleep(outage)
        await proxied.proxy.restore()

    outcomes = await run_load(manager, "b", counts, spread=1.0, timeout=deadline, fault=cut)
    failed = check_outcomes(outcomes, deadline)
    if outage > deadline:
        assert failed, "callers in flight during a cut longer than their deadline must fail"
    else:
        errors = [repr(o.error) for o in outcomes if o.error is not None]
        assert [] == errors, "a cut shorter than the deadline must be ridden out by retries"
        assert 0 < manager.stats().retries
    assert proxied.proxy.resets > 0
    again = await redeliver(manager, "b", counts, failed)
    results = [o.result for o in outcomes if o.result is not None] + again

    await assert_exact(manager, firestore_client, batch_collection, "b", counts, results, finalized)
    await manager.aclose()


async def test_blackhole_mid_load_then_redelivery_is_exact(
    proxied: Proxied, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Traffic silently dropped mid-load: attempt timeouts fire, typed errors in time, exact after."""
    finalized: list[str] = []
    deadline = 2.0  # two attempt timeouts and more fit in it
    loading = FaultGate(FaultPoint.AFTER_COMMIT, count=2)
    policy = RetryPolicy(base_delay=0.05, max_delay=0.5, deadline=deadline, attempt_timeout=0.8)
    manager = AsyncBatchStateManager(
        proxied.client,
        fault_injector=loading,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        retry=policy,
        max_group_size=20,
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": 1 + i % 5 for i in range(120)}
    await manager.create_batch("b", expected_players=list(counts))

    async def blackhole() -> None:
        await loading.wait()  # mid-load: groups are committing, callers still arriving
        await proxied.proxy.blackhole()
        await asyncio.sleep(deadline + 1.0)
        await proxied.proxy.restore()

    outcomes = await run_load(manager, "b", counts, spread=1.0, timeout=deadline, fault=blackhole)
    failed = check_outcomes(outcomes, deadline)
    assert failed, "callers in flight during a black hole longer than their deadline must fail"
    again = await redeliver(manager, "b", counts, failed)
    results = [o.result for o in outcomes if o.result is not None] + again

    await assert_exact(manager, firestore_client, batch_collection, "b", counts, results, finalized)
    await manager.aclose()


async def test_proxy_reset_is_transparent_to_a_retrying_caller(
    proxied: Proxied, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """One reset of every connection between two writes costs a retry at most, never an error."""
    manager = AsyncBatchStateManager(
        proxied.client,
        collection=batch_collection,
        mode=MigrationMode.SUBCOLLECTION_ONLY,
        retry=RetryPolicy(base_delay=0.05, max_delay=0.5, deadline=15.0, attempt_timeout=2.0),
    )
    await manager.create_batch("b", expected_count=2)
    first = await manager.record_completion("b", "p1", 3)
    assert 0 < await proxied.proxy.reset()
    second = await manager.record_completion("b", "p2", 4)

    assert CompletionStatus.RECORDED is first.status
    assert CompletionStatus.RECORDED is second.status
    assert second.batch_completed
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "b",
        manager.mode,
        expected={"p1": 3, "p2": 4},
        require_finalized=True,
    )
    await manager.aclose()
