"""Shared fixtures. The emulator fixtures come from the async_batchstate plugin itself.

Helpers live in ``tests/helpers.py``; import them from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, MigrationMode

from .helpers import ManagerFactory


@pytest_asyncio.fixture
async def make_manager(
    firestore_client: AsyncClient, batch_collection: str
) -> AsyncIterator[ManagerFactory]:
    """Build managers on this test's collection; all are closed after the test."""
    made: list[AsyncBatchStateManager] = []

    def factory(**kwargs: Any) -> AsyncBatchStateManager:
        kwargs.setdefault("collection", batch_collection)
        kwargs.setdefault("mode", MigrationMode.DUAL_WRITE)
        manager = AsyncBatchStateManager(firestore_client, **kwargs)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.aclose()
