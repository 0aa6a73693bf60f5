"""The command line's answers to bad input and to failing batches, on the emulator.

Bad input or configuration: one line on stderr (``async-batchstate: error: ...``),
exit status 2, no traceback, nothing read or written. A batch that fails: listed
with its id, the run goes on with the others, exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    BatchNotFoundError,
    ConfigurationError,
    InvalidIdError,
    RetryExhaustedError,
    consistency,
)
from async_batchstate.cli import main
from async_batchstate.cli._common import one_line_logs, report
from async_batchstate.migration import MigrationError, _verify, _walk
from async_batchstate.testing import EmulatorInfo

from ..helpers import ManagerFactory, dual_batches, fail_one_batch, read_batch, read_completions

MIGRATE = ["backfill", "verify", "status", "cleanup-legacy"]
BAD_IDS = ["a/b", "__x__", ".", "..", ""]
MODE_FLAGS = ["ENABLE_SUBCOLLECTION_COMPLETIONS", "DUAL_WRITE_MODE", "USE_SUBCOLLECTION_READS"]
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


@pytest.fixture
def emulator_env(firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch) -> EmulatorInfo:
    """The environment points the command line at the test emulator; no mode flags set."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    for flag in MODE_FLAGS:
        monkeypatch.delenv(flag, raising=False)
    return firestore_emulator


def _run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit status (argparse's SystemExit too), stdout, stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exited:
        assert isinstance(exited.code, int)
        status = exited.code
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(err: str) -> None:
    assert 1 == len(err.splitlines()), err
    assert err.startswith("async-batchstate: error: "), err
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err


def _migrate(command: str, collection: str, *args: str) -> list[str]:
    return ["migrate", command, "--collection", collection, "--no-progress", *args]


# -- bad input: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
@pytest.mark.parametrize("command", MIGRATE)
def test_batch_id_firestore_cannot_store_is_one_line_and_exit_2(
    command: str,
    bad_id: str,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every migrate subcommand rejects a batch id Firestore cannot store while parsing
    the command line: one line naming --batch-id, exit status 2, nothing on stdout."""
    status, out, err = _run(
        _migrate(command, batch_collection, "--batch-id", "ok", "--batch-id", bad_id), capsys
    )

    assert (2, "") == (status, out)
    _assert_one_line_error(err)
    assert "--batch-id" in err


@pytest.mark.parametrize("command", MIGRATE)
def test_bad_batch_id_from_the_installed_command_is_one_line(
    command: str, emulator_env: EmulatorInfo
) -> None:
    """The issue's own command, run as a process: `migrate <cmd> --batch-id 'a/b'` ends
    with one line and status 2, not an ExceptionGroup traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "async_batchstate.cli", "migrate", command, "--batch-id", "a/b"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=False,
    )

    assert (2, "") == (done.returncode, done.stdout)
    _assert_one_line_error(done.stderr)
    assert "'a/b' must not contain '/'" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency", "0"],
        ["--concurrency", "-3"],
        ["--concurrency", "many"],
        ["--concurrency", "1.5"],
        ["--collection", "a/b"],
        ["--collection", ""],
        ["--completions-subcollection", "__x__"],
        ["--mode", "bogus"],
    ],
    ids=" ".join,
)
def test_bad_migrate_option_is_one_line_and_exit_2(
    args: list[str], emulator_env: EmulatorInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad numbers, collection paths and modes are refused while parsing: one line, exit 2."""
    status, out, err = _run(["migrate", "status", "--no-progress", *args], capsys)

    assert (2, "") == (status, out)
    _assert_one_line_error(err)
    assert args[0] in err


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-id", "b0", "--restart"],
        ["--batch-id", "b0", "--checkpoint", "none"],
        ["--restart", "--checkpoint", "none"],
    ],
    ids=" ".join,
)
def test_conflicting_backfill_flags_are_one_line_and_exit_2(
    args: list[str],
    emulator_env: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Flags that contradict each other are refused before anything is read or written."""
    status, out, err = _run(_migrate("backfill", batch_collection, *args), capsys)

    assert (2, "") == (status, out)
    _assert_one_line_error(err)


def test_checkpoint_that_is_a_directory_is_one_line_and_exit_2(
    emulator_env: EmulatorInfo,
    batch_collection: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--checkpoint` naming a directory is refused while parsing."""
    status, _, err = _run(
        _migrate("backfill", batch_collection, "--checkpoint", str(tmp_path)), capsys
    )

    assert 2 == status
    _assert_one_line_error(err)
    assert "is a directory" in err


async def test_checkpoint_file_that_is_not_json_is_one_line_exit_2_and_writes_nothing(
    firestore_client: AsyncClient,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A corrupt checkpoint file is bad input: one line, exit 2, no batch backfilled."""
    await (
        firestore_client.collection(batch_collection)
        .document("b0")
        .set(
            {
                "completed_players": ["p0"],
                "predictions_by_player": {"p0": 1},
                "total_predictions": 1,
            }
        )
    )
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text("{not json", encoding="utf-8")
    argv = _migrate(
        "backfill", batch_collection, "--mode", "dual_write", "--checkpoint", str(checkpoint)
    )

    status, _, err = await asyncio.to_thread(_run, argv, capsys)

    assert 2 == status
    _assert_one_line_error(err)
    assert "checkpoint.json" in err
    assert {} == await read_completions(firestore_client, batch_collection, "b0")


def test_contradictory_mode_flags_are_one_line_and_exit_2(
    emulator_env: EmulatorInfo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Environment mode flags that contradict each other: one line naming them, exit 2."""
    monkeypatch.setenv("ENABLE_SUBCOLLECTION_COMPLETIONS", "false")
    monkeypatch.setenv("USE_SUBCOLLECTION_READS", "true")

    status, _, err = _run(["migrate", "verify", "--no-progress"], capsys)

    assert 2 == status
    _assert_one_line_error(err)
    assert "USE_SUBCOLLECTION_READS" in err


@pytest.mark.parametrize("command", MIGRATE)
def test_no_emulator_nor_project_is_one_line_and_exit_2(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither FIRESTORE_EMULATOR_HOST nor GOOGLE_CLOUD_PROJECT: one line naming both, exit 2."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    for flag in MODE_FLAGS:
        monkeypatch.delenv(flag, raising=False)

    status, out, err = _run(
        ["migrate", command, "--no-progress", "--mode", "subcollection_only"], capsys
    )

    assert (2, "") == (status, out)
    _assert_one_line_error(err)
    assert "FIRESTORE_EMULATOR_HOST" in err
    assert "GOOGLE_CLOUD_PROJECT" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--players", "0"],
        ["--players", "ten"],
        ["--processes", "0"],
        ["--workers", "-2"],
        ["--redeliver", "1"],
        ["--fail", "nan"],
        ["--fail", "-0.1"],
        ["--mode", "bogus"],
        ["--batch-id", "a/b"],
        ["--batch-id", "__x__"],
        ["--collection", "a/b"],
    ],
    ids=" ".join,
)
def test_bad_demo_flag_is_one_line_and_exit_2(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad demo values are refused while parsing, before any emulator is started."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    status, out, err = _run(["demo", *args], capsys)

    assert (2, "") == (status, out)
    _assert_one_line_error(err)
    assert args[0] in err


def test_demo_with_more_processes_than_players_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process with no message would wait forever: the combination is refused up front."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    status, out, err = _run(["demo", "--players", "2", "--processes", "3"], capsys)

    assert (2, "") == (status, out)
    _assert_one_line_error(err)
    assert "--processes" in err


# -- a failing batch: listed, the others run, exit 1 ------------------------------------------


async def _legacy_batches(client: AsyncClient, collection: str, count: int) -> None:
    """Batches as the old code left them: array, map and total, three players each."""
    for i in range(count):
        await (
            client.collection(collection)
            .document(f"b{i}")
            .set(
                {
                    "expected_count": 4,
                    "completed_players": ["p0", "p1", "p2"],
                    "predictions_by_player": {"p0": 1, "p1": 2, "p2": 3},
                    "total_predictions": 6,
                }
            )
        )


def _row(out: str, name: str) -> str:
    """The value in the summary table's row ``name``."""
    match = re.search(rf"│ {re.escape(name)}\s*│\s*(\S+) │", out)
    assert match is not None, out
    return match.group(1)


async def test_verify_lists_a_missing_batch_and_checks_the_others(
    make_manager: ManagerFactory,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A listed batch the emulator does not have fails alone: it is listed by id, the
    three others are verified, exit status 1, no traceback."""
    await dual_batches(make_manager, 3)
    ids = ["--batch-id", "d0", "--batch-id", "gone", "--batch-id", "d1", "--batch-id", "d2"]
    argv = _migrate("verify", batch_collection, "--mode", "dual_write", "--concurrency", "2", *ids)

    status, out, err = await asyncio.to_thread(_run, argv, capsys)

    assert 1 == status
    assert ("3", "3", "1") == (
        _row(out, "batches checked"),
        _row(out, "consistent"),
        _row(out, "unreadable"),
    )
    assert "gone: BatchNotFoundError" in out
    assert "Traceback" not in err


async def test_status_lists_a_missing_batch_and_counts_the_others(
    make_manager: ManagerFactory,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`status` counts the batches it could read and lists the one it could not: exit 1."""
    await dual_batches(make_manager, 2)
    ids = ["--batch-id", "gone", "--batch-id", "d0", "--batch-id", "d1"]
    argv = _migrate("status", batch_collection, "--mode", "dual_write", *ids)

    status, out, err = await asyncio.to_thread(_run, argv, capsys)

    assert 1 == status
    assert ("2", "2", "1") == (_row(out, "dual"), _row(out, "total"), _row(out, "unreadable"))
    assert "gone: BatchNotFoundError" in out
    assert "Traceback" not in err


async def test_backfill_lists_the_batch_that_keeps_failing_and_backfills_the_others(
    firestore_client: AsyncClient,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One batch fails transiently (retried) then permanently: it is listed by id on one
    line, the other batches get their completion documents, exit status 1."""
    await _legacy_batches(firestore_client, batch_collection, 4)
    raised = fail_one_batch(monkeypatch, "b1")
    argv = _migrate("backfill", batch_collection, "--mode", "dual_write", "--checkpoint", "none")

    status, out, err = await asyncio.to_thread(_run, argv, capsys)

    assert 1 == status
    assert ["ServiceUnavailable", "PermissionDenied"] == [type(e).__name__ for e in raised]
    assert ("4", "3", "1") == (
        _row(out, "batches"),
        _row(out, "batches changed"),
        _row(out, "failed batches"),
    )
    assert re.search(
        r"^  b1: PermissionDenied: .*injected: missing permission on the batch$", out, re.M
    )
    assert "Traceback" not in err
    for batch in ("b0", "b2", "b3"):
        assert {"p0", "p1", "p2"} == (
            await read_completions(firestore_client, batch_collection, batch)
        ).keys()
    assert {} == await read_completions(firestore_client, batch_collection, "b1")


async def test_cleanup_lists_the_batch_that_keeps_failing_and_cleans_the_others(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`cleanup-legacy`: the batch whose removal keeps failing keeps its legacy fields and
    is listed; the others are cleaned; exit status 1."""
    await dual_batches(make_manager, 3)
    fail_one_batch(monkeypatch, "d1")
    argv = _migrate("cleanup-legacy", batch_collection, "--mode", "subcollection_only")

    status, out, err = await asyncio.to_thread(_run, argv, capsys)

    assert 1 == status
    assert ("2", "0", "1") == (
        _row(out, "batches cleaned"),
        _row(out, "skipped"),
        _row(out, "failed batches"),
    )
    assert re.search(r"^  d1: PermissionDenied: ", out, re.M)
    assert "Traceback" not in err
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d1")).keys()
    for batch in ("d0", "d2"):
        assert (
            not LEGACY_FIELDS & (await read_batch(firestore_client, batch_collection, batch)).keys()
        )


async def test_clean_run_still_exits_zero(
    make_manager: ManagerFactory,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without a failing batch the same verify run exits 0 (the failures are what make it 1)."""
    await dual_batches(make_manager, 2)
    argv = _migrate("verify", batch_collection, "--mode", "dual_write")

    status, out, _ = await asyncio.to_thread(_run, argv, capsys)

    assert 0 == status
    assert "0" == _row(out, "unreadable")


# -- errors of the whole run: one line, exit 1 ------------------------------------------------


async def test_listing_error_mid_run_is_one_line_and_exit_1(
    make_manager: ManagerFactory,
    emulator_env: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Listing the batches fails after the client's own retries (the library's lister is
    patched to raise UNAVAILABLE after the first real batch): one line, exit 1, no
    ExceptionGroup, after the batch already started was verified on the emulator."""
    await dual_batches(make_manager, 1)
    verified: list[str] = []
    real_validate = consistency.validate

    async def lister(*args: Any, **kwargs: Any) -> AsyncIterator[str]:
        yield "d0"
        raise ServiceUnavailable("injected: listing connection reset")

    async def validate(*args: Any, **kwargs: Any) -> Any:
        report = await real_validate(*args, **kwargs)
        verified.append(report.batch_id)
        return report

    monkeypatch.setattr(_walk, "iter_batch_ids", lister)
    monkeypatch.setattr(_verify, "validate", validate)
    argv = _migrate("verify", batch_collection, "--mode", "dual_write")

    status, _, err = await asyncio.to_thread(_run, argv, capsys)

    assert 1 == status
    assert ["d0"] == verified
    assert 1 == len(err.splitlines()), err
    assert err.startswith("async-batchstate: error: listing batches ")  # a BatchStateError
    assert "ServiceUnavailable: 503 injected: listing connection reset" in err
    assert "ExceptionGroup" not in err


def test_report_of_an_exception_group_is_its_first_leaf_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An ExceptionGroup of library errors (anyio task groups in the demo make them) is
    one line naming the first and counting the rest, exit 1."""
    group = ExceptionGroup(
        "workers",
        [RetryExhaustedError("x", attempts=3, elapsed=1.0, last_cause=OSError("a\nb"))]
        + [BatchNotFoundError("gone")] * 2,
    )

    status = report(group)

    err = capsys.readouterr().err
    assert 1 == status
    assert 1 == len(err.splitlines()), err
    assert err.rstrip().endswith("(and 2 more error(s))")


def test_report_of_only_bad_input_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input or configuration errors, even grouped, are exit status 2."""
    status = report(ExceptionGroup("checks", [InvalidIdError("bad id"), ConfigurationError("x")]))

    assert 2 == status
    assert capsys.readouterr().err.startswith("async-batchstate: error: bad id")


def test_report_reraises_what_is_not_a_known_kind_of_error() -> None:
    """A bug (here a TypeError) keeps its traceback: it is re-raised, not turned into a line."""
    with pytest.raises(TypeError, match="a bug"):
        report(TypeError("a bug"))


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (BatchNotFoundError("batch 'b' does not exist"), "not found: batch 'b' does not exist"),
        (MigrationError("backfill needs\na subcollection mode"), "refused: backfill needs a"),
    ],
)
def test_report_labels_a_missing_batch_and_a_refused_step_exit_1(
    error: Exception, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one place that turns a failure into a line labels what is not an error of the
    run itself: a batch that does not exist, a migration step that refused to run."""
    status = report(error)

    err = capsys.readouterr().err
    assert 1 == status
    assert 1 == len(err.splitlines()), err
    assert err.startswith(f"async-batchstate: {line}"), err


def test_a_library_warning_with_its_exception_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While the command runs, a warning the library logs with exc_info (a checkpoint save
    that failed) is one line on stderr naming the exception, not a traceback."""
    logger = logging.getLogger("async_batchstate.migration")
    try:
        raise ServiceUnavailable("connection\nreset")
    except ServiceUnavailable:
        with one_line_logs():
            logger.warning("saving the backfill checkpoint failed", exc_info=True)
        logger.warning("after the command: not printed by it")

    err = capsys.readouterr().err
    assert [
        "async-batchstate: warning: saving the backfill checkpoint failed "
        "(ServiceUnavailable: 503 connection reset)"
    ] == err.splitlines()
