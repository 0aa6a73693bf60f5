"""``BatchInfo``: what this process believes about a batch (the runtime cache entry)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .._errors import InvalidCountError, UnexpectedPlayerError
from .ids import MAX_COUNT
from .names import UNCHECKED_MAX_EXPECTED

MAX_PER_COMPLETION = 2**32
"""The largest ``predictions_count`` of one completion (totals stay int64 with extras)."""
_SPENT_KEPT = 256
_SPENT_PER_WRITE = 16


@dataclass
class BatchInfo:
    """What this process knows about a batch: its fixed settings and whether it is guarded.

    The settings (expected count, roster, deadline) never change after
    ``create_batch``. ``guarded`` (completion documents guard the batch: every
    legacy player has one, so a lock-free Commit cannot count a player twice) only
    ever turns true (the explicit ``completions_backfilled``), which the conditional
    write of an unguarded batch notices; every lock-free Commit confirms it.
    """

    expected: int
    roster: frozenset[str] | None = None
    deadline: dt.datetime | None = None
    terminal: bool = field(default=False, compare=False)
    """This process saw the batch finished (no more deadline checks)."""
    guarded: bool = field(default=False, compare=False)
    """Completion documents guard the batch: every legacy-array player has one."""
    conflicts: float = field(default=0.0, compare=False)
    """Recent share of this process's groups that met an existing member (EWMA)."""
    spent: set[str] = field(default_factory=set, compare=False)
    """Ids this process's told groups left in ``open_writes``: its next write deletes them."""

    def spend(self, keys: list[str]) -> None:
        """A group's callers are told: its ids in ``open_writes`` may go (a bounded set)."""
        if len(self.spent) < _SPENT_KEPT:
            self.spent.update(keys)

    def to_delete(self) -> list[str]:
        """The spent ids the next write deletes (a few, so a write stays small)."""
        return sorted(self.spent)[:_SPENT_PER_WRITE]

    def note_conflict(self, met: bool) -> None:
        """A group met an existing member (a redelivery another process recorded), or not."""
        self.conflicts = 0.75 * self.conflicts + (0.25 if met else 0.0)

    @property
    def reads_first(self) -> bool:
        """Whether groups should read their members before committing: most of them meet one.

        A Commit with an existing member is refused whole and re-sent after a read;
        reading first costs that read only, and a fresh group still one Commit.
        """
        return self.conflicts > 0.5

    def accepts_unchecked(self) -> bool:
        """Whether a completion queued before these settings were read needs no check.

        True for the batches that get the ``UNCHECKED`` marker: no roster, no deadline,
        and an expected count small enough that no count up to ``MAX_PER_COMPLETION``
        can overflow the total.
        """
        return (
            self.roster is None
            and self.deadline is None
            and self.expected <= UNCHECKED_MAX_EXPECTED
        )

    def check_completion(self, batch_id: str, player: str, count: int) -> None:
        """Refuse a completion this batch cannot take, before anything is written.

        Raises:
            UnexpectedPlayerError: The batch has a roster without ``player``.
            InvalidCountError: ``count`` could overflow the batch's 64-bit total.
        """
        if self.roster is not None and player not in self.roster:
            raise UnexpectedPlayerError(
                f"player {player!r} is not in the roster of batch {batch_id!r}; nothing written"
            )
        # Increment saturates at 2**63 - 1 instead of failing: refuse a count that
        # could take the batch's total there. A batch without a roster may also take
        # extra players after its expected ones (recorded, never counted past
        # expected_count): no single count passes 2**32, so totals stay exact for up
        # to 2**31 players, expected or extra.
        most = min(MAX_COUNT // max(self.expected, 1), MAX_PER_COMPLETION)
        if count > most:
            raise InvalidCountError(
                f"predictions_count {count} could overflow the 64-bit total of batch "
                f"{batch_id!r} (at most {most} per completion with {self.expected} expected)"
            )
