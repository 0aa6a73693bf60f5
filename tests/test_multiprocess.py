"""Several OS processes recording into one batch, each also redelivering another's share."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.testing import EmulatorInfo

from .helpers import ManagerFactory, read_batch, read_completions

ROOT = Path(__file__).resolve().parents[1]


async def test_four_processes_with_redelivery_count_exactly_and_finalize_once(
    firestore_emulator: EmulatorInfo,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """4 x 100 completions plus a redelivery of each by another process: exact, one finalizer."""
    share = 100  # players per process; each records its own, then the next one's share
    await make_manager().create_batch("b", expected_count=4 * share)
    env = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "GOOGLE_CLOUD_PROJECT": firestore_emulator.project,
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._mp_worker",
                batch_collection,
                "b",
                str(k * share),
                str(share),
                str(((k + 1) % 4) * share),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
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
        out, err = proc.communicate(timeout=100)
        assert 0 == proc.returncode, err
        reports.append(json.loads(out))

    results = [r for report in reports for r in report["results"]]
    assert 8 * share == len(results)
    assert 4 * share == sum(r["status"] == "recorded" for r in results)
    assert 4 * share == sum(r["status"] == "duplicate" for r in results)
    assert 1 == sum(r["completed"] for r in results)
    assert 1 == sum(len(report["finalized"]) for report in reports)
    assert 0 == sum(report["failed"] for report in reports)
    doc = await read_batch(firestore_client, batch_collection, "b")
    completions = await read_completions(firestore_client, batch_collection, "b")
    total = sum(i % 5 for i in range(4 * share))
    assert 4 * share == len(completions) == doc["completed_count"] == len(doc["completed_players"])
    assert total == doc["total_predictions"] == doc["total_predictions_subcoll"]
    assert "complete" == doc["status"]
