"""``cleanup_legacy`` on the emulator: all or nothing up front, per batch after."""

from __future__ import annotations

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    Layout,
    MigrationMode,
)
from async_batchstate.consistency import reconcile
from async_batchstate.migration import (
    cleanup_legacy,
)

from ..helpers import (
    ManagerFactory,
    corrupt_batch,
    dual_batches,
    fail_one_batch,
    read_batch,
)

DUAL = MigrationMode.DUAL_WRITE
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY
LEGACY_FIELDS = {"completed_players", "predictions_by_player", "total_predictions"}


async def test_cleanup_refuses_while_a_batch_is_inconsistent(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """One bad batch: refused with its reasons, and no batch loses its legacy fields."""
    await dual_batches(make_manager)
    await corrupt_batch(firestore_client, batch_collection, "d1")

    summary = await cleanup_legacy(firestore_client, Layout(batch_collection), SUB_ONLY)

    assert summary.refused
    assert {"d1"} == {batch for batch, _ in summary.reasons}
    for i in range(3):
        assert (
            LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, f"d{i}")).keys()
        )


async def test_cleanup_succeeds_after_repair_and_reads_stay_the_same(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """After reconcile the cleanup removes legacy fields; SUBCOLLECTION_ONLY progress unchanged."""
    await dual_batches(make_manager)
    await corrupt_batch(firestore_client, batch_collection, "d1")
    layout = Layout(batch_collection)
    await reconcile(firestore_client, layout, DUAL, "d1")
    reader = make_manager(mode=SUB_ONLY)
    before = [await reader.get_progress(f"d{i}") for i in range(3)]

    summary = await cleanup_legacy(firestore_client, layout, SUB_ONLY)

    assert summary.ok
    assert ("d0", "d1", "d2") == summary.cleaned
    for i in range(3):
        assert (
            not LEGACY_FIELDS
            & (await read_batch(firestore_client, batch_collection, f"d{i}")).keys()
        )
    assert before == [await reader.get_progress(f"d{i}") for i in range(3)]


async def test_cleanup_refuses_outside_subcollection_only(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """Writers still reading/writing the array: refused, nothing removed."""
    await dual_batches(make_manager, 1)

    summary = await cleanup_legacy(
        firestore_client, Layout(batch_collection), MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS
    )

    assert summary.refused
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d0")).keys()


async def test_cleanup_dry_run_lists_and_keeps(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A dry run names the batches it would clean and removes nothing."""
    await dual_batches(make_manager, 2)

    summary = await cleanup_legacy(
        firestore_client, Layout(batch_collection), SUB_ONLY, dry_run=True
    )

    assert ("d0", "d1") == summary.cleaned
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d0")).keys()


async def test_cleanup_failure_of_one_batch_is_listed_and_the_others_are_cleaned(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch whose removal keeps failing is in ``failures`` (not ``skipped``), keeps its
    legacy fields, and the other batches are cleaned."""
    await dual_batches(make_manager, 3)
    raised = fail_one_batch(monkeypatch, "d1")

    summary = await cleanup_legacy(firestore_client, Layout(batch_collection), SUB_ONLY)

    assert (("d0", "d2"), ()) == (summary.cleaned, summary.skipped)
    assert ["d1"] == [batch for batch, _ in summary.failures]
    assert "PermissionDenied" in summary.failures[0][1]
    assert "\n" not in summary.failures[0][1]
    assert False is summary.ok
    assert ["ServiceUnavailable", "PermissionDenied"] == [type(e).__name__ for e in raised]
    assert LEGACY_FIELDS <= (await read_batch(firestore_client, batch_collection, "d1")).keys()
    assert not LEGACY_FIELDS & (await read_batch(firestore_client, batch_collection, "d2")).keys()
