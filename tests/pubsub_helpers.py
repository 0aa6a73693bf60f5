"""Helpers of the Pub/Sub tests: names, payloads, waiting, and the exact end-of-test checks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.api_core.exceptions import PermissionDenied
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, BatchProgress
from async_batchstate.testing import FaultPoint, batch_violations

PROJECT = "demo-pubsub-tests"


def names() -> tuple[str, str]:
    """A fresh topic and subscription name (the emulator wants >= 6 characters)."""
    tag = uuid.uuid4().hex[:10]
    return f"topic-{tag}", f"sub-{tag}"


def payload(batch_id: str, player: str, count: int) -> bytes:
    """A message in the default format."""
    return json.dumps({"batch_id": batch_id, "player": player, "predictions_count": count}).encode()


def plan(batches: int, players: int) -> dict[str, dict[str, int]]:
    """``{batch_id: {player: count}}``."""
    tag = uuid.uuid4().hex[:6]
    return {
        f"b{k}-{tag}": {f"p{i:03d}": (k + i) % 7 for i in range(players)} for k in range(batches)
    }


def messages(expected: dict[str, dict[str, int]], *, duplicate_every: int = 0) -> list[bytes]:
    """One message per completion, every ``duplicate_every``-th published twice (a publisher retry)."""
    out = []
    n = 0
    for batch_id, players in expected.items():
        for player, count in players.items():
            out.append(payload(batch_id, player, count))
            n += 1
            if duplicate_every and n % duplicate_every == 0:
                out.append(payload(batch_id, player, count))
    return out


async def create_batches(
    manager: AsyncBatchStateManager, expected: dict[str, dict[str, int]]
) -> None:
    """Create each batch with its roster."""
    for batch_id, players in expected.items():
        await manager.create_batch(batch_id, expected_players=list(players))


async def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """Poll ``check`` every 50 ms until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


async def wait_finalized(
    manager: AsyncBatchStateManager, batch_ids: Iterable[str], timeout: float = 60.0
) -> None:
    """Until every batch is complete."""
    for batch_id in batch_ids:
        await manager.wait_until_complete(batch_id, timeout=timeout)


async def assert_exact(
    client: AsyncClient,
    collection: str,
    manager: AsyncBatchStateManager,
    expected: dict[str, dict[str, int]],
    finalized: list[str],
) -> list[BatchProgress]:
    """Every batch: exactly its players and counts, consistent, finalized once, callback run once."""
    progress = []
    for batch_id, players in expected.items():
        violations = await batch_violations(
            client, collection, batch_id, manager.mode, expected=players, require_finalized=True
        )
        assert [] == violations, batch_id
        p = await manager.get_progress(batch_id)
        assert (len(players), sum(players.values()), "complete") == (
            p.completed_count,
            p.total_predictions,
            p.status,
        )
        progress.append(p)
    assert sorted(expected) == sorted(finalized)
    return progress


def on_complete_recorder() -> tuple[list[str], Callable[[str, Any], None]]:
    """A list and an ``on_complete`` that appends each finalized batch id to it."""
    finalized: list[str] = []
    return finalized, lambda batch_id, progress: finalized.append(batch_id)


class RefuseFirstWrites:
    """A fault injector refusing (WriteFailedError) the first Commit of each player < ``below``.

    Attributes:
        refused: The players refused once.
    """

    def __init__(self, below: str = "p005") -> None:
        self.below = below
        self.refused: set[str] = set()

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT:
            fresh = [p for p in players if p < self.below and p not in self.refused]
            if fresh:
                self.refused.update(fresh)
                raise PermissionDenied("injected: refused once")
