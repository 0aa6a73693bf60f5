"""``async-batchstate migrate`` runs that the error tests do not cover, on the emulator."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.cli import main
from async_batchstate.testing import EmulatorInfo

from ..helpers import ManagerFactory, corrupt_batch, dual_batches, seed_legacy, sum_field


@pytest.fixture
def cli_env(firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI finds the test emulator through the environment, like a user's shell."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)


async def _legacy_batches(client: AsyncClient, collection: str, ids: list[str]) -> None:
    for batch_id in ids:
        await (
            client.collection(collection)
            .document(batch_id)
            .set(
                {
                    "expected_count": 2,
                    "completed_players": ["p0"],
                    "predictions_by_player": {"p0": 1},
                    "total_predictions": 1,
                }
            )
        )


@pytest.mark.parametrize("where", ["file", "firestore"])
async def test_restart_resets_the_checkpoint_and_backfills_from_the_first_batch(
    where: str,
    firestore_client: AsyncClient,
    cli_env: None,
    batch_collection: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint saved mid-run (after b1) makes a plain run resume after b1; with
    --restart the checkpoint is reset first and every batch is handled (3 of 3)."""
    await _legacy_batches(firestore_client, batch_collection, ["b0", "b1", "b2"])
    saved = {"last_done": "b1", "finished": False, "mode": "dual_write"}
    if where == "file":
        checkpoint = str(tmp_path / "checkpoint.json")
        Path(checkpoint).write_text(json.dumps(saved), encoding="utf-8")
    else:
        checkpoint = "firestore"
        await (
            firestore_client.collection(f"{batch_collection}_migration")
            .document("backfill")
            .set(saved)
        )
    argv = ["migrate", "backfill", "--collection", batch_collection, "--no-progress"]
    argv += ["--mode", "dual_write", "--checkpoint", checkpoint, "--restart"]

    status = await asyncio.to_thread(main, argv)

    out = capsys.readouterr().out
    assert 0 == status, out
    assert re.search(r"│ batches\s*│\s*3 │", out), out
    assert re.search(r"│ resumed after\s*│\s*- │", out), out


# -- the steps on batches the library made ----------------------------------------------------


def _cli(collection: str, *args: str) -> list[str]:
    return ["migrate", args[0], "--collection", collection, "--no-progress", *args[1:]]


async def test_cli_verify_exits_zero_when_clean(
    make_manager: ManagerFactory,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate verify` on consistent batches prints the summary and returns 0."""
    await dual_batches(make_manager, 2)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(main, _cli(batch_collection, "verify", "--mode", "dual_write"))

    assert 0 == code
    assert "batches checked" in capsys.readouterr().out


async def test_cli_verify_exits_nonzero_on_mismatch(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate verify` lists the inconsistent batch and returns 1."""
    await dual_batches(make_manager, 2)
    await corrupt_batch(firestore_client, batch_collection, "d0")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(main, _cli(batch_collection, "verify", "--mode", "dual_write"))

    assert 1 == code
    assert "ghost" not in capsys.readouterr().err


async def test_cli_backfill_then_status(
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate backfill` with the environment's mode flags, then `status` shows dual batches."""
    await seed_legacy(firestore_client, batch_collection, 3)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    monkeypatch.setenv("ENABLE_SUBCOLLECTION_COMPLETIONS", "true")
    monkeypatch.setenv("DUAL_WRITE_MODE", "true")

    backfilled = await asyncio.to_thread(main, _cli(batch_collection, "backfill"))
    counted = await asyncio.to_thread(main, _cli(batch_collection, "status"))

    out = capsys.readouterr().out
    assert (0, 0) == (backfilled, counted)
    assert "completion docs created" in out
    assert 9 == await sum_field(firestore_client, batch_collection, "completed_count")


async def test_cli_cleanup_refusal_exits_nonzero(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`migrate cleanup-legacy` with an inconsistent batch prints the reason and returns 1."""
    await dual_batches(make_manager, 1)
    await corrupt_batch(firestore_client, batch_collection, "d0")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)

    code = await asyncio.to_thread(
        main, _cli(batch_collection, "cleanup-legacy", "--mode", "subcollection_only")
    )

    assert 1 == code
    assert "d0: " in capsys.readouterr().out


def test_cli_without_emulator_or_project_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither FIRESTORE_EMULATOR_HOST nor GOOGLE_CLOUD_PROJECT: exit 2 naming both."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    code = main(["migrate", "status", "--no-progress"])

    err = capsys.readouterr().err
    assert 2 == code
    assert "FIRESTORE_EMULATOR_HOST" in err
    assert "GOOGLE_CLOUD_PROJECT" in err
