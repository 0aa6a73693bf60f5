"""Document references of a ``Layout``: the one place that spells the paths."""

from __future__ import annotations

from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference

from . import names as f
from .ids import Layout


class Refs:
    """References to a layout's batch, completion and roster documents."""

    __slots__ = ("client", "layout")

    def __init__(self, client: AsyncClient, layout: Layout) -> None:
        self.client = client
        self.layout = layout

    def batches(self) -> AsyncCollectionReference:
        """The collection of batch documents."""
        return self.client.collection(self.layout.collection)

    def batch(self, batch_id: str) -> AsyncDocumentReference:
        """The batch document."""
        return self.batches().document(batch_id)

    def completions(self, batch_id: str) -> AsyncCollectionReference:
        """The batch's completions subcollection."""
        completions: AsyncCollectionReference = self.batch(batch_id).collection(
            self.layout.completions
        )
        return completions

    def completion(self, batch_id: str, player: str) -> AsyncDocumentReference:
        """The completion document of ``player`` in ``batch_id``."""
        return self.completions(batch_id).document(player)

    def unchecked(self, batch_id: str) -> AsyncDocumentReference:
        """The batch's ``UNCHECKED`` marker (it exists only where no check is needed)."""
        marker: AsyncDocumentReference = (
            self.batch(batch_id).collection(f.ROSTER).document(f.UNCHECKED)
        )
        return marker

    def roster(self, batch_id: str, index: int) -> AsyncDocumentReference:
        """The ``index``-th roster chunk document of a batch."""
        chunk: AsyncDocumentReference = (
            self.batch(batch_id).collection(f.ROSTER).document(f"{index:05d}")
        )
        return chunk
