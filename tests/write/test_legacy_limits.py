"""The legacy array near Firestore's document limits (1 MiB, 40,000 index entries).

Modes that write the legacy array warn at ``legacy_array_warn_ratio`` of
``legacy_array_limit`` and refuse a batch over the limit before anything is
written, pointing at ``SUBCOLLECTION_ONLY``; that mode has no such limit and
records a batch over it exactly.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionStatus,
    LegacyArrayLimitError,
    MigrationMode,
)
from async_batchstate.testing import batch_violations

from ..helpers import ManagerFactory, read_batch

pytestmark = pytest.mark.guarantee("document-limits")

LEGACY_WRITERS = [m for m in MigrationMode if m.writes_legacy]


def near_limit_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "near the legacy array limit" in r.getMessage()
    ]


@pytest.mark.parametrize("mode", LEGACY_WRITERS, ids=lambda m: m.value)
async def test_warns_at_the_configured_threshold_only(
    mode: MigrationMode, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """limit 100, ratio 0.8: 79 players pass silently, 80 log one warning naming the batch."""
    manager = make_manager(mode=mode, legacy_array_limit=100, legacy_array_warn_ratio=0.8)
    caplog.set_level(logging.WARNING, logger="async_batchstate")

    await manager.create_batch("quiet", expected_count=79)
    assert [] == near_limit_warnings(caplog)
    await manager.create_batch("loud", expected_players=[f"p{i}" for i in range(80)])

    [record] = near_limit_warnings(caplog)
    assert "'loud'" in record.getMessage()
    assert ("loud", 80) == (record.batch_id, record.expected_count)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", LEGACY_WRITERS, ids=lambda m: m.value)
async def test_refuses_over_the_limit_before_writing_and_names_subcollection_only(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """One player over the limit: LegacyArrayLimitError saying SUBCOLLECTION_ONLY; no document."""
    manager = make_manager(mode=mode, legacy_array_limit=100)

    with pytest.raises(LegacyArrayLimitError, match="SUBCOLLECTION_ONLY"):
        await manager.create_batch("big", expected_count=101)
    with pytest.raises(LegacyArrayLimitError, match="SUBCOLLECTION_ONLY"):
        await manager.create_batch("big", expected_players=[f"p{i}" for i in range(101)])

    assert not (await firestore_client.collection(batch_collection).document("big").get()).exists
    assert await manager.create_batch("ok", expected_count=100)


def test_default_count_limit_stays_under_40000_index_entries() -> None:
    """Each player costs 3 index entries (array entry, map key, map value): the default limit
    keeps the batch document under Firestore's 40,000."""
    limit = inspect.signature(AsyncBatchStateManager).parameters["legacy_array_limit"].default
    assert limit * 3 < 40_000


@pytest.mark.parametrize("mode", LEGACY_WRITERS, ids=lambda m: m.value)
async def test_refuses_long_ids_that_would_outgrow_one_mib_under_the_count_limit(
    mode: MigrationMode,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 players (far under the count limit) with 600-byte ids need ~1.2 MB of array and
    map: refused up front (the emulator would reject that document); 400-byte ids only warn."""
    caplog.set_level(logging.WARNING, logger="async_batchstate")
    manager = make_manager(mode=mode)
    long_ids = [f"{i:04d}" + "x" * 596 for i in range(1_000)]

    with pytest.raises(LegacyArrayLimitError, match="SUBCOLLECTION_ONLY"):
        await manager.create_batch("long", expected_players=long_ids)
    assert not (await firestore_client.collection(batch_collection).document("long").get()).exists

    # The refusal is not over-cautious: Firestore itself refuses such a document.
    probe = firestore_client.collection(batch_collection).document("probe")
    with pytest.raises(gexc.InvalidArgument, match="1048576"):
        await probe.set(
            {"completed_players": long_ids, "predictions_by_player": dict.fromkeys(long_ids, 1)}
        )

    assert await manager.create_batch("near", expected_players=[i[:400] for i in long_ids])
    assert 1 == len(near_limit_warnings(caplog))
    subcollection_only = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY)
    assert await subcollection_only.create_batch("long", expected_players=long_ids)


async def test_subcollection_only_has_no_legacy_limit(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch six times the legacy array limit: every mode that writes the legacy array refuses
    it, and SUBCOLLECTION_ONLY records it with no warning and no refusal; every player counted
    exactly once (counters == completion documents) over many concurrent group commits,
    finalized once."""
    caplog.set_level(logging.WARNING, logger="async_batchstate")
    limit = 100
    # ~20 KB of ids: the roster lives in chunk documents, as a big batch's does.
    counts = {f"player-{i:05d}-{'x' * 20}": i % 11 for i in range(6 * limit)}
    for mode in LEGACY_WRITERS:
        legacy = make_manager(mode=mode, legacy_array_limit=limit)
        with pytest.raises(LegacyArrayLimitError, match="SUBCOLLECTION_ONLY"):
            await legacy.create_batch("huge", expected_players=list(counts))

    finalized: list[str] = []
    manager = make_manager(
        mode=MigrationMode.SUBCOLLECTION_ONLY,
        legacy_array_limit=limit,
        max_group_size=25,  # at least 24 group commits on the one batch document
        on_complete=lambda b, _p: finalized.append(b),
    )
    assert await manager.create_batch("huge", expected_players=list(counts))  # nothing was there
    assert [] == near_limit_warnings(caplog)
    assert 1 <= (await read_batch(firestore_client, batch_collection, "huge"))["roster_chunks"]

    results = await asyncio.gather(
        *(manager.record_completion("huge", p, n, timeout=90) for p, n in counts.items())
    )

    assert len(counts) == sum(r.status is CompletionStatus.RECORDED for r in results)
    assert 1 == sum(r.batch_completed for r in results)
    assert ["huge"] == finalized
    progress = await manager.get_progress("huge", include_players=False)
    assert (len(counts), sum(counts.values()), "complete") == (
        progress.completed_count,
        progress.total_predictions,
        progress.status,
    )
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        "huge",
        MigrationMode.SUBCOLLECTION_ONLY,
        expected=counts,
        require_finalized=True,
    )
