"""The pure rules of "consistent" (no I/O): mode x structure x mismatch kind.

Each case is a batch document and its completion documents. The table says,
per group of modes, the verdict (consistent, awaiting backfill, mismatch) and
the cheapest check that sees a mismatch: one document read
(``document_problems``), the document plus the aggregation of the completion
documents (``aggregate_problems``), or only the full report with the ids.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pytest

from async_batchstate import MigrationMode
from async_batchstate._store.names import LEGACY_FIELDS
from async_batchstate.consistency import ConsistencyReport
from async_batchstate.consistency._report import (
    aggregate_problems,
    build_report,
    document_problems,
)

Verdict = Literal["ok", "backfill", "mismatch"]
Level = Literal["document", "aggregate", "ids"] | None


@dataclass
class Batch:
    """A batch document's fields and its completion documents (player -> count)."""

    data: dict[str, Any]
    docs: dict[str, int] = field(default_factory=dict)

    def report(self, mode: MigrationMode) -> ConsistencyReport:
        has_legacy = any(name in self.data for name in LEGACY_FIELDS)
        ids = set(self.docs) if has_legacy else None  # as read_report lists them
        docs, total = len(self.docs), sum(self.docs.values())
        return build_report("b", mode, self.data, docs, total, ids)


_COUNTS = {"a": 1, "b": 2}
_LEGACY = {
    "completed_players": list(_COUNTS),
    "predictions_by_player": dict(_COUNTS),
    "total_predictions": 3,
}
_COUNTERS = {"completed_count": 2, "total_predictions_subcoll": 3}
STRUCTURES = {
    "legacy only": Batch(dict(_LEGACY)),
    "subcollection only": Batch(dict(_COUNTERS), dict(_COUNTS)),
    # Born in a dual mode: create_batch marks it backfilled.
    "both": Batch({**_LEGACY, **_COUNTERS, "completions_backfilled": True}, dict(_COUNTS)),
}


def _legacy_player(batch: Batch, *, marked: bool) -> None:
    """A LEGACY writer recorded ``c``: array, map and total, no completion document."""
    batch.data["completed_players"].append("c")
    batch.data["predictions_by_player"]["c"] = 4
    batch.data["total_predictions"] += 4
    if not marked:  # what a LEGACY write does to the mark
        del batch.data["completions_backfilled"]


def _subcollection_player(batch: Batch) -> None:
    """A SUBCOLLECTION_ONLY writer recorded ``c``: a completion document and the counters."""
    batch.docs["c"] = 4
    batch.data["completed_count"] += 1
    batch.data["total_predictions_subcoll"] += 4


def _swap(batch: Batch) -> None:
    """``b``'s completion document replaced by ``c``'s with the same count (numbers agree)."""
    batch.docs["c"] = batch.docs.pop("b")


def _bump(name: str) -> Callable[[Batch], None]:
    def bump(batch: Batch) -> None:
        batch.data[name] += 1

    return bump


def _drop_from_map(batch: Batch) -> None:
    del batch.data["predictions_by_player"]["b"]
    batch.data["total_predictions"] -= 2


KINDS: dict[str, Callable[[Batch], None]] = {
    "exact": lambda batch: None,
    "map misses a player": _drop_from_map,
    "duplicate in array": lambda batch: batch.data["completed_players"].append("a"),
    "legacy total off": _bump("total_predictions"),
    "completed_count off": _bump("completed_count"),
    "subcollection total off": _bump("total_predictions_subcoll"),
    "legacy-only player, not marked": lambda batch: _legacy_player(batch, marked=False),
    "legacy-only player, marked backfilled": lambda batch: _legacy_player(batch, marked=True),
    "subcollection-only player": _subcollection_player,
    "player swapped": _swap,
}

L, D, S = "LEGACY", "DUAL", "SUBCOLLECTION_ONLY"
ALL = (L, D, S)
OK: tuple[Verdict, Level] = ("ok", None)
BACKFILL: tuple[Verdict, Level] = ("backfill", None)
BY_DOCUMENT: tuple[Verdict, Level] = ("mismatch", "document")
BY_AGGREGATE: tuple[Verdict, Level] = ("mismatch", "aggregate")
BY_IDS: tuple[Verdict, Level] = ("mismatch", "ids")

# (structure, kind) -> {mode group: (verdict, cheapest check that sees it)}
TABLE: dict[tuple[str, str], dict[str, tuple[Verdict, Level]]] = {
    ("legacy only", "exact"): {L: OK, D: BACKFILL, S: BACKFILL},
    ("legacy only", "map misses a player"): dict.fromkeys(ALL, BY_DOCUMENT),
    ("legacy only", "duplicate in array"): dict.fromkeys(ALL, BY_DOCUMENT),
    ("legacy only", "legacy total off"): dict.fromkeys(ALL, BY_DOCUMENT),
    # Counters but no array: a mode that writes the array finds it missing.
    ("subcollection only", "exact"): {L: BY_DOCUMENT, D: BY_DOCUMENT, S: OK},
    ("subcollection only", "completed_count off"): {
        L: BY_DOCUMENT,
        D: BY_DOCUMENT,
        S: BY_AGGREGATE,
    },
    ("subcollection only", "subcollection total off"): {
        L: BY_DOCUMENT,
        D: BY_DOCUMENT,
        S: BY_AGGREGATE,
    },
    ("both", "exact"): dict.fromkeys(ALL, OK),
    ("both", "map misses a player"): dict.fromkeys(ALL, BY_DOCUMENT),
    ("both", "duplicate in array"): dict.fromkeys(ALL, BY_DOCUMENT),
    ("both", "legacy total off"): dict.fromkeys(ALL, BY_DOCUMENT),
    # More completions counted than players in the array.
    ("both", "completed_count off"): {L: BY_DOCUMENT, D: BY_DOCUMENT, S: BY_AGGREGATE},
    # The two totals differ: only the dual modes compare them.
    ("both", "subcollection total off"): {L: BY_AGGREGATE, D: BY_DOCUMENT, S: BY_AGGREGATE},
    # A rollout or rollback in progress: backfill's work, not an alert.
    ("both", "legacy-only player, not marked"): {L: OK, D: BACKFILL, S: BACKFILL},
    ("both", "legacy-only player, marked backfilled"): {L: OK, D: BY_DOCUMENT, S: BY_DOCUMENT},
    ("both", "subcollection-only player"): {L: BY_DOCUMENT, D: BY_DOCUMENT, S: OK},
    # Two faults whose numbers cancel: only the ids show them.
    ("both", "player swapped"): dict.fromkeys(ALL, BY_IDS),
}

GROUPS = {
    MigrationMode.LEGACY: L,
    MigrationMode.DUAL_WRITE: D,
    MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS: D,
    MigrationMode.SUBCOLLECTION_ONLY: S,
}
CASES = [
    pytest.param(
        mode, structure, kind, expected[GROUPS[mode]], id=f"{mode.name}-{structure}-{kind}"
    )
    for (structure, kind), expected in TABLE.items()
    for mode in MigrationMode
]


def _case(structure: str, kind: str) -> Batch:
    batch = copy.deepcopy(STRUCTURES[structure])
    KINDS[kind](batch)
    return batch


@pytest.mark.parametrize(("mode", "structure", "kind", "expected"), CASES)
def test_full_rules_verdict(
    mode: MigrationMode, structure: str, kind: str, expected: tuple[Verdict, Level]
) -> None:
    """The full report is consistent, awaits backfill, or is a mismatch, as the table says."""
    report = _case(structure, kind).report(mode)

    verdict: Verdict = (
        "ok" if report.is_consistent else "backfill" if report.awaiting_backfill else "mismatch"
    )
    assert expected[0] == verdict, report.problems


@pytest.mark.parametrize(("mode", "structure", "kind", "expected"), CASES)
def test_cheapest_check_that_sees_it(
    mode: MigrationMode, structure: str, kind: str, expected: tuple[Verdict, Level]
) -> None:
    """One document read sees what the table says it sees, the aggregation sees that and more,
    and neither ever flags a batch the full rules accept (no false candidates)."""
    batch = _case(structure, kind)
    docs, total = len(batch.docs), sum(batch.docs.values())

    by_document = bool(document_problems(mode, batch.data))
    by_aggregate = bool(aggregate_problems(mode, batch.data, docs, total))

    level = expected[1]
    assert (level == "document", level in ("document", "aggregate")) == (
        by_document,
        by_aggregate,
    )


def test_every_kind_is_in_the_table() -> None:
    """Each mismatch kind is tried on at least one structure."""
    assert set(KINDS) == {kind for _, kind in TABLE}


def test_awaiting_backfill_needs_no_mark() -> None:
    """The same gap on a batch marked backfilled is a mismatch, not backfill's work."""
    unmarked = _case("both", "legacy-only player, not marked").report(MigrationMode.DUAL_WRITE)
    marked = _case("both", "legacy-only player, marked backfilled").report(MigrationMode.DUAL_WRITE)

    assert (True, ("c",), 4) == (
        unmarked.awaiting_backfill,
        unmarked.players_only_in_array,
        unmarked.only_in_array_predictions,
    )
    assert not marked.awaiting_backfill
    assert marked.as_backfilled().is_consistent


def test_confirmation_is_logged_with_the_report() -> None:
    """log_fields carries how a mismatch was confirmed, beside its problems."""
    report = _case("both", "completed_count off").report(MigrationMode.DUAL_WRITE)

    fields = replace(report, confirmation="document re-read").log_fields()

    assert ("document re-read", list(report.problems)) == (
        fields["confirmation"],
        fields["problems"],
    )
