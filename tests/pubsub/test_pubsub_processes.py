"""Several pull-consumer processes on one subscription: SIGTERM (scale-in) and SIGKILL mid-load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager
from async_batchstate.testing import EmulatorInfo, PubSubEmulator

from ..helpers import ManagerFactory
from ..pubsub_helpers import (
    PROJECT,
    assert_exact,
    create_batches,
    messages,
    names,
    on_complete_recorder,
    plan,
    wait_finalized,
)

ROOT = Path(__file__).resolve().parents[2]

EMULATOR_TAIL = 150.0
"""Seconds allowed for the last messages: usually 10-15, but the emulator routes messages
nacked as a stream closes (and those of a killed process) to that dead stream, where they
wait out a 10 s lease, sometimes several times over on a loaded machine."""

pytestmark = pytest.mark.timeout(240)


Starter = Callable[..., list[subprocess.Popen[str]]]


@pytest.fixture
def start_workers(
    firestore_emulator: EmulatorInfo, pubsub_emulator: PubSubEmulator, batch_collection: str
) -> Iterator[Starter]:
    """Start N worker processes on a subscription; any still running after the test is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(n: int, subscription: str, delay: float = 0.05) -> list[subprocess.Popen[str]]:
        procs = _spawn(
            n, firestore_emulator, pubsub_emulator, batch_collection, subscription, delay
        )
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate(timeout=30)


def _spawn(
    n: int,
    firestore: EmulatorInfo,
    pubsub: PubSubEmulator,
    collection: str,
    subscription: str,
    delay: float,
) -> list[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "GOOGLE_CLOUD_PROJECT": firestore.project,
    }
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._pubsub_worker",
                collection,
                subscription,
                str(delay),
                "6",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


async def ready(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert "ready\n" == line, proc.stderr.read() if proc.stderr else ""


async def completed(manager: AsyncBatchStateManager, batch_ids: list[str]) -> int:
    total = 0
    for batch_id in batch_ids:
        total += (await manager.get_progress(batch_id, include_players=False)).completed_count
    return total


async def finish(proc: subprocess.Popen[str]) -> tuple[list[str], dict[str, Any] | None]:
    """The process's output: batches it finalized, and its stats if it exited cleanly."""
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finalized = [line.split()[1] for line in out.splitlines() if line.startswith("finalized ")]
    stats = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("stats ")]
    if proc.returncode != -signal.SIGKILL:
        assert 0 == proc.returncode, err
    return finalized, stats[0] if stats else None


async def owed_callbacks(
    manager: AsyncBatchStateManager, batch_ids: list[str], seen: list[str]
) -> None:
    """Run callbacks a killed process left owed, if any (their 2 s lease lapses first)."""
    missing = [b for b in batch_ids if b not in seen]
    if missing:
        await asyncio.sleep(2.5)
    for batch_id in missing:
        await manager.deliver_owed_callbacks(batch_id)


async def test_sigterm_mid_load_drains_and_the_others_finish_exactly(
    start_workers: Starter,
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """One of 2 consumers gets SIGTERM mid-load: it exits 0 after its drain; counts exact."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete, callback_lease=2.0)
    expected = plan(3, 40)
    await create_batches(manager, expected)
    topic, sub = names()
    pubsub_emulator.create_topic(PROJECT, topic)
    path = pubsub_emulator.create_subscription(PROJECT, sub, topic)
    procs = start_workers(2, path)
    await ready(procs)
    published = messages(expected, duplicate_every=10)
    pubsub_emulator.publish(PROJECT, topic, published)
    while await completed(manager, list(expected)) < 20:
        await asyncio.sleep(0.05)
    procs[0].send_signal(signal.SIGTERM)
    stopped, stats = await finish(procs[0])
    assert stats is not None
    assert stats["acked"] > 0
    assert 0 == stats["in_flight"]
    await wait_finalized(manager, expected, timeout=EMULATOR_TAIL)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    rest, _ = await finish(procs[1])
    await owed_callbacks(manager, list(expected), stopped + rest)
    assert Counter(list(expected)) == Counter(stopped + rest + finalized)
    await assert_exact(
        firestore_client, batch_collection, manager, expected, stopped + rest + finalized
    )


async def test_a_killed_consumer_s_messages_come_back_to_the_others(
    start_workers: Starter,
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """3 consumers, one SIGKILLed mid-load: its unacked messages return after the 10 s lease.

    The killed one never finishes a write (each attempt waits an hour), so the
    batches can only complete if the messages it held come back to the others.
    """
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete, callback_lease=2.0)
    expected = plan(3, 40)
    await create_batches(manager, expected)
    topic, sub = names()
    pubsub_emulator.create_topic(PROJECT, topic)
    path = pubsub_emulator.create_subscription(PROJECT, sub, topic, ack_deadline=10)
    procs = start_workers(1, path, delay=3600) + start_workers(2, path)
    await ready(procs)
    pubsub_emulator.publish(PROJECT, topic, messages(expected, duplicate_every=10))
    while await completed(manager, list(expected)) < 20:
        await asyncio.sleep(0.05)
    procs[0].kill()
    assert await completed(manager, list(expected)) < 120
    await wait_finalized(manager, expected, timeout=EMULATOR_TAIL)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    outputs = [await finish(proc) for proc in procs]
    assert outputs[0][1] is None  # killed: no stats
    workers = [b for batch_ids, _ in outputs for b in batch_ids]
    await owed_callbacks(manager, list(expected), workers)
    everyone = workers + finalized
    assert Counter(list(expected)) == Counter(everyone)
    await assert_exact(firestore_client, batch_collection, manager, expected, everyone)
