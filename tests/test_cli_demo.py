"""The ``async-batchstate demo`` command, the README's main job, at a small size."""

from __future__ import annotations

import pytest

from async_batchstate.cli import main
from async_batchstate.testing import EmulatorInfo


def test_demo_records_a_batch_consistently(
    firestore_emulator: EmulatorInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch_collection: str,
) -> None:
    """With redeliveries and worker failures the demo ends consistent, finalised once, exit 0."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    status = main(
        [
            "demo",
            "--players",
            "60",
            "--workers",
            "15",
            "--redeliver",
            "0.3",
            "--fail",
            "0.2",
            "--collection",
            batch_collection,
            "--seed",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "consistent" in out
    assert "OK" in out


def test_demo_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Nonsense sizes exit with status 2 and one line naming the flag, before touching Firestore."""
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--workers", "0"])

    err = capsys.readouterr().err
    assert 2 == exited.value.code
    assert ["async-batchstate: error: argument --workers: must be >= 1, got 0"] == [
        line.split(" (see ")[0] for line in err.splitlines()
    ]


def test_demo_with_several_processes_finalises_once(
    firestore_emulator: EmulatorInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch_collection: str,
) -> None:
    """Two worker processes share the deliveries (redeliveries cross processes): consistent, one finaliser."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    status = main(
        [
            "demo",
            "--players",
            "80",
            "--workers",
            "10",
            "--processes",
            "2",
            "--redeliver",
            "0.3",
            "--collection",
            batch_collection,
            "--seed",
            "5",
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "2 process(es)" in out
    assert "consistent" in out
