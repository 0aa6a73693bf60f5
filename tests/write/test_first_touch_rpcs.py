"""Round trips of a process's first completion for a batch against its later ones, per mode
and roster shape: the figures docs/performance.md ("First touch") states.

A first touch reads the batch's settings (expected count, roster, deadline, guard) before
it writes: one BatchGetDocuments, and one more for a roster kept in chunk documents.
After that a completion costs what its write path costs: one Commit lock-free (a batch
its completion documents guard), a read and a conditional Commit where the legacy array
must be read (LEGACY).
"""

from __future__ import annotations

from collections import Counter

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate.testing import EmulatorInfo, RpcCounter, aclose_client, make_client

ROSTERS = {
    "no roster": None,
    "inline roster": [f"p{i}" for i in range(100)],
    "chunked roster": [f"player-{i:08d}" for i in range(2_000)],  # > 16 KiB of ids
}
WARM = {
    MigrationMode.LEGACY: Counter(BatchGetDocuments=1, Commit=1),
    MigrationMode.DUAL_WRITE: Counter(Commit=1),
    MigrationMode.SUBCOLLECTION_ONLY: Counter(Commit=1),
}


@pytest.mark.parametrize("roster", list(ROSTERS))
@pytest.mark.parametrize("mode", list(WARM), ids=lambda m: m.name)
async def test_a_first_touch_costs_the_settings_read_and_then_what_a_warm_write_costs(
    mode: MigrationMode,
    roster: str,
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A fresh process: its first completion of a batch sends the settings read (plus the
    roster's chunks where they are chunked) and then the warm write; its second sends
    the warm write only."""
    players = ROSTERS[roster]
    creator = AsyncBatchStateManager(firestore_client, collection=batch_collection, mode=mode)
    if players is None:
        await creator.create_batch("b", expected_count=3_000)
    else:
        await creator.create_batch("b", expected_players=players)
    await creator.aclose()
    first_player, second_player = ("p0", "p1") if players is None else players[:2]

    client = make_client(firestore_emulator)
    manager = AsyncBatchStateManager(
        client, collection=batch_collection, mode=mode, validation_rate=0.0
    )
    try:
        with RpcCounter().attach(client) as first:
            await manager.record_completion("b", first_player, 1)
        with RpcCounter().attach(client) as warm:
            await manager.record_completion("b", second_player, 1)
    finally:
        await manager.aclose()
        await aclose_client(client)

    settings = Counter(BatchGetDocuments=2 if roster == "chunked roster" else 1)
    assert WARM[mode] == warm.counts
    assert WARM[mode] + settings == first.counts
