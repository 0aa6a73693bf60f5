"""Smoke test of the fleet rehearsal: ``python -m benchmarks.rehearsal --quick`` passes its checks.

It runs the whole rehearsal (about a minute and a half: coordinator processes,
rolling deploys, a SIGKILL, a scale-in, a cut and a black-hole, the migration)
on the session's emulators, and asserts the run's own verdicts. Latency and
failure-rate targets are the full run's business, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from async_batchstate.testing import EmulatorInfo, PubSubEmulator

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.rehearsal
@pytest.mark.timeout(900)
def test_quick_rehearsal_loses_nothing(
    firestore_emulator: EmulatorInfo, pubsub_emulator: PubSubEmulator, tmp_path: Path
) -> None:
    """0 lost, 0 acknowledged-unwritten, 0 violations, every finished batch finalized once."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.rehearsal",
            "--quick",
            "--firestore-emulator",
            firestore_emulator.host,
            "--pubsub-emulator",
            pubsub_emulator.host,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    results = tmp_path / "quick-rehearsal.json"
    assert results.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(results.read_text())
    verdicts = data["verdicts"]
    assert (0, 0, 0) == (
        verdicts["lost"],
        verdicts["acked_unwritten"],
        verdicts["violations"],
    ), json.dumps(data["examples"], indent=1)
    assert 0 == verdicts["not_finalized_once"], data["examples"]["callbacks"]
    assert data["ok"], run.stdout[-3000:]
    assert 0 == run.returncode
    for name in ("quick-rehearsal.md", "quick-rehearsal.png"):
        assert (tmp_path / name).stat().st_size > 0
