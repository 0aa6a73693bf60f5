"""Backfill's watermark (no I/O): the longest finished prefix of the dispatched batch ids."""

from __future__ import annotations

import pytest

from async_batchstate.migration._backfill import Watermark


def _run(start: str | None, dispatched: list[str], finished: list[str]) -> str | None:
    watermark = Watermark(start)
    for batch_id in dispatched:
        watermark.dispatched(batch_id)
    for batch_id in finished:
        watermark.finished(batch_id)
    return watermark.value


@pytest.mark.parametrize(
    ("expected", "start", "finished"),
    [
        (None, None, []),
        ("a0", "a0", []),
        ("b2", None, ["b0", "b1", "b2"]),
        ("b2", None, ["b2", "b1", "b0"]),
        (None, None, ["b1", "b2"]),
        ("b0", None, ["b0", "b2"]),
        ("a0", "a0", ["b1", "b2"]),
        ("b1", "a0", ["b1", "b0"]),
    ],
    ids=[
        "nothing-finished",
        "start-kept",
        "in-order",
        "reverse-order",
        "first-unfinished",
        "gap",
        "gap-keeps-start",
        "out-of-order-prefix",
    ],
)
def test_watermark_is_the_last_id_of_the_longest_finished_prefix(
    expected: str | None, start: str | None, finished: list[str]
) -> None:
    """Dispatched b0, b1, b2: the watermark is the last id before the first unfinished one."""
    assert expected == _run(start, ["b0", "b1", "b2"], finished)


def test_a_failed_batch_holds_the_watermark_below_it_for_good() -> None:
    """b1 never finishes (it failed): b0 counts, nothing after b1 ever does."""
    watermark = Watermark()
    for batch_id in ["b0", "b1", "b2", "b3"]:
        watermark.dispatched(batch_id)
    for batch_id in ["b3", "b0", "b2"]:
        watermark.finished(batch_id)

    assert "b0" == watermark.value


def test_the_watermark_moves_as_batches_are_dispatched_and_finished_in_turn() -> None:
    """Dispatch and finish interleaved, as the walker runs them: each step moves it."""
    watermark = Watermark("a")
    seen: list[str | None] = []
    for batch_id in ["b0", "b1"]:
        watermark.dispatched(batch_id)
        watermark.finished(batch_id)
        seen.append(watermark.value)

    assert ["b0", "b1"] == seen
