"""Small frozen result types."""

from __future__ import annotations

import datetime as dt
import enum
import typing
from dataclasses import dataclass


class CompletionStatus(enum.Enum):
    """What ``record_completion`` did with one completion."""

    RECORDED = "recorded"
    """The completion was new and is now counted in every structure the mode writes."""
    DUPLICATE = "duplicate"
    """The player was already recorded in this batch; nothing was counted again.

    The first write wins: a redelivery with a different count keeps the first count.
    """
    LATE = "late"
    """Recorded and counted, but after the batch expired: it never finalizes the batch."""


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """The outcome of one ``record_completion`` call.

    Attributes:
        batch_id: The batch.
        player: The player.
        status: ``RECORDED`` or ``DUPLICATE``.
        batch_completed: True for exactly one call per batch: the one whose
            write finalized the batch (flipped ``status`` to ``complete``).
        attempts: Transaction attempts the write took (shared by its group).
        group_size: How many completions shared the transaction.
    """

    batch_id: str
    player: str
    status: CompletionStatus
    batch_completed: bool = False
    attempts: int = 1
    group_size: int = 1


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A batch's progress, read from the structure the mode reads.

    Attributes:
        batch_id: The batch.
        expected_count: Completions that complete the batch.
        completed_count: Distinct players recorded, as every mode that wrote the batch
            counts them; never more than ``expected_count`` (a batch without a roster
            records later players as extras, listed in ``completed_players``).
        total_predictions: Sum of the prediction counts in the structure this manager's
            mode reads: the legacy total in the array modes (``LEGACY``,
            ``DUAL_WRITE``), which lacks the counts of players only SUBCOLLECTION_ONLY
            writers recorded during a rollout; the subcollection's total in the modes
            that read it, which lacks players LEGACY recorded only in the array of a
            batch not yet backfilled.
        status: ``in_progress``, ``complete`` or ``expired`` (the last two are terminal,
            set once).
        completed_players: Recorded player ids, sorted; empty when not requested.
        finalizer_id: The id the finalizing (or expiring) call stored; None before it.
        missing_players: Roster players not recorded yet, sorted (empty for a batch
            created with ``expected_count`` or when players were not requested).
        deadline: When the batch expires if unfinished; None if it has no deadline.
        created_at: When ``create_batch`` created it (server time).
        finished_at: When it became complete or expired (server time).
        expired_reason: Why it was expired (``expire(reason=...)`` or the deadline).
    """

    batch_id: str
    expected_count: int
    completed_count: int
    total_predictions: int
    status: str
    completed_players: tuple[str, ...] = ()
    finalizer_id: str | None = None
    missing_players: tuple[str, ...] = ()
    deadline: dt.datetime | None = None
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    expired_reason: str | None = None

    @property
    def finalization_key(self) -> str | None:
        """``"<batch_id>/<finalizer_id>"``: the same for every run of a batch's callback.

        ``on_complete`` (``on_expired``) runs at least once per finished batch
        (again in another process if the one running it died first); deduplicate
        on this key.
        """
        return None if self.finalizer_id is None else f"{self.batch_id}/{self.finalizer_id}"

    @property
    def is_complete(self) -> bool:
        """Whether every expected completion is recorded."""
        return self.completed_count >= self.expected_count

    @property
    def is_finalized(self) -> bool:
        """Whether finalization has flipped ``status`` to ``complete``."""
        return self.status == "complete"

    if not typing.TYPE_CHECKING:  # hidden so type checkers flag the old name too

        def __getattr__(self, name: str) -> object:
            raise renamed_attribute(self, name, _PROGRESS_RENAMED)

    @property
    def is_expired(self) -> bool:
        """Whether the batch was expired before every completion arrived."""
        return self.status == "expired"

    @property
    def is_terminal(self) -> bool:
        """Whether the batch is finished: ``complete`` or ``expired``."""
        return self.status in ("complete", "expired")

    @property
    def remaining(self) -> int:
        """Completions still missing (never negative)."""
        return max(0, self.expected_count - self.completed_count)


_PROGRESS_RENAMED = {
    "is_finalised": "is_finalized",
    "finalisation_key": "finalization_key",
    "finaliser_id": "finalizer_id",
}


def renamed_attribute(owner: object, name: str, renames: dict[str, str]) -> AttributeError:
    """The ``AttributeError`` of a missing attribute, naming the new one if ``name`` was renamed.

    For the ``__getattr__`` of classes whose attribute names changed in 0.2
    (``__getattr__`` runs only for names the class does not have).
    """
    kind = type(owner).__name__
    if name in renames:
        return AttributeError(f"{kind}.{name} was renamed in 0.2: use {kind}.{renames[name]}")
    return AttributeError(f"{kind!r} object has no attribute {name!r}")
