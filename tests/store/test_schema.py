"""The pure schema: a new batch's document, roster placement, ids, deadlines, per-mode progress.

No emulator: these are the decisions made before (and after) any I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from async_batchstate import (
    ConfigurationError,
    DuplicatePlayerError,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    LegacyArrayLimitError,
    MigrationMode,
    UnexpectedPlayerError,
)
from async_batchstate._store import names as f
from async_batchstate._store.batch_info import BatchInfo
from async_batchstate._store.decode import progress_from
from async_batchstate._store.ids import MAX_COUNT
from async_batchstate._store.new_batch import LegacyLimits, NewBatch, new_batch, split_roster

LIMITS = LegacyLimits()
NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def _new(mode: MigrationMode = MigrationMode.DUAL_WRITE, **kwargs: Any) -> NewBatch:
    args: dict[str, Any] = {"expected_players": None, "expected_count": None, "deadline": None}
    args.update(kwargs)
    return new_batch(mode, "b", limits=LIMITS, now=NOW, **args)


def test_a_dual_write_batch_is_born_with_both_structures_and_marked_backfilled() -> None:
    """Array, map, totals and counters at zero; nothing to backfill; in progress."""
    doc = _new(expected_count=3).document
    assert (3, "in_progress", [], {}, 0, 0, True) == (
        doc["expected_count"],
        doc["status"],
        doc["completed_players"],
        doc["predictions_by_player"],
        doc["completed_count"],
        doc["total_predictions_subcoll"],
        doc["completions_backfilled"],
    )


def test_subcollection_only_writes_no_legacy_fields() -> None:
    """SUBCOLLECTION_ONLY: counters only, no array or map; the guard stated explicitly."""
    doc = _new(MigrationMode.SUBCOLLECTION_ONLY, expected_count=2).document
    assert set() == {"completed_players", "predictions_by_player"} & set(doc)
    assert doc["completions_backfilled"] is True


def test_a_small_roster_is_inline_and_a_large_one_in_chunks() -> None:
    """Up to 16 KiB of ids inline; beyond, chunks of at most 512 KiB / 10,000 players."""
    small = _new(expected_players=["p1", "p2"])
    large = _new(
        MigrationMode.SUBCOLLECTION_ONLY,
        expected_players=[f"player-{i:06d}" for i in range(25_000)],
    )
    assert (["p1", "p2"], []) == (small.document["roster"], small.roster_chunks)
    assert "roster" not in large.document
    assert [10_000, 10_000, 5_000] == [len(c) for c in large.roster_chunks]
    assert 3 == large.document["roster_chunks"]


def test_split_roster_respects_the_chunk_byte_limit() -> None:
    """Long ids fill a chunk by bytes before by count."""
    inline, chunks = split_roster(["x" * 1000 + str(i) for i in range(1200)])
    assert inline is None
    assert all(sum(len(p) + 1 for p in c) <= f.ROSTER_CHUNK_BYTES for c in chunks)
    assert 1200 == sum(len(c) for c in chunks)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"expected_count": 0}, InvalidCountError),
        ({"expected_count": True}, InvalidCountError),
        ({"expected_players": "p1"}, InvalidInputError),
        ({"expected_players": ["a", "a"]}, DuplicatePlayerError),
        ({"expected_players": ["a/b"]}, InvalidIdError),
        ({"expected_count": 1, "expected_players": ["a"]}, ConfigurationError),
        ({}, ConfigurationError),
        ({"expected_count": 1, "deadline": dt.datetime(2030, 1, 1)}, InvalidInputError),
        ({"expected_count": 1, "deadline": 30}, InvalidInputError),
        ({"expected_count": 12_001}, LegacyArrayLimitError),
    ],
)
def test_bad_arguments_are_refused_before_any_document_is_built(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Each bad argument raises its typed error."""
    with pytest.raises(error):
        _new(MigrationMode.DUAL_WRITE, **kwargs)


def test_a_timedelta_deadline_becomes_an_instant() -> None:
    """deadline=timedelta: the given now (the manager's clock) + delta, an aware datetime."""
    batch = _new(expected_count=1, deadline=dt.timedelta(minutes=5))
    assert NOW + dt.timedelta(minutes=5) == batch.info.deadline
    assert batch.info.deadline == batch.document["deadline"]


@pytest.mark.parametrize(
    ("mode", "completed"),
    [
        (MigrationMode.DUAL_WRITE, 3),  # counts the array
        (MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS, 1),  # counts the subcollection counter
        (MigrationMode.SUBCOLLECTION_ONLY, 1),
    ],
)
def test_progress_counts_what_the_mode_reads(mode: MigrationMode, completed: int) -> None:
    """A batch whose array has players the counter lacks (LEGACY writers, not backfilled)."""
    data = {
        "expected_count": 3,
        "completed_players": ["a", "b", "c"],
        "completed_count": 1,
        "status": "in_progress",
    }
    assert completed == progress_from("b", mode, data).completed_count


def test_a_completion_outside_the_roster_is_refused_without_io() -> None:
    """``BatchInfo.check_completion``: a roster refuses strangers, names batch and player."""
    info = BatchInfo(expected=2, roster=frozenset({"p1", "p2"}))

    info.check_completion("b", "p1", 5)
    with pytest.raises(UnexpectedPlayerError, match=r"'p3'.*'b'"):
        info.check_completion("b", "p3", 5)
    BatchInfo(expected=2).check_completion("b", "anyone", 5)  # no roster: anyone


def test_a_count_that_could_overflow_the_total_is_refused_without_io() -> None:
    """The batch's total must stay within 64 bits even if every completion has the count,
    and with 2**31 players, expected or extra: no count passes 2**32."""
    info = BatchInfo(expected=2**32)
    most = MAX_COUNT // 2**32
    with pytest.raises(InvalidCountError, match="overflow"):
        BatchInfo(expected=1).check_completion("b", "p", 2**32 + 1)
    BatchInfo(expected=1).check_completion("b", "p", 2**32)

    info.check_completion("b", "p", most)
    with pytest.raises(InvalidCountError, match="overflow"):
        info.check_completion("b", "p", most + 1)


def test_groups_read_their_members_first_only_while_most_of_them_conflict() -> None:
    """reads_first follows the recent share of conflicting groups (EWMA): on after a run of
    conflicts, off again after a run of clean groups; a fresh batch commits directly."""
    info = BatchInfo(expected=10)
    assert not info.reads_first
    for _ in range(4):
        info.note_conflict(True)
    assert info.reads_first
    for _ in range(3):
        info.note_conflict(False)
    assert not info.reads_first
