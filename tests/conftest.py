"""Shared fixtures. The emulator fixtures come from the async_batchstate plugin itself.

Helpers live in ``tests/helpers.py``; import them from there.

Hypothesis runs each property test ``max_examples`` times from the loaded profile:
``suite`` (default, sized for a run of the whole suite in a few minutes) or
``thorough`` (``HYPOTHESIS_PROFILE=thorough pytest tests/write/test_model.py
tests/write/test_properties.py``, before a release or after touching the write path).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient
from hypothesis import settings

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate.testing import EmulatorInfo, aclose_client, make_client

from .helpers import ManagerFactory

EMULATOR_FIXTURES = frozenset({"firestore_emulator", "pubsub_emulator"})
"""The plugin's session fixtures that start (or reuse) an emulator. Every fixture that
needs one (``firestore_client``, ``make_manager``, ``batch_collection``'s users...) asks
for one of these, so a test's fixture closure says whether it needs an emulator."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``emulator`` every test whose fixtures start an emulator.

    ``pytest -m "not emulator"`` is then the fast unit subset. A test that starts an
    emulator without these fixtures (a subprocess that starts its own) carries the
    marker by hand.
    """
    for item in items:
        if EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.emulator)


settings.register_profile("suite", max_examples=8)
settings.register_profile("thorough", max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


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


@pytest_asyncio.fixture
async def other_manager(
    firestore_emulator: EmulatorInfo, batch_collection: str
) -> AsyncIterator[ManagerFactory]:
    """Managers on a SECOND client (as another process would have): closed after the test."""
    client = make_client(firestore_emulator)
    made: list[AsyncBatchStateManager] = []

    def factory(**kwargs: Any) -> AsyncBatchStateManager:
        kwargs.setdefault("collection", batch_collection)
        kwargs.setdefault("mode", MigrationMode.DUAL_WRITE)
        manager = AsyncBatchStateManager(client, **kwargs)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.aclose(drain_timeout=1.0)
    await aclose_client(client)
