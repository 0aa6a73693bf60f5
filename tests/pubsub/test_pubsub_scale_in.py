"""Scale-in inside Cloud Run's 10 s: SIGTERM to exit, timed from outside, for the worker
of docs/pubsub.md (run verbatim) and for the push app under uvicorn, with writes in
flight and with writes retrying (Firestore black-holed behind a FaultyProxy).

Each test also checks what the shutdown may not do: acknowledge a completion that was
not written. A pull message cut short comes back to a consumer started afterwards, so
every batch still ends exact; a push request answered 200 is recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from google.api_core.exceptions import NotFound
from google.cloud import pubsub_v1
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate.pubsub import PullConsumer
from async_batchstate.testing import (
    EmulatorInfo,
    FaultyProxy,
    PubSubEmulator,
    batch_violations,
    free_port,
)

from ..pubsub_helpers import create_batches, messages, plan, wait_finalized
from ._push_kit import envelope, http_post

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "pubsub.md"
CLOUD_RUN_KILL = 10.0
"""Seconds from SIGTERM to Cloud Run's SIGKILL: the exit must come before."""
EMULATOR_TAIL = 150.0
"""Seconds for the messages a stopped consumer nacked: the emulator holds them on the
closed stream for an ack deadline (or more) before offering them again."""

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def documented_worker() -> str:
    """The ``# worker.py`` block of docs/pubsub.md, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    (worker,) = [str(b) for b in blocks if b.startswith("# worker.py")]
    return worker


def documented_subscription() -> tuple[str, str, str]:
    """(project, topic, subscription) of the worker's SUBSCRIPTION constant."""
    found = re.search(
        r'SUBSCRIPTION = "projects/([^/]+)/subscriptions/([^"]+)"', documented_worker()
    )
    assert found is not None
    return found.group(1), "completions", found.group(2)


def report(what: str, seconds: float) -> None:
    """Print a measured SIGTERM-to-exit (run with -s to see it)."""
    print(f"\nSIGTERM-to-exit, {what}: {seconds:.2f} s", flush=True)


async def sigterm_and_time(proc: subprocess.Popen[str]) -> tuple[float, int, str]:
    """Send SIGTERM; seconds until the process is gone, its exit status and stderr."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    return time.monotonic() - started, proc.returncode, err


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running after it is killed (by its own handle)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


@pytest_asyncio.fixture
async def proxy(firestore_emulator: EmulatorInfo) -> AsyncIterator[FaultyProxy]:
    """A FaultyProxy in front of the Firestore emulator."""
    async with FaultyProxy(firestore_emulator.host) as p:
        yield p


@pytest_asyncio.fixture
async def docs_manager(firestore_client: AsyncClient) -> AsyncIterator[AsyncBatchStateManager]:
    """A manager like the documented worker's: default collection, mode from the environment."""
    manager = AsyncBatchStateManager(firestore_client, mode=MigrationMode.from_env())
    yield manager
    await manager.aclose()


def fresh_subscription(emulator: PubSubEmulator) -> str:
    """The worker's subscription, recreated empty (the emulator lives for the session)."""
    project, topic, sub = documented_subscription()
    path = f"projects/{project}/subscriptions/{sub}"
    with pubsub_v1.SubscriberClient() as client, contextlib.suppress(NotFound):
        client.delete_subscription(request={"subscription": path})
    emulator.create_topic(project, topic)
    return emulator.create_subscription(project, sub, topic, ack_deadline=10)


def start_worker(
    tmp_path: Path, firestore_host: str, pubsub: PubSubEmulator, project: str
) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(documented_worker())
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "GOOGLE_CLOUD_PROJECT": project,
    }
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def completed(manager: AsyncBatchStateManager, batch_ids: list[str]) -> int:
    total = 0
    for batch_id in batch_ids:
        total += (await manager.get_progress(batch_id, include_players=False)).completed_count
    return total


async def finish_and_check(
    manager: AsyncBatchStateManager,
    client: AsyncClient,
    path: str,
    expected: dict[str, dict[str, int]],
) -> None:
    """A second consumer takes what the worker left; every batch ends exact and finalized."""
    async with PullConsumer(manager, path, ack_deadline=10):
        await wait_finalized(manager, expected, timeout=EMULATOR_TAIL)
    for batch_id, players in expected.items():
        violations = await batch_violations(
            client,
            manager.layout.collection,
            batch_id,
            manager.mode,
            expected=players,
            require_finalized=True,
        )
        assert [] == violations, batch_id


async def test_the_documented_worker_exits_0_in_time_with_writes_in_flight(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    pubsub_emulator: PubSubEmulator,
    firestore_client: AsyncClient,
    docs_manager: AsyncBatchStateManager,
) -> None:
    """docs/pubsub.md's worker.py, SIGTERM mid-load: exit 0 before 10 s, nothing acked unwritten."""
    path = fresh_subscription(pubsub_emulator)
    expected = plan(4, 150)
    await create_batches(docs_manager, expected)
    worker = start_worker(
        tmp_path, firestore_emulator.host, pubsub_emulator, firestore_emulator.project
    )
    processes.append(worker)
    project, topic, _ = documented_subscription()
    pubsub_emulator.publish(project, topic, messages(expected, duplicate_every=10))
    while await completed(docs_manager, list(expected)) < 50:
        assert worker.poll() is None, worker.communicate()
        await asyncio.sleep(0.02)
    seconds, status, err = await sigterm_and_time(worker)
    report("documented worker, writes in flight", seconds)
    assert (0, "") == (status, err if "Traceback" in err else "")
    assert seconds < CLOUD_RUN_KILL
    assert await completed(docs_manager, list(expected)) < 600
    await finish_and_check(docs_manager, firestore_client, path, expected)


async def test_the_documented_worker_exits_0_in_time_with_writes_retrying(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    pubsub_emulator: PubSubEmulator,
    firestore_client: AsyncClient,
    docs_manager: AsyncBatchStateManager,
    proxy: FaultyProxy,
) -> None:
    """Firestore black-holed under the worker: its writes hang and retry; still exit 0 in time."""
    path = fresh_subscription(pubsub_emulator)
    expected = plan(2, 100)
    await create_batches(docs_manager, expected)
    worker = start_worker(tmp_path, proxy.host, pubsub_emulator, firestore_emulator.project)
    processes.append(worker)
    project, topic, _ = documented_subscription()
    pubsub_emulator.publish(project, topic, messages(expected))
    while await completed(docs_manager, list(expected)) < 20:
        assert worker.poll() is None, worker.communicate()
        await asyncio.sleep(0.02)
    await proxy.blackhole()
    await asyncio.sleep(1.5)  # writes in flight now wait on the black hole
    seconds, status, err = await sigterm_and_time(worker)
    report("documented worker, writes retrying (Firestore black-holed)", seconds)
    # The library may log a failure of the black-holed network with its traceback (a
    # finalization check that timed out); what must never appear is an exception that
    # escaped: the exit status says so, and these are the ways asyncio reports one.
    escaped = ("CancelledError", "never retrieved", "Exception ignored", "never awaited")
    assert (0, []) == (status, [e for e in escaped if e in err]), err
    assert seconds < CLOUD_RUN_KILL
    await proxy.restore()
    await finish_and_check(docs_manager, firestore_client, path, expected)


# -- push under uvicorn ----------------------------------------------------------------


def documented_graceful_shutdown() -> str:
    """The ``--timeout-graceful-shutdown`` of the docs' uvicorn command line."""
    found = re.search(r"--timeout-graceful-shutdown (\d+)", DOCS.read_text())
    assert found is not None
    return found.group(1)


async def start_push_app(
    processes: list[subprocess.Popen[str]], firestore_host: str, project: str, collection: str
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "GOOGLE_CLOUD_PROJECT": project,
        "PUSH_COLLECTION": collection,
    }
    command = [sys.executable, "-m", "uvicorn", "tests._push_service:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--timeout-graceful-shutdown", documented_graceful_shutdown()]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    processes.append(proc)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "uvicorn did not start"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        await asyncio.sleep(0.05)


def post_completion(url: str, batch_id: str, player: str) -> int:
    """POST one completion; 0 when the connection fails (the server is going away)."""
    from ..pubsub_helpers import payload

    try:
        return http_post(url, envelope(payload(batch_id, player, 1), "2999-01-01T00:00:00Z"))
    except OSError:
        return 0


def uvicorn_exited(status: int) -> bool:
    """uvicorn re-raises the SIGTERM it handled once its shutdown is over."""
    return status in (0, -signal.SIGTERM)


async def test_the_push_app_under_uvicorn_exits_in_time_with_writes_in_flight(
    processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Requests streaming in at SIGTERM: exit before 10 s; every 200 is a recorded completion."""
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.DUAL_WRITE
    )
    players = [f"p{i:04d}" for i in range(2000)]
    await manager.create_batch("b", expected_players=players)
    proc, url = await start_push_app(
        processes, firestore_emulator.host, firestore_emulator.project, batch_collection
    )
    answers: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = {p: loop.run_in_executor(pool, post_completion, url, "b", p) for p in players}
        while sum(f.done() for f in futures.values()) < 100:
            await asyncio.sleep(0.02)
        seconds, status, err = await sigterm_and_time(proc)
        for player, future in futures.items():
            answers[player] = await future
    report("push app under uvicorn, writes in flight", seconds)
    assert uvicorn_exited(status), err
    assert "Traceback" not in err
    assert seconds < CLOUD_RUN_KILL
    progress = await manager.get_progress("b")
    recorded = set(progress.completed_players)
    acked = {p for p, code in answers.items() if code == 200}
    assert set() == acked - recorded
    assert len(acked) >= 100
    await manager.aclose()


async def test_the_push_app_under_uvicorn_exits_in_time_with_writes_retrying(
    processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
    proxy: FaultyProxy,
) -> None:
    """Firestore black-holed: 20 requests hang in their writes at SIGTERM; exit before 10 s, none 200."""
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.DUAL_WRITE
    )
    players = [f"p{i:02d}" for i in range(40)]
    await manager.create_batch("b", expected_players=players)
    proc, url = await start_push_app(
        processes, proxy.host, firestore_emulator.project, batch_collection
    )
    assert 200 == await asyncio.to_thread(post_completion, url, "b", players[0])  # warm
    await proxy.blackhole()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [loop.run_in_executor(pool, post_completion, url, "b", p) for p in players[1:21]]
        await asyncio.sleep(1.5)  # in their writes, waiting on the black hole
        seconds, status, err = await sigterm_and_time(proc)
        answers = [await f for f in futures]
    report("push app under uvicorn, writes retrying (Firestore black-holed)", seconds)
    assert uvicorn_exited(status), err
    assert "Traceback" not in err
    assert seconds < CLOUD_RUN_KILL
    assert [503] * 20 == answers  # cut short at uvicorn's graceful timeout, and said so
    await proxy.restore()
    await manager.aclose()
