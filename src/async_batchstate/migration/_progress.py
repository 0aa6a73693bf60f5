"""What every migration command shares: its error, progress reports and per-batch outcome tally."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import BatchStateError

logger = logging.getLogger("async_batchstate.migration")


class MigrationError(BatchStateError):
    """A migration step refused to run (wrong mode, or nothing to run on)."""


@dataclass(frozen=True)
class MigrationProgress:
    """Passed to a progress callback after each batch.

    Attributes:
        batch_id: The batch just handled.
        done: Batches handled so far in this run (failures included).
        total: Batches this run will handle, when known.
        failed: Batches that failed so far.
    """

    batch_id: str
    done: int
    total: int | None
    failed: int


ProgressCallback = Callable[[MigrationProgress], None]


_REASON_CHARS = 300


def failure_reason(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace collapsed), at most ``_REASON_CHARS`` long."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _REASON_CHARS:
        text = text[: _REASON_CHARS - 3] + "..."
    return text


class _Tally:
    """Progress counting shared by every command."""

    def __init__(self, total: int | None, progress: ProgressCallback | None) -> None:
        self.total = total
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.failures: list[tuple[str, str]] = []

    def record(self, batch_id: str, result: object) -> bool:
        """Count one batch; True if it succeeded."""
        self.done += 1
        ok = not isinstance(result, Exception)
        if isinstance(result, Exception):
            self.failed += 1
            self.failures.append((batch_id, failure_reason(result)))
            logger.warning(
                "migration step failed for batch %r: %r",
                batch_id,
                result,
                extra={"batch_id": batch_id},
            )
            # The traceback only at DEBUG: with no logging configured, WARNING
            # records reach stderr, and the command line prints no tracebacks.
            logger.debug("traceback of batch %r", batch_id, exc_info=result)
        if self.progress is not None:
            self.progress(
                MigrationProgress(
                    batch_id=batch_id, done=self.done, total=self.total, failed=self.failed
                )
            )
        return ok
