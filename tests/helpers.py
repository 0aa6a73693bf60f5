"""Helpers the test modules share (fixtures stay in conftest.py, helpers live here)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core.exceptions import PermissionDenied, ServiceUnavailable
from google.cloud.firestore_v1 import ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from async_batchstate import AsyncBatchStateManager, BatchProgress, MigrationMode
from async_batchstate._store import transact
from async_batchstate.testing import EmulatorInfo, FaultPoint

ROOT = Path(__file__).resolve().parents[1]


class Keys:
    """An ``on_complete`` / ``on_expired`` that records each run's finalization key."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []

    def __call__(self, batch_id: str, progress: BatchProgress) -> None:
        self.keys.append(progress.finalization_key)


ManagerFactory = Callable[..., AsyncBatchStateManager]
"""The ``make_manager`` fixture: ``AsyncBatchStateManager`` keyword arguments -> a manager."""

COMPLETIONS_BACKFILLED = "completions_backfilled"
"""The mark backfill sets on a batch whose array players all have completion documents."""


async def read_batch(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """The batch document's fields, read directly (not through the manager)."""
    snap = await client.collection(collection).document(batch_id).get()
    return snap.to_dict() or {}


async def read_completions(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """Completion documents by id, read directly."""
    docs = client.collection(collection).document(batch_id).collection("completions").stream()
    return {d.id: d.to_dict() async for d in docs}


def fail_one_batch(monkeypatch: pytest.MonkeyPatch, batch_id: str) -> list[BaseException]:
    """Make the migration's transactions on ``batch_id`` fail, transiently then permanently.

    Patches the library's ``run_transactional`` as ``transact`` (the transaction
    with our retry that backfill and cleanup-legacy run) calls it, not Firestore: every other batch runs its real
    transactions on the emulator. The first attempt on ``batch_id`` raises
    UNAVAILABLE (the library retries it), the next ones PERMISSION_DENIED (not
    retried). Returns the errors raised, in order.
    """
    real = transact.run_transactional
    raised: list[BaseException] = []

    async def flaky(function: Any, transaction: Any, *args: Any) -> Any:
        if batch_id in args:
            error: BaseException = (
                ServiceUnavailable("injected: connection reset")
                if not raised
                else PermissionDenied("injected: missing permission\non the batch")
            )
            raised.append(error)
            raise error
        return await real(function, transaction, *args)

    monkeypatch.setattr(transact, "run_transactional", flaky)
    return raised


async def seed_legacy(client: AsyncClient, collection: str, batches: int, players: int = 3) -> None:
    """Batches as the old code left them: array, map and total only (raw batched writes)."""
    col = client.collection(collection)
    for start in range(0, batches, 500):
        writes = client.batch()
        for i in range(start, min(start + 500, batches)):
            names = [f"p{j}" for j in range(players)]
            writes.set(
                col.document(f"b{i:05d}"),
                {
                    "expected_count": players + 1,
                    "status": "in_progress",
                    "completed_players": names,
                    "predictions_by_player": {n: j + 1 for j, n in enumerate(names)},
                    "total_predictions": sum(range(1, players + 1)),
                },
            )
        await writes.commit()


async def sum_field(client: AsyncClient, collection: str, name: str) -> int:
    """The ``sum()`` aggregation of ``name`` over the collection."""
    rows = await client.collection(collection).sum(name, alias="s").get()
    return int(rows[0][0].value)


async def dual_batches(make_manager: ManagerFactory, count: int = 3) -> None:
    """``count`` batches ``d0``... in DUAL_WRITE, two players recorded in each."""
    manager = make_manager(mode=MigrationMode.DUAL_WRITE)
    for i in range(count):
        await manager.create_batch(f"d{i}", expected_count=5)
        await manager.record_completion(f"d{i}", "p1", predictions_count=2)
        await manager.record_completion(f"d{i}", "p2", predictions_count=3)


async def corrupt_batch(client: AsyncClient, collection: str, batch_id: str) -> None:
    """A ghost player in the legacy array, map and totals only (inconsistent under every mode)."""
    await (
        client.collection(collection)
        .document(batch_id)
        .update(
            {
                "completed_players": ArrayUnion(["ghost"]),
                FieldPath("predictions_by_player", "ghost").to_api_repr(): 1,
                "total_predictions": Increment(1),
                "completed_count": Increment(1),
            }
        )
    )


_BLOCK_IMPORTS = """
import sys

class _Blocked:
    \"\"\"Refuse to import the top-level packages in BLOCKED, as if they were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run_python(
    pytester: pytest.Pytester, code: str, *, blocked: Iterable[str] = ()
) -> pytest.RunResult:
    """Run ``code`` in a fresh interpreter of this environment, in pytester's directory.

    The top-level packages in ``blocked`` cannot be imported there, as if not installed.
    """
    prelude = f"BLOCKED = {sorted(blocked)!r}\n{_BLOCK_IMPORTS}" if blocked else ""
    return pytester.run(sys.executable, "-c", prelude + textwrap.dedent(code))


INNER_PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
"""Options of every pytest that a test runs in a subprocess (``run_pytest``).

Without the cache (nothing left in pytester's directory) and without hypothesis's
plugin: hypothesis, installed for this suite's own property tests, imports all of
itself when its plugin loads (about 2 s of each run on 2 cores), and no test file
run this way uses it. Every other installed plugin loads as in a user's run,
``async_batchstate``'s and pytest-asyncio's included.
"""


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``pytest *args`` in a fresh interpreter, in pytester's directory, as a user runs it."""
    return pytester.runpytest_subprocess(*INNER_PYTEST_ARGS, *args)


FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
)
"""Channel options: retry connecting every 0.1-0.3 s."""


def fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulator clients whose channel is made during this test reconnect within 0.3 s.

    gRPC's reconnect backoff starts at 1 s and grows 1.6x (to 2 minutes): a channel
    that lost its server for a few seconds connects again seconds after the server is
    back. A test of what the library does once the network or the emulator is back
    waits for the library, not for that timer. (The clients' emulator channel is
    ``grpc.aio.insecure_channel``, made at the first RPC.)
    """
    insecure_channel = grpc.aio.insecure_channel

    def channel(target: str, options: Any = (), *args: Any, **kwargs: Any) -> grpc.aio.Channel:
        return insecure_channel(target, [*options, *FAST_RECONNECT], *args, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", channel)


class FaultGate:
    """A ``fault_injector`` that tells a test when write attempts reach ``point``, and can
    hold them there: synchronisation by events instead of sleeping and hoping.

    Every call at ``point`` is recorded in ``arrivals``; ``reached`` is set once
    ``count`` calls have arrived. With ``hold=True`` each arriving call then waits
    until ``release()``; a held call cancelled before that (the manager gave up on
    the attempt) is counted in ``abandoned`` and sets ``was_abandoned``.

    Example::

        gate = FaultGate(FaultPoint.BEFORE_COMMIT, count=2, hold=True)
        manager = make_manager(fault_injector=gate)
        ...start callers...
        await gate.wait()  # two groups are in flight, staged, not committed
        gate.release()
    """

    def __init__(self, point: FaultPoint, *, count: int = 1, hold: bool = False) -> None:
        self.point = point
        self.count = count
        self.hold = hold
        self.arrivals: list[tuple[str, list[str]]] = []
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self.abandoned = 0
        self.was_abandoned = asyncio.Event()

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is not self.point:
            return
        self.arrivals.append((batch_id, list(players)))
        if len(self.arrivals) >= self.count:
            self.reached.set()
        if self.hold:
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                self.abandoned += 1
                self.was_abandoned.set()
                raise

    @property
    def players(self) -> list[str]:
        """Every player of every arrival, in order."""
        return [p for _, players in self.arrivals for p in players]

    async def wait(self, timeout: float = 30.0) -> None:
        """Until ``count`` calls have arrived at ``point`` (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self.reached.wait()

    async def wait_abandoned(self, timeout: float = 30.0) -> None:
        """Until a held call has been cancelled (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self.was_abandoned.wait()

    def release(self) -> None:
        """Let held calls, and every later one, through."""
        self.released.set()


CALLBACK_RUNS: list[tuple[str, str | None]] = []
"""What ``record_callback`` saw: (batch id, finalization key); the CLI loads it by name."""


def record_callback(batch_id: str, progress: Any) -> None:
    """An ``on_complete`` for ``async-batchstate batch callbacks --run tests.helpers:...``."""
    CALLBACK_RUNS.append((batch_id, progress.finalization_key))


async def run_workers(
    emulator: EmulatorInfo,
    collection: str,
    batch_id: str,
    share: int,
    modes: Sequence[MigrationMode | None],
    *,
    document_write_rate: float | None = None,
) -> list[dict[str, Any]]:
    """Run one ``tests._mp_worker`` OS process per entry of ``modes``, started together.

    Process ``k`` records players ``p{k*share}..`` then redelivers the next process's
    share (so every completion reaches two processes); ``None`` is DUAL_WRITE. Every
    manager gets ``document_write_rate``. Returns each process's JSON report.
    """
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": emulator.project,
        "MP_WORKER_DOCUMENT_WRITE_RATE": str(document_write_rate or ""),
    }
    n = len(modes)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._mp_worker",
                collection,
                batch_id,
                str(k * share),
                str(share),
                str(((k + 1) % n) * share),
                *([] if mode is None else [mode.value]),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, mode in enumerate(modes)
    ]
    for proc in procs:  # every process connected, its manager open
        assert proc.stdout is not None
        assert "ready\n" == await asyncio.to_thread(proc.stdout.readline)
    for proc in procs:  # then all go at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, err = await asyncio.to_thread(proc.communicate, timeout=100)
        assert 0 == proc.returncode, err
        reports.append(json.loads(out))
    return reports


class Injector:
    """Raises ``error`` at ``point`` for the first ``times`` attempts (all attempts if None)."""

    def __init__(self, point: FaultPoint, error: Exception, times: int | None) -> None:
        self.point = point
        self.error = error
        self.times = times
        self.raised = 0
        self.enabled = True

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if not self.enabled or point is not self.point:
            return
        if self.times is None or self.raised < self.times:
            self.raised += 1
            raise self.error
