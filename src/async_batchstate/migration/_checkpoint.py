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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from google.cloud.firestore_v1 import SERVER_TIMESTAMP
from google.cloud.firestore_v1.async_client import AsyncClient

from .._errors import ConfigurationError, InvalidInputError
from .._store.ids import Layout, validate_id, validate_store
from .._write.boundary import typed_errors


def _state(state: object) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise InvalidInputError(f"state must be a mapping, not {type(state).__name__}")
    return state


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
        ConfigurationError: ``client`` is not an ``AsyncClient`` or ``layout`` not a
            ``Layout``.

    ``load`` and ``save`` raise ``WriteFailedError`` or ``RetryExhaustedError``
    when the client fails (a closed channel included), ``save`` raises
    ``InvalidInputError`` for a state that is not a mapping.
    """

    def __init__(self, client: AsyncClient, layout: Layout, name: str = "backfill") -> None:
        validate_store(client, layout, error=ConfigurationError)
        collection = Layout(f"{layout.collection}_migration").collection
        self._ref = client.collection(collection).document(validate_id("checkpoint name", name))

    def __repr__(self) -> str:
        return f"<FirestoreCheckpoint {self._ref.path!r}>"

    @typed_errors
    async def load(self) -> dict[str, Any] | None:
        """The saved state, or None."""
        snap = await self._ref.get()
        return (snap.to_dict() or {}) if snap.exists else None

    @typed_errors
    async def save(self, state: Mapping[str, Any]) -> None:
        """Replace the saved state."""
        await self._ref.set({**_state(state), "saved_at": SERVER_TIMESTAMP})


class FileCheckpoint(_Resettable):
    """A local JSON checkpoint file, replaced atomically on each save.

    Args:
        path: The file.

    Raises:
        ConfigurationError: ``path`` is not a str or a path, or is empty.

    ``save`` raises ``InvalidInputError`` for a state that is not a mapping that
    JSON can hold.
    """

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
            raise ConfigurationError(f"path must be a str or a path, not {type(path).__name__}")
        if not str(path):
            raise ConfigurationError("path must name a file, not be empty")
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
        try:
            text = json.dumps(dict(_state(state)), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"state cannot be saved as JSON: {exc}") from None
        await asyncio.to_thread(self._write, text)

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)
