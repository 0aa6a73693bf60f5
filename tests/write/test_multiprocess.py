"""Several OS processes recording into one batch, each also redelivering another's share."""

from __future__ import annotations

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.testing import EmulatorInfo

from ..helpers import ManagerFactory, read_batch, read_completions, run_workers

pytestmark = [
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("exactly-once-finalization-at-least-once-callback"),
]


@pytest.mark.parametrize("paced", [False, True], ids=["unpaced", "paced"])
async def test_four_processes_with_redelivery_count_exactly_and_finalize_once(
    paced: bool,
    firestore_emulator: EmulatorInfo,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """4 x 100 completions plus a redelivery of each by another process: exact, one finalizer.
    Paced (``document_write_rate``) at 20 Commits/s for the fleet: the same outcomes."""
    share = 100  # players per process; each records its own, then the next one's share
    await make_manager().create_batch("b", expected_count=4 * share)
    reports = await run_workers(
        firestore_emulator,
        batch_collection,
        "b",
        share,
        [None] * 4,
        document_write_rate=20.0 if paced else None,
    )

    results = [r for report in reports for r in report["results"]]
    assert 8 * share == len(results)
    assert 4 * share == sum(r["status"] == "recorded" for r in results)
    assert 4 * share == sum(r["status"] == "duplicate" for r in results)
    assert 1 == sum(r["completed"] for r in results)
    assert 1 == sum(len(report["finalized"]) for report in reports)
    assert 0 == sum(report["failed"] for report in reports)
    doc = await read_batch(firestore_client, batch_collection, "b")
    completions = await read_completions(firestore_client, batch_collection, "b")
    total = sum(i % 5 for i in range(4 * share))
    assert 4 * share == len(completions) == doc["completed_count"] == len(doc["completed_players"])
    assert total == doc["total_predictions"] == doc["total_predictions_subcoll"]
    assert "complete" == doc["status"]
