"""Where backfill remembers how far it got.

The checkpoint (resume after interruption) is a document in
``<collection>_migration`` by default: it survives the machine running the
backfill (a restarted job on another host resumes) and needs no access beyond
the Firestore one the tool already has. ``FileCheckpoint`` is the local
alternative. Backfill walks batches in document-id order and saves the id
below which every batch is done, at most once per ``checkpoint_interval``
(the checkpoint is one document: Firestore sustains about one write per
second on it). It only saves work: correctness comes from idempotency, so a
batch redone after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from google.cloud.firestore_v1 import SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient

from .._errors import ConfigurationError
from .._store.ids import Layout, validate_id


class Checkpoint(Protocol):
    """Where backfill remembers how far it got."""

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None."""
        ...

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        ...


class _Resettable:
    """The reset the stock checkpoints share (a ``Checkpoint`` needs only load and save)."""

    async def reset(self: Checkpoint) -> None:
        """Forget how far backfill got: its next run starts from the first batch."""
        await self.save({"last_done": None, "finished": True})


class FirestoreCheckpoint(_Resettable):
    """A checkpoint document ``<collection>_migration/<name>`` next to the batches.

    Args:
        client: The Firestore client.
        layout: Where the batches live.
        name: Document id (one per independent backfill run).

    Raises:
        InvalidIdError: ``name``, or the checkpoint's collection id (the batches'
            plus ``_migration``), is not an id Firestore can store.
    """

    def __init__(self, client: AsyncClient, layout: Layout, name: str = "backfill") -> None:
        collection = Layout(f"{layout.collection}_migration").collection
        self._ref = client.collection(collection).document(validate_id("checkpoint name", name))

    def __repr__(self) -> str:
        return f"<FirestoreCheckpoint {self._ref.path!r}>"

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None."""
        snap = await self._ref.get()
        return (snap.to_dict() or {}) if snap.exists else None

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        await self._ref.set({**state, "saved_at": SERVER_TIMESTAMP})


class FileCheckpoint(_Resettable):
    """A local JSON checkpoint file, replaced atomically on each save.

    Args:
        path: The file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<FileCheckpoint {str(self.path)!r}>"

    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None.

        Raises:
            ConfigurationError: The file is not a checkpoint (not a JSON object).
        """
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            loaded = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise ConfigurationError(
                f"checkpoint file {str(self.path)!r} is not valid JSON: {exc}"
            ) from exc
        if not isinstance(loaded, dict):
            raise ConfigurationError(
                f"checkpoint file {str(self.path)!r} holds a JSON {type(loaded).__name__}, "
                "not a checkpoint object"
            )
        return loaded

    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        await asyncio.to_thread(self._write, json.dumps(dict(state), sort_keys=True))

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)
