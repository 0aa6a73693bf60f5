"""The completion document: one per recorded player, in the batch's completions subcollection."""

from __future__ import annotations

from typing import Any

from google.cloud.firestore_v1 import SERVER_TIMESTAMP

from . import names as f


def completion_doc(player: str, count: int, write_id: str | None = None) -> dict[str, Any]:
    """The fields of ``player``'s completion document (``completed_at``: the commit's time).

    Args:
        player: The player id (also the document id).
        count: Its predictions count.
        write_id: The group write that creates it (decides its outcome after a lost
            answer); None for documents that backfill or reconcile make.
    """
    doc: dict[str, Any] = {
        f.PLAYER_LOOKUP: player,
        f.PREDICTIONS_COUNT: count,
        f.COMPLETED_AT: SERVER_TIMESTAMP,
    }
    if write_id is not None:
        doc[f.WRITE_ID] = write_id
    return doc
