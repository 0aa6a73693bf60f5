"""``Recorder`` (no I/O): every count of ``stats()`` is read off the events it is given."""

from __future__ import annotations

from async_batchstate import (
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    WriteFailedError,
)
from async_batchstate.instrumentation import (
    AttemptFailed,
    CompletionFinished,
    ErrorKind,
    GroupCommitted,
    GroupFailed,
)
from async_batchstate.instrumentation._events import Recorder


def _finished(status: CompletionStatus) -> CompletionFinished:
    result = CompletionResult(batch_id="b", player="p", status=status)
    return CompletionFinished(batch_id="b", player="p", seconds=0.01, result=result, error=None)


def test_completion_outcomes_count_from_the_callers_results() -> None:
    """RECORDED and LATE count as recorded (LATE also as late); DUPLICATE as duplicate; a
    timed-out caller as failed; a caller with another error (bad input) not at all."""
    recorder = Recorder(())
    for status in (CompletionStatus.RECORDED, CompletionStatus.LATE, CompletionStatus.DUPLICATE):
        recorder.emit(_finished(status))
    for error in (CompletionTimeoutError("no answer"), ValueError("bad input")):
        recorder.emit(CompletionFinished("b", "p", seconds=1.0, result=None, error=error))

    stats = recorder.snapshot()
    assert (2, 1, 1, 1) == (stats.recorded, stats.late, stats.duplicates, stats.failed)


def test_attempts_are_the_failed_ones_plus_the_committed_ones() -> None:
    """Two failed attempts (one followed by a backoff: a retry), then a commit: 3 attempts,
    1 retry, 1 commit; a failed group of 4 adds each member to ``failed``."""
    recorder = Recorder(())
    aborted = AttemptFailed("b", 3, 1, ErrorKind.CONTENTION, RuntimeError("x"), delay=0.1)
    fatal = AttemptFailed("b", 3, 2, ErrorKind.FATAL, RuntimeError("y"), delay=None)
    recorder.emit(aborted)
    recorder.emit(fatal)
    recorder.emit(GroupCommitted("b", 3, recorded=2, duplicates=1, attempts=3, seconds=0.2))
    recorder.emit(GroupFailed("b", 4, WriteFailedError("refused")))

    stats = recorder.snapshot()
    assert (3, 1, 1, 4) == (stats.attempts, stats.retries, stats.commits, stats.failed)
