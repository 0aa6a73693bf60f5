"""``BatchInfo``: what this process believes about a batch (the runtime cache entry)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .._errors import InvalidCountError, UnexpectedPlayerError
from .ids import MAX_COUNT


@dataclass
class BatchInfo:
    """What this process knows about a batch: its fixed settings and whether it is guarded.

    The settings (expected count, roster, deadline) never change after
    ``create_batch``. ``guarded`` (completion documents guard the batch: every
    legacy player has one, so a lock-free Commit cannot count a player twice) only
    ever turns true (backfill), which the transaction's read of an unguarded batch
    notices; every lock-free Commit confirms it.
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
        # could take the batch's total there.
        most = MAX_COUNT // max(self.expected, 1)
        if count > most:
            raise InvalidCountError(
                f"predictions_count {count} could overflow the 64-bit total of batch "
                f"{batch_id!r} ({self.expected} completions of at most {most})"
            )
