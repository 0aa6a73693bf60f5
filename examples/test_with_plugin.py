"""Testing your coordinator with the async-batchstate pytest plugin, as a user would.

Installing async-batchstate registers a pytest plugin (no ``conftest.py``
needed). Its fixtures start the Firestore emulator once per session (or reuse
``FIRESTORE_EMULATOR_HOST``) and give every test its own client and collection:

* ``firestore_emulator``: the emulator's ``.host`` and ``.project``.
* ``firestore_client``: an ``AsyncClient`` for this test, closed afterwards.
* ``batch_collection``: a collection name no other test uses.

Run it with pytest and pytest-asyncio installed::

    pytest examples/test_with_plugin.py

with, in your pytest configuration, ``asyncio_default_fixture_loop_scope =
"function"`` (the plugin's client is bound to each test's event loop).

Without Java or the emulator the tests are skipped (``--require-firestore-emulator``
makes that an error, for CI).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchNotFoundError,
    CompletionStatus,
    MigrationMode,
)
from async_batchstate.testing import EmulatorInfo, aclose_client, make_client


@pytest_asyncio.fixture
async def manager(
    firestore_client: AsyncClient, batch_collection: str
) -> AsyncIterator[AsyncBatchStateManager]:
    """The manager under test, on this test's own collection."""
    async with AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.SUBCOLLECTION_ONLY
    ) as manager:
        yield manager


@pytest.mark.asyncio
async def test_concurrent_workers_finalize_the_batch_once(manager: AsyncBatchStateManager) -> None:
    """Ten concurrent completions: all recorded, exactly one finalizes the batch."""
    players = [f"p{i}" for i in range(10)]
    await manager.create_batch("b1", expected_players=players)

    results = await asyncio.gather(*(manager.record_completion("b1", p, 2) for p in players))

    assert {CompletionStatus.RECORDED} == {r.status for r in results}
    assert 1 == sum(r.batch_completed for r in results)
    progress = await manager.get_progress("b1")
    assert (True, 20) == (progress.is_finalized, progress.total_predictions)


@pytest.mark.asyncio
async def test_a_redelivered_message_is_a_duplicate(manager: AsyncBatchStateManager) -> None:
    """Recording the same player twice counts it once."""
    await manager.create_batch("b1", expected_count=2)
    await manager.record_completion("b1", "p1", 5)

    again = await manager.record_completion("b1", "p1", 5)

    assert CompletionStatus.DUPLICATE == again.status
    assert 5 == (await manager.get_progress("b1")).total_predictions


@pytest.mark.asyncio
async def test_an_unknown_batch_is_refused(manager: AsyncBatchStateManager) -> None:
    """A completion for a batch nobody created raises and writes nothing."""
    with pytest.raises(BatchNotFoundError):
        await manager.record_completion("missing", "p1", 1)


@pytest.mark.asyncio
async def test_a_second_process_sees_the_same_data(
    firestore_emulator: EmulatorInfo, manager: AsyncBatchStateManager, batch_collection: str
) -> None:
    """Another client (as another process would have) reads what this one wrote."""
    await manager.create_batch("b1", expected_count=1)
    await manager.record_completion("b1", "p1", 3)

    other = make_client(firestore_emulator)
    try:
        async with AsyncBatchStateManager(
            other, collection=batch_collection, mode=MigrationMode.SUBCOLLECTION_ONLY
        ) as reader:
            progress = await reader.get_progress("b1")
    finally:
        await aclose_client(other)

    assert (("p1",), "complete") == (progress.completed_players, progress.status)
