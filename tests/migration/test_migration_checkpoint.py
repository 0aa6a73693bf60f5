"""The checkpoint stores, and how backfill reads and saves them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    ConfigurationError,
    InvalidIdError,
    Layout,
    MigrationMode,
)
from async_batchstate.migration import (
    FileCheckpoint,
    FirestoreCheckpoint,
    backfill,
)

from ..helpers import (
    seed_legacy,
)

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


# -- the checkpoint stores ------------------------------------------------------------------


async def test_file_checkpoint_loads_none_then_the_last_state_saved(tmp_path: Path) -> None:
    """No file: None. Each save replaces the whole state, atomically (no temporary file left)."""
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    assert None is await checkpoint.load()

    await checkpoint.save({"last_done": "b00001", "finished": False, "mode": "dual_write"})
    await checkpoint.save({"last_done": "b00007", "finished": True})

    assert {"last_done": "b00007", "finished": True} == await checkpoint.load()
    assert ["backfill.json"] == sorted(p.name for p in tmp_path.iterdir())


async def test_firestore_checkpoint_loads_none_then_the_last_state_saved(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A document ``<collection>_migration/<name>``: None before any save; each save replaces
    the state and stamps ``saved_at``; checkpoints of other names are independent."""
    layout = Layout(batch_collection)
    checkpoint = FirestoreCheckpoint(firestore_client, layout)
    other = FirestoreCheckpoint(firestore_client, layout, name="other")
    assert None is await checkpoint.load()

    await checkpoint.save({"last_done": "b00001", "finished": False, "mode": "dual_write"})
    await checkpoint.save({"last_done": "b00007", "finished": True})
    loaded = await checkpoint.load()

    assert loaded is not None
    assert {"last_done", "finished", "saved_at"} == loaded.keys()
    assert ("b00007", True) == (loaded["last_done"], loaded["finished"])
    assert isinstance(loaded["saved_at"], datetime)
    assert None is await other.load()
    snap = (
        await firestore_client.collection(f"{batch_collection}_migration")
        .document("backfill")
        .get()
    )
    assert snap.exists


async def test_firestore_checkpoint_refuses_a_bad_name(firestore_client: AsyncClient) -> None:
    """The name is a document id: validated like batch ids."""
    with pytest.raises(InvalidIdError):
        FirestoreCheckpoint(firestore_client, Layout("batches"), name="a/b")


async def test_a_finished_checkpoint_makes_the_next_backfill_start_over(
    firestore_client: AsyncClient, batch_collection: str, tmp_path: Path
) -> None:
    """After a finished run the next one walks every batch again (cheap: nothing to write)."""
    await seed_legacy(firestore_client, batch_collection, 3)
    layout = Layout(batch_collection)
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    await backfill(firestore_client, layout, DUAL, checkpoint=checkpoint)

    again = await backfill(firestore_client, layout, DUAL, checkpoint=checkpoint)

    assert (None, 3, 0) == (again.resumed_after, again.batches, again.completions_created)


async def test_dry_runs_and_batch_id_runs_neither_read_nor_save_the_checkpoint(
    firestore_client: AsyncClient, batch_collection: str, tmp_path: Path
) -> None:
    """Only a full, real run moves the checkpoint; a stale one does not restrict the others."""
    await seed_legacy(firestore_client, batch_collection, 3)
    layout = Layout(batch_collection)
    checkpoint = FileCheckpoint(tmp_path / "backfill.json")
    stale = {"last_done": "b00002", "finished": False, "mode": "dual_write"}
    await checkpoint.save(stale)

    dry = await backfill(firestore_client, layout, DUAL, dry_run=True, checkpoint=checkpoint)
    one = await backfill(
        firestore_client, layout, DUAL, batch_ids=["b00000"], checkpoint=checkpoint
    )

    assert (None, 3) == (dry.resumed_after, dry.batches)
    assert (None, 1) == (one.resumed_after, one.batches)
    assert stale == await checkpoint.load()


async def test_file_checkpoint_that_is_not_json_is_a_configuration_error(tmp_path: Any) -> None:
    """A checkpoint file that is not a JSON object raises ConfigurationError naming the file."""
    path = tmp_path / "checkpoint.json"
    path.write_text("[1, 2]", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=r"checkpoint\.json"):
        await FileCheckpoint(path).load()
