"""Helpers the test modules share (fixtures stay in conftest.py, helpers live here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager

ManagerFactory = Callable[..., AsyncBatchStateManager]
"""The ``make_manager`` fixture: ``AsyncBatchStateManager`` keyword arguments -> a manager."""


async def read_batch(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """The batch document's fields, read directly (not through the manager)."""
    snap = await client.collection(collection).document(batch_id).get()
    return snap.to_dict() or {}


async def read_completions(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """Completion documents by id, read directly."""
    docs = client.collection(collection).document(batch_id).collection("completions").stream()
    return {d.id: d.to_dict() async for d in docs}
