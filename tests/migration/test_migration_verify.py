"""``verify`` and ``status`` on the emulator."""

from __future__ import annotations

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    Layout,
    MigrationMode,
)
from async_batchstate.migration import (
    BatchState,
    status,
)

from ..helpers import (
    ManagerFactory,
    corrupt_batch,
    dual_batches,
    seed_legacy,
)

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


async def test_status_counts_each_state(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Legacy-only, dual, subcollection-only and inconsistent batches are counted apart."""
    await seed_legacy(firestore_client, batch_collection, 2)
    await dual_batches(make_manager, 3)
    await corrupt_batch(firestore_client, batch_collection, "d2")
    sub_only = make_manager(mode=SUB_ONLY)
    await sub_only.create_batch("s0", expected_count=2)
    await sub_only.record_completion("s0", "p1", predictions_count=1)

    summary = await status(firestore_client, Layout(batch_collection), DUAL)

    assert {
        BatchState.LEGACY_ONLY: 2,
        BatchState.DUAL: 2,
        # s0 was created by SUBCOLLECTION_ONLY (array_partial): not a DUAL_WRITE mismatch
        BatchState.SUBCOLLECTION_ONLY: 1,
        BatchState.INCONSISTENT: 1,  # d2
    } == dict(summary.counts)
