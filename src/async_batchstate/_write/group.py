"""What one group write is about: its completions, its state across attempts, its outcome.

Shared by the writer (which makes attempts), the runner (which tells callers) and
the finalizer (which decides from the outcome whether to flip the batch).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._errors import BatchStateError

WritePath = Literal["auto", "transaction"]
"""``"auto"``: lock-free wherever completion documents are the guard; ``"transaction"``:
every group through ``async_transactional``."""


class FaultPoint(enum.Enum):
    """Steps of one write attempt at which a ``fault_injector`` is called."""

    BEFORE_BEGIN = "before_begin"
    AFTER_READS = "after_reads"
    """After the attempt's reads (none for a fresh group on the lock-free path)."""
    BEFORE_COMMIT = "before_commit"
    """All writes are staged; nothing is committed."""
    AFTER_COMMIT = "after_commit"
    """The commit succeeded; no caller has been told yet."""


FaultInjector = Callable[[FaultPoint, str, Sequence[str]], Awaitable[None]]
"""``async (point, batch_id, players) -> None``; raise to inject a fault."""


def new_write_id() -> str:
    """A random id (64 bits, hex) naming one write, stored with what it writes."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class PlayerCompletion:
    """One worker's report: ``player`` finished with ``predictions_count`` predictions."""

    player: str
    predictions_count: int
    checked: bool = True
    """Whether the batch's settings (roster, deadline, count bound) were checked before it
    was queued; an unchecked one is a process's first touch of the batch."""


class SettingsNeeded(BatchStateError):
    """Unchecked completions met a batch whose settings must be checked: nothing written.

    A roster or a deadline: each caller checks, then records again (a caller already
    checked that was grouped with unchecked ones records again). Internal:
    ``record_completion`` catches it.
    """


@dataclass(frozen=True, slots=True)
class BatchView:
    """What a write saw of the batch document, when it read it anyway (no extra RPC)."""

    status: str
    expected_count: int
    callback_owed: bool


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    """What one group's write did.

    Attributes:
        recorded: Per input completion, True if this group's write counted it.
        completed_count: The batch's count as every mode counts it
            (``schema.counted``) right after this write or as read by it; None if
            the write neither committed nor read the batch document.
        batch: The batch document's status, when the write read it.
        expired: The batch had expired when this write landed (or was read).
        late: Per input completion, True if this group recorded it after the
            batch expired (as stored: a retry after a lost answer included).
    """

    recorded: tuple[bool, ...]
    completed_count: int | None = None
    batch: BatchView | None = None
    expired: bool = False
    late: tuple[bool, ...] = ()

    @property
    def new_count(self) -> int:
        """Completions counted by this group's write."""
        return sum(self.recorded)


@dataclass
class GroupState:
    """What one group learned across its attempts; kept by the group runner.

    Attributes:
        write_id: Stored with everything this group writes.
        resolved: Player -> True if this group's write recorded it, False if
            someone else's did. Facts about stored data: they survive attempts.
        plans: Writes without completion documents (LEGACY on an unguarded batch):
            attempt id -> players that attempt was to add. The batch document's
            ``open_writes``/``closed_writes`` say which attempt landed, and whether
            after the expiry (``decode.write_landed``).
        late: Players this group recorded after the batch expired.
        uncertain_commits: Transaction commits in a row refused after being sent,
            with no sign since that they landed.
        split: The group failed and its members are retried one by one with this
            state: its ids are never deleted from ``open_writes`` (a member's retry
            may still need them).
        commits: Commits sent for this group, landed or refused (each takes a write
            slot of the batch document: the fleet pacing counts them).
    """

    write_id: str = field(default_factory=new_write_id)
    resolved: dict[str, bool] = field(default_factory=dict)
    plans: dict[str, frozenset[str]] = field(default_factory=dict)
    late: set[str] = field(default_factory=set)
    uncertain_commits: int = 0
    split: bool = False
    commits: int = 0

    def keys(self) -> list[str]:
        """Every id this group's writes may have set in ``open_writes``."""
        return [self.write_id, *self.plans]


def firsts_of(group: Sequence[PlayerCompletion]) -> dict[str, int]:
    """Player -> index of its first completion in the group (later ones are duplicates)."""
    first: dict[str, int] = {}
    for index, completion in enumerate(group):
        first.setdefault(completion.player, index)
    return first
