"""Each migration mode writes exactly its structures and reads from the right one."""

from __future__ import annotations

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import CompletionStatus, MigrationMode

from ..helpers import ManagerFactory, read_batch, read_completions

LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}
SUBCOLL_FIELDS = {"completed_count", "total_predictions_subcoll", "last_updated"}


@pytest.mark.parametrize("mode", list(MigrationMode))
async def test_mode_writes_exactly_its_structures(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Legacy fields exist iff the mode writes them; completion docs iff it writes those."""
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_count=3)
    result = await manager.record_completion("b", "p1", predictions_count=4)
    await manager.record_completion("b", "p2", predictions_count=5)

    assert result.status is CompletionStatus.RECORDED
    doc = await read_batch(firestore_client, batch_collection, "b")
    completions = await read_completions(firestore_client, batch_collection, "b")
    if mode.writes_legacy:
        assert LEGACY_FIELDS <= doc.keys()
        assert sorted(doc["completed_players"]) == ["p1", "p2"]
        assert doc["predictions_by_player"] == {"p1": 4, "p2": 5}
        assert doc["total_predictions"] == 9
    else:
        assert not (LEGACY_FIELDS & doc.keys())
    if mode.writes_subcollection:
        assert SUBCOLL_FIELDS <= doc.keys()
        assert doc["completed_count"] == 2
        assert doc["total_predictions_subcoll"] == 9
        assert set(completions) == {"p1", "p2"}
        assert completions["p1"]["player_lookup"] == "p1"
        assert completions["p1"]["predictions_count"] == 4
        assert completions["p1"]["completed_at"] is not None
    else:
        assert completions == {}
        assert not (SUBCOLL_FIELDS & doc.keys())


@pytest.mark.parametrize("mode", list(MigrationMode))
async def test_mode_reads_from_its_structure(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """get_progress takes the total and the players from the structure the mode reads.

    The count is the batch's count as every mode that wrote it counts (completion
    documents plus legacy-only players): a marker planted in the total and the player
    list of the other structure changes nothing.
    """
    manager = make_manager(mode=mode)
    await manager.create_batch("b", expected_count=5)
    await manager.record_completion("b", "p1", predictions_count=1)
    ref = firestore_client.collection(batch_collection).document("b")
    # Plant a marker in the structure the mode must NOT read; progress must ignore it.
    if mode.reads_subcollection:
        await ref.update({"completed_players": ["p1", "ghost"], "total_predictions": 99})
    else:
        await ref.update({"total_predictions_subcoll": 99})

    progress = await manager.get_progress("b")

    assert progress.completed_count == 1
    assert progress.total_predictions == 1
    assert progress.completed_players == ("p1",)
    assert progress.expected_count == 5
    assert not progress.is_complete
