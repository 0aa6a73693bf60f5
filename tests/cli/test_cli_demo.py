"""The ``async-batchstate demo`` command, the README's main job, at a small size."""

from __future__ import annotations

import pytest

from async_batchstate.cli import main
from async_batchstate.testing import EmulatorInfo

from ..helpers import run_python


def test_demo_records_a_batch_consistently(
    firestore_emulator: EmulatorInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch_collection: str,
) -> None:
    """With redeliveries and worker failures the demo ends consistent, finalized once, exit 0."""
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
    assert ["async-batchstate: error: argument --workers: must be in [1, 10,000], got 0"] == [
        line.split(" (see ")[0] for line in err.splitlines()
    ]


def test_demo_with_several_processes_finalizes_once(
    firestore_emulator: EmulatorInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    batch_collection: str,
) -> None:
    """Two worker processes share the deliveries (redeliveries cross processes): consistent, one finalizer."""
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


def test_without_rich_the_command_says_to_install_the_cli_extra(pytester: pytest.Pytester) -> None:
    """rich not installed: one line on stderr naming the ``[cli]`` extra, exit 2, no traceback."""
    code = """
        import sys
        from async_batchstate.cli import main
        sys.exit(main(["demo", "--players", "1"]))
    """
    result = run_python(pytester, code, blocked={"rich"})
    assert 2 == result.ret
    assert [
        "the async-batchstate command needs the [cli] extra: pip install 'async-batchstate[cli]'"
    ] == result.stderr.lines
    assert [] == result.stdout.lines


def test_the_library_imports_without_rich(pytester: pytest.Pytester) -> None:
    """rich is the ``[cli]`` extra's: the library and its test helpers import without it."""
    code = """
        import async_batchstate, async_batchstate.testing
        print("OK")
    """
    result = run_python(pytester, code, blocked={"rich"})
    assert 0 == result.ret, str(result.stderr)
    assert ["OK"] == result.stdout.lines
