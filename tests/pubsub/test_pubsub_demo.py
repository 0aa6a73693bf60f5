"""``async-batchstate demo --pubsub push|pull`` through the real Pub/Sub emulator, small."""

from __future__ import annotations

import pytest

from async_batchstate.cli import main
from async_batchstate.testing import EmulatorInfo, PubSubEmulator


@pytest.mark.parametrize("way", ["push", "pull"])
def test_demo_through_pubsub_ends_consistent(
    firestore_emulator: EmulatorInfo,
    pubsub_emulator: PubSubEmulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch_collection: str,
    way: str,
) -> None:
    """Publisher duplicates and failed workers: consistent, finalized once, exit 0."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    argv = ["demo", "--pubsub", way, "--players", "20", "--workers", "10"]
    argv += ["--redeliver", "0.2", "--fail", "0.2", "--collection", batch_collection, "--seed", "5"]
    status = main(argv)
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "consistent" in out
    assert f"pubsub {way}" in out


def test_demo_through_pubsub_runs_in_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    """--pubsub with --processes is refused before anything starts."""
    assert 0 != main(["demo", "--pubsub", "pull", "--processes", "2"])
    assert "--pubsub runs in one process" in capsys.readouterr().err
