"""The Firestore emulator killed outright (SIGKILL) in the middle of a load.

The test owns its emulator (never the session's): it kills it with
``FirestoreEmulator.kill()`` while completions are in flight, then starts a
new one on the SAME port, so the same ``AsyncClient`` (bound to a host at
construction) and the same manager carry on once gRPC reconnects.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchNotFoundError,
    BatchStateError,
    CompletionStatus,
    CompletionTimeoutError,
    MigrationMode,
    RetryExhaustedError,
    RetryPolicy,
)
from async_batchstate.testing import (
    EmulatorInfo,
    EmulatorNotFoundError,
    EmulatorStartError,
    FaultPoint,
    FirestoreEmulator,
    aclose_client,
    batch_violations,
    make_client,
)

from ..helpers import FaultGate, fast_reconnect

pytestmark = [
    pytest.mark.guarantee("atomicity"),
    pytest.mark.guarantee("deadline"),
    pytest.mark.slow,
]

DEADLINE = 3.0
SLACK = 1.0


@dataclass
class Owned:
    emulator: FirestoreEmulator
    info: EmulatorInfo
    client: AsyncClient


@pytest_asyncio.fixture
async def owned(
    firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Owned]:
    """An emulator of this test's own (the session's emulator is never killed) and a client
    that reconnects within 0.3 s of its restart (``fast_reconnect``)."""
    fast_reconnect(monkeypatch)
    emulator = FirestoreEmulator()
    try:
        await asyncio.to_thread(emulator.start)
    except (EmulatorNotFoundError, EmulatorStartError) as exc:  # pragma: no cover
        pytest.fail(f"a second emulator could not start: {exc}")
    info = EmulatorInfo(emulator.host, firestore_emulator.project, emulator)
    state = Owned(emulator, info, make_client(info))
    try:
        # A cold emulator's first requests are slow: warm it before timing anything.
        async with asyncio.timeout(60):
            for i in range(20):
                await state.client.collection("warmup").document(f"w{i}").set({"i": i})
        yield state
    finally:
        await aclose_client(state.client)
        await asyncio.to_thread(emulator.stop)
        if state.emulator is not emulator:
            await asyncio.to_thread(state.emulator.stop)  # the restarted one


async def test_emulator_killed_mid_load_fails_callers_typed_then_same_manager_recovers(
    owned: Owned, batch_collection: str
) -> None:
    """SIGKILL mid-load: every pending caller gets a typed error within its deadline (no hang);
    a new emulator on the same port serves the same client and manager, counts exact."""
    finalized: list[str] = []
    loading = FaultGate(FaultPoint.AFTER_COMMIT, count=3)
    manager = AsyncBatchStateManager(
        owned.client,
        fault_injector=loading,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        max_group_size=10,
        retry=RetryPolicy(base_delay=0.05, max_delay=0.5, deadline=DEADLINE, attempt_timeout=1.0),
        on_complete=lambda b, _p: finalized.append(b),
    )
    counts = {f"p{i}": i % 5 for i in range(150)}
    await manager.create_batch("b", expected_players=list(counts))
    rng = random.Random(5)

    async def caller(player: str) -> tuple[float, BaseException | None]:
        await asyncio.sleep(rng.uniform(0, 1.0))
        started = time.monotonic()
        try:
            await manager.record_completion("b", player, counts[player])
            return time.monotonic() - started, None
        except Exception as exc:
            return time.monotonic() - started, exc

    tasks = [asyncio.create_task(caller(p)) for p in counts]
    await loading.wait()  # mid-load: groups are committing, callers still arriving
    await asyncio.to_thread(owned.emulator.kill)
    async with asyncio.timeout(DEADLINE + 1.0 + 2 * SLACK):  # no caller may hang
        outcomes = await asyncio.gather(*tasks)

    errors = [e for _, e in outcomes if e is not None]
    assert errors, "callers after the kill must fail"
    for seconds, error in outcomes:
        assert seconds <= DEADLINE + SLACK
        if error is not None:
            assert isinstance(error, CompletionTimeoutError | RetryExhaustedError), repr(error)
    assert isinstance(errors[0], BatchStateError)

    # A new emulator on the same port: the same client and manager work again.
    killed = owned.emulator
    await asyncio.to_thread(killed.stop)  # reaps the dead process, closes its log
    restarted = FirestoreEmulator(port=killed.port)
    owned.emulator = restarted  # the fixture stops this one
    await asyncio.to_thread(restarted.start)
    # The new JVM is cold (and the client's channel reconnecting): warm it through the
    # same client, as the fixture warmed the first one, before the manager's short
    # per-attempt timeouts are held against it.
    async with asyncio.timeout(60):
        for i in range(10):
            await owned.client.collection("warmup").document(f"r{i}").set({"i": i})

    # The old data died with the process: a redelivery to the lost batch is refused
    # typed, and creates nothing (no phantom batch).
    with pytest.raises(BatchNotFoundError):
        await manager.record_completion("b", "p0", 1, timeout=30)
    assert not (await owned.client.collection(batch_collection).document("b").get()).exists

    new_counts = {f"q{i}": i for i in range(40)}
    await manager.create_batch("b2", expected_players=list(new_counts))
    results = await asyncio.gather(
        *(manager.record_completion("b2", p, n, timeout=30) for p, n in new_counts.items())
    )
    assert {CompletionStatus.RECORDED} == {r.status for r in results}
    assert 1 == sum(r.batch_completed for r in results)
    assert "b2" == finalized[-1]
    assert [] == await batch_violations(
        owned.client,
        batch_collection,
        "b2",
        manager.mode,
        expected=new_counts,
        require_finalized=True,
    )
    await manager.aclose()
