"""Events for hooks, and the counters behind ``stats()``."""

from __future__ import annotations

import logging
import typing
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .._errors import CompletionTimeoutError
from .._retry import ErrorKind
from .._types import BatchProgress, CompletionResult, CompletionStatus, renamed_attribute

logger = logging.getLogger("async_batchstate.metrics")


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """A write attempt failed; ``delay`` is the backoff before the next, None if none."""

    batch_id: str
    group_size: int
    attempt: int
    kind: ErrorKind
    error: BaseException
    delay: float | None


@dataclass(frozen=True, slots=True)
class GroupCommitted:
    """A commit (lock-free or in a transaction) wrote a group of completions."""

    batch_id: str
    group_size: int
    recorded: int
    duplicates: int
    attempts: int
    seconds: float


@dataclass(frozen=True, slots=True)
class GroupFailed:
    """A group's write failed for good; every member got ``error``."""

    batch_id: str
    group_size: int
    error: BaseException


@dataclass(frozen=True, slots=True)
class BatchFinalized:
    """This process flipped the batch's ``status`` to ``complete``."""

    batch_id: str
    progress: BatchProgress


@dataclass(frozen=True, slots=True)
class CompletionFinished:
    """One ``record_completion`` call returned or raised.

    Emitted in the caller's task (so a hook sees the caller's context, e.g. its
    current OpenTelemetry span), once per call, errors before any write included.

    Attributes:
        batch_id: The batch.
        player: The player.
        seconds: From the call to its answer.
        result: The outcome; None when the call raised.
        error: What the call raised (cancellation included); None on success.
    """

    batch_id: str
    player: str
    seconds: float
    result: CompletionResult | None
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class ValidationRan:
    """A background consistency check of a batch ended (sampled after a commit, or at finish).

    Emitted by the validator's task. A mismatch is alerted only once confirmed:
    a disagreement of the first read is read again after a delay, then checked
    in full twice.

    Attributes:
        batch_id: The batch.
        reads: Document reads it cost, as Firestore bills them: 1 per document,
            1 per up-to-1,000 index entries of an aggregation, 1 per completion id listed.
        suspected: The first read disagreed (a candidate, confirmed or not).
        confirmed: A mismatch was confirmed (and logged and alerted).
        confirmation: How it was confirmed, e.g. ``"document re-read + 2 deep reads"``;
            empty unless confirmed.
        problems: The confirmed mismatch's problems; empty unless confirmed.
    """

    batch_id: str
    reads: int
    suspected: bool = False
    confirmed: bool = False
    confirmation: str = ""
    problems: tuple[str, ...] = ()


Event = (
    CompletionFinished
    | AttemptFailed
    | GroupCommitted
    | GroupFailed
    | BatchFinalized
    | ValidationRan
)


class Hook(Protocol):
    """Receives every event; must not block. Exceptions are logged and ignored.

    It runs in the task that emits the event: ``CompletionFinished`` in the
    caller's, once per ``record_completion`` call.
    """

    def __call__(self, event: Event) -> None:
        """Handle one event."""
        ...


@dataclass(frozen=True)
class Stats:
    """A snapshot of a manager's counters since it was created.

    Attributes:
        recorded: Completions counted for the first time (late ones included).
        late: Of those, completions counted after their batch expired.
        duplicates: Completions that were already recorded.
        failed: Completions whose caller got an error from the write (its group's write
            failed for good) or no answer in time (``CompletionTimeoutError``).
        commits: Committed group writes (lock-free commits and transactions alike).
        attempts: Write attempts, committed or not.
        retries: Attempts after a failed one.
        failures_by_cause: Failed attempts by error kind (``aborted``, ``unavailable``,
            ``deadline_exceeded``, ``fatal``, ...).
        group_sizes: How many commits carried each group size.
        batches_finalized: Batches this process finalized.
        latency_p50: Median seconds from ``record_completion`` to its result (recent window).
        latency_p95: 95th percentile, seconds.
        latency_p99: 99th percentile, seconds.
        latency_max: Largest, seconds.
        validations: Background consistency checks run (sampled, or at a batch's finish).
        validation_reads: Billed document reads they cost.
    """

    recorded: int = 0
    late: int = 0
    duplicates: int = 0
    failed: int = 0
    commits: int = 0
    attempts: int = 0
    retries: int = 0
    failures_by_cause: Mapping[str, int] = field(default_factory=dict)
    group_sizes: Mapping[int, int] = field(default_factory=dict)
    batches_finalized: int = 0
    latency_p50: float = 0.0
    latency_p95: float = 0.0
    latency_p99: float = 0.0
    latency_max: float = 0.0
    validations: int = 0
    validation_reads: int = 0

    if not typing.TYPE_CHECKING:  # hidden so type checkers flag the old names too

        def __getattr__(self, name: str) -> object:
            raise renamed_attribute(self, name, _STATS_RENAMED)

    @property
    def commits_per_completion(self) -> float:
        """Commits per recorded or duplicate completion."""
        done = self.recorded + self.duplicates
        return self.commits / done if done else 0.0

    @property
    def validation_reads_per_completion(self) -> float:
        """Document reads spent on validation per recorded or duplicate completion."""
        done = self.recorded + self.duplicates
        return self.validation_reads / done if done else 0.0


_STATS_RENAMED = {
    "transactions": "commits",
    "aborts_by_cause": "failures_by_cause",
    "batches_finalised": "batches_finalized",
}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class Recorder:
    """Mutable counters and hook fan-out owned by one manager.

    The only thing that changes the counters is ``emit``: every count is read
    off an event, so what ``stats()`` says and what a hook sees cannot drift.
    """

    def __init__(self, hooks: tuple[Hook, ...], window: int = 10_000) -> None:
        self.hooks = hooks
        self.recorded = 0
        self.duplicates = 0
        self.late = 0
        self.failed = 0
        self.commits = 0
        self.attempts = 0
        self.retries = 0
        self.finalized = 0
        self.failures: Counter[str] = Counter()
        self.group_sizes: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=window)
        self.validations = 0
        self.validation_reads = 0

    def emit(self, event: Event) -> None:
        """Update counters from ``event`` and pass it to every hook."""
        if isinstance(event, CompletionFinished):
            self._count_completion(event)
        elif isinstance(event, AttemptFailed):
            self.attempts += 1
            self.failures[event.kind.value] += 1
            if event.delay is not None:
                self.retries += 1
        elif isinstance(event, GroupCommitted):
            self.attempts += 1  # the attempt that committed; failed ones come as AttemptFailed
            self.commits += 1
            self.group_sizes[event.group_size] += 1
        elif isinstance(event, GroupFailed):
            self.failed += event.group_size
        elif isinstance(event, BatchFinalized):
            self.finalized += 1
        elif isinstance(event, ValidationRan):
            self.validations += 1
            self.validation_reads += event.reads
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("hook %r failed on %s", hook, type(event).__name__)

    def _count_completion(self, event: CompletionFinished) -> None:
        if event.result is None:
            # A caller left without an answer: it may be recorded or not (the group's
            # write failures are counted from GroupFailed, per member).
            if isinstance(event.error, CompletionTimeoutError):
                self.failed += 1
            return
        self.latencies.append(event.seconds)
        status = event.result.status
        if status is CompletionStatus.DUPLICATE:
            self.duplicates += 1
        else:
            self.recorded += 1
            self.late += status is CompletionStatus.LATE

    def snapshot(self) -> Stats:
        """A frozen copy of the counters."""
        ordered = sorted(self.latencies)
        return Stats(
            recorded=self.recorded,
            late=self.late,
            duplicates=self.duplicates,
            failed=self.failed,
            commits=self.commits,
            attempts=self.attempts,
            retries=self.retries,
            failures_by_cause=dict(self.failures),
            group_sizes=dict(sorted(self.group_sizes.items())),
            batches_finalized=self.finalized,
            latency_p50=percentile(ordered, 50),
            latency_p95=percentile(ordered, 95),
            latency_p99=percentile(ordered, 99),
            latency_max=ordered[-1] if ordered else 0.0,
            validations=self.validations,
            validation_reads=self.validation_reads,
        )
