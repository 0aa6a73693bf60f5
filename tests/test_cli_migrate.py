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

pytestmark = pytest.mark.emulator


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
