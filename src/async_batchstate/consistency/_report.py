"""What "consistent" means: the report of one snapshot of a batch, and its rules (no I/O).

Two levels of rules, one meaning:

- ``build_report`` compares the batch document with its completion documents
  (their count, their sum and, where a legacy array exists, their ids): the
  full rules, what ``validate`` answers.
- ``document_problems`` applies the rules that ONE read of the batch document
  can check, the subcollection's counters standing in for its documents: what
  sampled validation reads after a commit. Whatever it reports, the full rules
  report too (they are its consequence when the counters are right), so a
  document-level disagreement is a candidate the full rules confirm or clear.

A batch that only lacks completion documents for legacy players (recorded by
LEGACY writers, not yet backfilled) breaks the full rules of a mode that writes
the subcollection, but it is backfill's work, not a fault: ``awaiting_backfill``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._config import MigrationMode
from .._store import names as f
from .._store.decode import as_int

BATCH_FIELDS = (
    *f.LEGACY_FIELDS,
    f.COMPLETED_COUNT,
    f.TOTAL_PREDICTIONS_SUBCOLL,
    f.COMPLETIONS_BACKFILLED,
    f.ARRAY_PARTIAL,
)
"""The batch-document fields the rules read (Firestore returns an array only whole)."""
_LOGGED_PLAYERS = 20


def opt_int(data: Mapping[str, Any], name: str) -> int | None:
    """``data[name]`` as an ``int``, None when the field is absent."""
    return as_int(data[name]) if name in data else None


@dataclass(frozen=True)
class _Fields:
    """The batch document's fields that the rules compare, parsed once."""

    array: list[Any] | None
    legacy_map: dict[str, Any] | None
    total_predictions: int | None
    completed_count: int | None
    total_predictions_subcoll: int | None
    backfilled: bool
    array_partial: bool

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> _Fields:
        raw_array = data.get(f.COMPLETED_PLAYERS)
        raw_map = data.get(f.PREDICTIONS_BY_PLAYER)
        return cls(
            array=list(raw_array) if isinstance(raw_array, list) else None,
            legacy_map=dict(raw_map) if isinstance(raw_map, dict) else None,
            total_predictions=opt_int(data, f.TOTAL_PREDICTIONS),
            completed_count=opt_int(data, f.COMPLETED_COUNT),
            total_predictions_subcoll=opt_int(data, f.TOTAL_PREDICTIONS_SUBCOLL),
            backfilled=data.get(f.COMPLETIONS_BACKFILLED) is True,
            array_partial=data.get(f.ARRAY_PARTIAL) is True,
        )

    @property
    def players(self) -> set[Any]:
        return set(self.array or ())

    @property
    def has_legacy(self) -> bool:
        return (
            self.array is not None
            or self.legacy_map is not None
            or (self.total_predictions is not None)
        )

    @property
    def has_counters(self) -> bool:
        return self.completed_count is not None or self.total_predictions_subcoll is not None

    @property
    def duplicates(self) -> int:
        return 0 if self.array is None else len(self.array) - len(self.players)

    @property
    def map_mismatch(self) -> int:
        if self.array is None and self.legacy_map is None:
            return 0
        return len(self.players.symmetric_difference(self.legacy_map or {}))

    @property
    def map_total(self) -> int | None:
        if self.legacy_map is None:
            return None
        return sum(as_int(v) for v in self.legacy_map.values())


def _legacy_problems(
    map_mismatch: int, duplicates: int, total: int | None, map_total: int | None
) -> Iterable[str]:
    """The legacy structure against itself: array, map and ``total_predictions``."""
    if map_mismatch:
        yield f"completed_players and predictions_by_player disagree on {map_mismatch} player(s)"
    if duplicates:
        yield f"completed_players holds {duplicates} duplicate entr(ies)"
    if (total or 0) != (map_total or 0):
        yield f"total_predictions={total} but predictions_by_player sums to {map_total}"


def _subcollection_problems(
    count: int | None, subcoll_total: int | None, docs: int, docs_sum: int
) -> Iterable[str]:
    """The subcollection's counters against its documents' count and sum."""
    if (count or 0) != docs:
        yield f"completed_count={count} but {docs} completion doc(s)"
    if (subcoll_total or 0) != docs_sum:
        yield f"total_predictions_subcoll={subcoll_total} but completion docs sum to {docs_sum}"


def _no_legacy_problem(mode: MigrationMode) -> str:
    return f"mode {mode.name} writes the legacy array but the batch has no legacy fields"


def _totals_problem(total: int | None, subcoll_total: int | None) -> str:
    return f"total_predictions={total} but total_predictions_subcoll={subcoll_total}"


def _writes_both(mode: MigrationMode) -> bool:
    return mode.writes_legacy and mode.writes_subcollection


@dataclass(frozen=True)
class ConsistencyReport:
    """One consistent snapshot of a batch's structures, compared under ``mode``'s rules.

    Fields are None when the batch document does not have them. The rules:
    each structure that exists must agree with itself (array with map and
    ``total_predictions``; ``completed_count`` and ``total_predictions_subcoll``
    with the completion documents); a mode that writes the subcollection needs
    every legacy player to have a completion document (else: run backfill); a
    mode that writes the array needs every completion in the array; a mode that
    writes both needs equal totals.

    Attributes:
        batch_id: The batch.
        mode: The mode whose rules were applied.
        legacy_array_length: Length of ``completed_players``.
        legacy_map_length: Entries of ``predictions_by_player``.
        legacy_map_total: Sum of ``predictions_by_player``'s values.
        total_predictions: The legacy total.
        completed_count: The subcollection counter.
        total_predictions_subcoll: The subcollection total.
        completion_docs: Completion documents (aggregation ``count()``).
        completion_predictions_sum: Sum of their ``predictions_count`` (aggregation ``sum()``).
        players_only_in_array: Sorted players in the array without a completion document.
        players_only_in_subcollection: Sorted players with a completion document, not in the
            array (only computed when the batch has legacy fields).
        legacy_duplicates: Entries of ``completed_players`` that repeat a player.
        legacy_map_mismatch: Players in the array or the map but not in both.
        completions_backfilled: The batch is marked as having a completion document
            for every legacy player (``completions_backfilled``).
        array_partial: SUBCOLLECTION_ONLY created or wrote the batch, so its legacy
            array holds only some players by design (``array_partial``): each
            structure is compared with itself, not the array with the subcollection.
        only_in_array_predictions: Sum of ``predictions_by_player`` over
            ``players_only_in_array`` (what a backfill would add to the subcollection).
        confirmation: How a mismatch was confirmed before it was alerted (e.g.
            ``"document re-read + 2 deep reads"``); empty when not alerted.
        problems: Human-readable reasons the batch is inconsistent; empty if consistent.
    """

    batch_id: str
    mode: MigrationMode
    legacy_array_length: int | None
    legacy_map_length: int | None
    legacy_map_total: int | None
    total_predictions: int | None
    completed_count: int | None
    total_predictions_subcoll: int | None
    completion_docs: int
    completion_predictions_sum: int
    players_only_in_array: tuple[str, ...] = ()
    players_only_in_subcollection: tuple[str, ...] = ()
    legacy_duplicates: int = 0
    legacy_map_mismatch: int = 0
    completions_backfilled: bool = False
    array_partial: bool = False
    only_in_array_predictions: int = 0
    confirmation: str = ""
    problems: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "problems", tuple(_problems(self)))

    @property
    def is_consistent(self) -> bool:
        """Whether no rule of ``mode`` is broken."""
        return not self.problems

    @property
    def has_legacy(self) -> bool:
        """Whether the batch document has any legacy field."""
        return any(
            v is not None
            for v in (self.legacy_array_length, self.legacy_map_length, self.total_predictions)
        )

    @property
    def has_subcollection(self) -> bool:
        """Whether the batch has subcollection counters or completion documents."""
        return (
            self.completed_count is not None
            or self.total_predictions_subcoll is not None
            or self.completion_docs > 0
        )

    @property
    def legacy_self_consistent(self) -> bool:
        """Whether the array, the map and ``total_predictions`` agree (True if absent)."""
        return not any(
            _legacy_problems(
                self.legacy_map_mismatch,
                self.legacy_duplicates,
                self.total_predictions,
                self.legacy_map_total,
            )
        )

    @property
    def awaiting_backfill(self) -> bool:
        """Backfill's work, not a fault: completion documents missing only for legacy players.

        True when the batch is not marked backfilled, has legacy fields and would
        break no rule once every player only in the array had its completion
        document (a batch recorded by LEGACY writers, wholly or in part).
        """
        if self.completions_backfilled or not self.has_legacy:
            return False
        if self.has_subcollection and not self.players_only_in_array:
            return False  # nothing for a backfill to add
        return not self.as_backfilled().problems

    def as_backfilled(self) -> ConsistencyReport:
        """This report as a backfill would leave it (a completion document per legacy player)."""
        added, total = len(self.players_only_in_array), self.only_in_array_predictions
        return replace(
            self,
            completed_count=(self.completed_count or 0) + added,
            total_predictions_subcoll=(self.total_predictions_subcoll or 0) + total,
            completion_docs=self.completion_docs + added,
            completion_predictions_sum=self.completion_predictions_sum + total,
            players_only_in_array=(),
            only_in_array_predictions=0,
            completions_backfilled=True,
        )

    def summary(self) -> str:
        """One line: the numbers compared, then the problems if any."""
        numbers = (
            f"array={self.legacy_array_length} completed_count={self.completed_count} "
            f"docs={self.completion_docs} total_predictions={self.total_predictions} "
            f"total_predictions_subcoll={self.total_predictions_subcoll} "
            f"docs_sum={self.completion_predictions_sum}"
        )
        return f"{numbers}: {'; '.join(self.problems)}" if self.problems else numbers

    def log_fields(self) -> dict[str, Any]:
        """The report as flat ``extra=`` fields for a log record (player lists capped)."""
        data = asdict(self)
        data["mode"] = self.mode.value
        for name in ("players_only_in_array", "players_only_in_subcollection"):
            data[name] = list(data[name][:_LOGGED_PLAYERS])
        data["problems"] = list(self.problems)
        data["is_consistent"] = self.is_consistent
        return data


def _problems(r: ConsistencyReport) -> list[str]:
    """The full rules of ``r.mode`` (see ``ConsistencyReport``)."""
    mode = r.mode
    found: list[str] = []
    if r.has_legacy:
        found += _legacy_problems(
            r.legacy_map_mismatch, r.legacy_duplicates, r.total_predictions, r.legacy_map_total
        )
    elif mode.writes_legacy and r.has_subcollection and not r.array_partial:
        found.append(_no_legacy_problem(mode))
    if r.has_subcollection:
        found += _subcollection_problems(
            r.completed_count,
            r.total_predictions_subcoll,
            r.completion_docs,
            r.completion_predictions_sum,
        )
    # Backfill's work (``awaiting_backfill``, which is never alerted) or, guarded, a fault.
    if mode.writes_subcollection and r.players_only_in_array:
        found.append(
            f"{len(r.players_only_in_array)} player(s) only in the legacy array (not backfilled?)"
        )
    if mode.writes_legacy and r.players_only_in_subcollection and not r.array_partial:
        found.append(f"{len(r.players_only_in_subcollection)} player(s) only in the subcollection")
    if (
        _writes_both(mode)
        and r.has_legacy
        and not r.array_partial
        and (r.total_predictions or 0) != (r.total_predictions_subcoll or 0)
    ):
        found.append(_totals_problem(r.total_predictions, r.total_predictions_subcoll))
    return found


def build_report(
    batch_id: str,
    mode: MigrationMode,
    data: Mapping[str, Any],
    completion_docs: int,
    completion_sum: int,
    completion_ids: set[str] | None,
) -> ConsistencyReport:
    """Compare a batch document with its completion documents (no I/O).

    Args:
        batch_id: The batch.
        mode: Whose rules apply.
        data: The batch document's fields.
        completion_docs: Number of completion documents.
        completion_sum: Sum of their ``predictions_count``.
        completion_ids: Their ids; None when not read (no legacy array to compare with).
    """
    doc = _Fields.parse(data)
    players = doc.players
    ids = completion_ids or set()
    only_in_array = players - ids
    legacy_map = doc.legacy_map or {}
    return ConsistencyReport(
        batch_id=batch_id,
        mode=mode,
        legacy_array_length=None if doc.array is None else len(doc.array),
        legacy_map_length=None if doc.legacy_map is None else len(doc.legacy_map),
        legacy_map_total=doc.map_total,
        total_predictions=doc.total_predictions,
        completed_count=doc.completed_count,
        total_predictions_subcoll=doc.total_predictions_subcoll,
        completion_docs=completion_docs,
        completion_predictions_sum=completion_sum,
        players_only_in_array=tuple(sorted(only_in_array)),
        players_only_in_subcollection=()
        if completion_ids is None
        else tuple(sorted(completion_ids - players)),
        legacy_duplicates=doc.duplicates,
        legacy_map_mismatch=doc.map_mismatch,
        completions_backfilled=doc.backfilled,
        array_partial=doc.array_partial,
        only_in_array_predictions=sum(as_int(legacy_map.get(p)) for p in only_in_array),
    )


def document_problems(mode: MigrationMode, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The rules of ``mode`` that one read of the batch document can check (no I/O).

    The counters stand in for the completion documents (``completed_count`` for
    their number, ``total_predictions_subcoll`` for their sum), so only what
    the document alone can contradict is reported:

    - the legacy structure against itself (array, map, ``total_predictions``);
    - a mode that writes the array, on a batch with counters but no legacy fields;
    - a mode that writes the array: fewer distinct players in it than
      ``completed_count`` (some completion is missing from the array);
    - a mode that writes the subcollection, on a batch marked backfilled: more
      players in the array than ``completed_count`` (unmarked, that is a batch
      partly recorded by LEGACY writers, awaiting backfill);
    - a mode that writes both: ``total_predictions`` below
      ``total_predictions_subcoll``, or different from it once backfilled.

    Args:
        mode: Whose rules apply.
        data: The batch document's fields (at least ``BATCH_FIELDS``).

    Returns:
        The disagreements; empty when the document agrees with itself.
    """
    doc = _Fields.parse(data)
    if not doc.has_legacy:
        owed = mode.writes_legacy and doc.has_counters and not doc.array_partial
        return (_no_legacy_problem(mode),) if owed else ()
    found = list(
        _legacy_problems(doc.map_mismatch, doc.duplicates, doc.total_predictions, doc.map_total)
    )
    if not doc.has_counters:
        return tuple(found)  # a legacy-only batch: nothing to compare it with
    distinct, count = len(doc.players), doc.completed_count or 0
    if mode.writes_legacy and distinct < count and not doc.array_partial:
        found.append(
            f"completed_players holds {distinct} player(s) but completed_count={count}"
            " (completions missing from the array)"
        )
    if mode.writes_subcollection and doc.backfilled and distinct > count:
        found.append(
            f"completed_players holds {distinct} player(s) but completed_count={count}"
            " on a batch marked backfilled"
        )
    total, subcoll = doc.total_predictions or 0, doc.total_predictions_subcoll or 0
    if (
        _writes_both(mode)
        and not doc.array_partial
        and (total < subcoll or (doc.backfilled and total != subcoll))
    ):
        found.append(_totals_problem(doc.total_predictions, doc.total_predictions_subcoll))
    return tuple(found)


def aggregate_problems(
    mode: MigrationMode, data: Mapping[str, Any], completion_docs: int, completion_sum: int
) -> tuple[str, ...]:
    """``document_problems``, then the counters against the completion documents' aggregation.

    What a read of the batch document plus a ``count()``/``sum()`` over its
    completion documents can check, without listing them (no I/O here). Every
    problem it reports, the full rules report too.

    Args:
        mode: Whose rules apply.
        data: The batch document's fields (at least ``BATCH_FIELDS``).
        completion_docs: Number of completion documents.
        completion_sum: Sum of their ``predictions_count``.
    """
    doc = _Fields.parse(data)
    found = list(document_problems(mode, data))
    if doc.has_counters or completion_docs:
        found += _subcollection_problems(
            doc.completed_count, doc.total_predictions_subcoll, completion_docs, completion_sum
        )
    return tuple(found)
