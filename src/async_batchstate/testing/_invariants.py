"""Read a batch back and list every way its structures disagree.

The invariants the library promises for one batch, whatever failed on the way:

* the legacy array has no repeats and names exactly the keys of
  ``predictions_by_player``; ``total_predictions`` is their sum;
* ``completed_count`` equals the number of completion documents and
  ``total_predictions_subcoll`` the sum of their ``predictions_count``;
* in dual-write modes both structures name the same players with the same counts
  (on a batch SUBCOLLECTION_ONLY also wrote, ``array_partial``: the same counts
  where both name a player, and together every completion);
* no more completions than ``expected_count``;
* ``status`` is ``complete`` only when every expected completion is recorded
  (and, with ``require_finalized``, whenever it is);
* with ``expected``: the recorded players and counts are exactly these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient

from .._config import MigrationMode
from .._store import names as f

__all__ = ["batch_violations"]


async def batch_violations(
    client: AsyncClient,
    collection: str,
    batch_id: str,
    mode: MigrationMode,
    *,
    expected: Mapping[str, int] | None = None,
    completions_subcollection: str = "completions",
    require_finalized: bool = False,
) -> list[str]:
    """Every invariant of ``batch_id`` that does not hold (empty when all hold).

    Args:
        client: Reads the documents directly (not through a manager).
        collection: The batch collection.
        batch_id: The batch.
        mode: The mode the batch was written in.
        expected: If given, the exact ``{player: predictions_count}`` that must be recorded.
        completions_subcollection: Name of the completions subcollection.
        require_finalized: A batch with every completion must have ``status`` complete.
    """
    ref = client.collection(collection).document(batch_id)
    snap = await ref.get()
    if not snap.exists:
        return [f"{batch_id}: batch document missing"]
    data: dict[str, Any] = snap.to_dict() or {}
    problems: list[str] = []

    def bad(message: str) -> None:
        problems.append(f"{batch_id}: {message}")

    recorded: dict[str, int] | None = None
    if mode.writes_legacy:
        array = list(data.get(f.COMPLETED_PLAYERS, []))
        by_player = dict(data.get(f.PREDICTIONS_BY_PLAYER, {}))
        if len(array) != len(set(array)):
            bad(f"completed_players repeats a player: {len(array)} entries, {len(set(array))} ids")
        if set(array) != set(by_player):
            bad(
                f"completed_players and predictions_by_player differ: "
                f"{sorted(set(array) ^ set(by_player))[:5]}"
            )
        legacy_total = sum(by_player.values())
        if data.get(f.TOTAL_PREDICTIONS, 0) != legacy_total:
            bad(f"total_predictions {data.get(f.TOTAL_PREDICTIONS)} != sum {legacy_total}")
        recorded = by_player
    if mode.writes_subcollection:
        docs = {
            d.id: d.to_dict() or {}
            async for d in ref.collection(completions_subcollection).stream()
        }
        counts: dict[str, int] = {k: v.get(f.PREDICTIONS_COUNT, -1) for k, v in docs.items()}
        for key, doc in docs.items():
            if doc.get(f.PLAYER_LOOKUP) != key:
                bad(f"completion {key!r} has player_lookup {doc.get(f.PLAYER_LOOKUP)!r}")
        if data.get(f.COMPLETED_COUNT, 0) != len(docs):
            bad(f"completed_count {data.get(f.COMPLETED_COUNT)} != {len(docs)} completion docs")
        total = sum(counts.values())
        if data.get(f.TOTAL_PREDICTIONS_SUBCOLL, 0) != total:
            bad(f"total_predictions_subcoll {data.get(f.TOTAL_PREDICTIONS_SUBCOLL)} != sum {total}")
        partial = data.get(f.ARRAY_PARTIAL) is True  # SUBCOLLECTION_ONLY wrote it too
        if recorded is not None and partial:
            # Each structure whole in itself; together they hold every completion.
            legacy_only = set(recorded) - set(counts)
            if data.get(f.LEGACY_ONLY_COUNT, 0) != len(legacy_only):
                bad(
                    f"legacy_only_count {data.get(f.LEGACY_ONLY_COUNT, 0)} != "
                    f"{len(legacy_only)} players only in the array"
                )
            differ = sorted(k for k in set(recorded) & set(counts) if recorded[k] != counts[k])
            if differ:
                bad(f"legacy and subcollection structures differ: {differ[:5]}")
            counts = {**recorded, **counts}
        elif recorded is not None and recorded != counts:
            both = set(recorded) | set(counts)
            differ = sorted(k for k in both if recorded.get(k) != counts.get(k))
            bad(f"legacy and subcollection structures differ: {differ[:5]}")
        recorded = counts
    assert recorded is not None
    expected_count = int(data.get(f.EXPECTED_COUNT, 0))
    if len(recorded) > expected_count:
        bad(f"{len(recorded)} completions recorded, more than expected_count {expected_count}")
    status = data.get(f.STATUS)
    if status == f.STATUS_COMPLETE and len(recorded) < expected_count:
        bad(f"status complete with {len(recorded)}/{expected_count} completions")
    if require_finalized and len(recorded) >= expected_count and status != f.STATUS_COMPLETE:
        bad(f"all {expected_count} completions recorded but status is {status!r}")
    if status == f.STATUS_COMPLETE and data.get(f.COMPLETED_AT) is None:
        bad("status complete without completed_at")
    if expected is not None and dict(expected) != recorded:
        missing = sorted(set(expected) - set(recorded))[:5]
        extra = sorted(set(recorded) - set(expected))[:5]
        differ = sorted(k for k in set(expected) & set(recorded) if expected[k] != recorded[k])[:5]
        bad(f"recorded != expected: missing {missing}, extra {extra}, counts differ {differ}")
    return problems
