"""The exception hierarchy: every error the library raises is a ``BatchStateError``."""

from __future__ import annotations


class BatchStateError(Exception):
    """Base class of every error raised by async-batchstate."""


class ConfigurationError(BatchStateError, ValueError):
    """Settings or environment flags contradict each other or are malformed."""


class InvalidInputError(BatchStateError, ValueError):
    """An argument was rejected before anything was written."""


class InvalidIdError(InvalidInputError):
    """A batch or player id that Firestore cannot store as given."""


class InvalidCountError(InvalidInputError):
    """A count that is negative, too large or not an ``int``."""


class DuplicatePlayerError(InvalidInputError):
    """``expected_players`` named the same player more than once."""


class UnexpectedPlayerError(InvalidInputError):
    """A completion for a player outside the batch's roster (``expected_players``).

    Nothing was written: a stale redelivery from another batch or a worker bug
    must not count toward this batch.
    """


class BatchNotFoundError(BatchStateError, LookupError):
    """The batch document does not exist (``create_batch`` was never called)."""


def batch_not_found(batch_id: str, collection: str) -> BatchNotFoundError:
    """The one ``BatchNotFoundError`` every read or write of a missing batch raises."""
    return BatchNotFoundError(
        f"batch {batch_id!r} does not exist in {collection!r}; call create_batch first"
    )


class BatchExistsError(BatchStateError):
    """``create_batch`` found a batch with the same id and different settings."""


class LegacyArrayLimitError(BatchStateError):
    """The legacy ``completed_players`` array would outgrow Firestore's document limits.

    Move the batch to ``MigrationMode.SUBCOLLECTION_ONLY``, which has no such limit.
    """


class ManagerClosedError(BatchStateError, RuntimeError):
    """The manager is closed, or closed before this completion could be written."""


class RetryExhaustedError(BatchStateError):
    """A write kept failing with retryable errors until the attempts or deadline ran out.

    Attributes:
        attempts: How many transaction attempts were made.
        elapsed: Seconds from the first attempt to giving up.
        last_cause: The error of the last attempt (also the ``__cause__``).
    """

    def __init__(self, message: str, *, attempts: int, elapsed: float, last_cause: BaseException):
        super().__init__(
            f"{message} after {attempts} attempt(s) in {elapsed:.3f}s; "
            f"last cause: {type(last_cause).__name__}: {last_cause}"
        )
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_cause = last_cause


class CompletionTimeoutError(BatchStateError, TimeoutError):
    """The caller's deadline passed before its completion was confirmed.

    The completion may or may not have been recorded; recording it again is
    safe because writes are idempotent.
    """


class WriteFailedError(BatchStateError):
    """A non-retryable error from Firestore (or the client) while writing or reading.

    For a write, nothing was written. The original error is the ``__cause__``.
    """
