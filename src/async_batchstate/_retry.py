"""Contention-aware retry: classify errors, full-jitter backoff, deadline.

The plain client retries only an ABORTED commit, five times with no delay,
and never an ABORTED read. Here the loop retries what is safe to retry
because every write is idempotent and carries a write id: an attempt whose
answer was lost is recognised by the next one from what is stored.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import ConfigurationError, RetryExhaustedError

T = TypeVar("T")


Retrying = Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]
"""``retrying(call, what)``: run ``call`` under the owner's retry policy, clock and jitter."""


class ErrorKind(enum.Enum):
    """How the retry loop treats an error."""

    CONTENTION = "aborted"
    """ABORTED: another transaction won; back off and retry."""
    UNAVAILABLE = "unavailable"
    """UNAVAILABLE, INTERNAL, UNKNOWN or CANCELLED: connection or server down, outcome
    unknown; retry (the retry reads what is stored to decide the outcome)."""
    TIMEOUT = "deadline_exceeded"
    """DEADLINE_EXCEEDED or our per-attempt timeout; retry."""
    OVERLOADED = "resource_exhausted"
    """RESOURCE_EXHAUSTED: quota or overload; retry after the maximum delay."""
    FATAL = "fatal"
    """Anything else: do not retry."""

    @property
    def retryable(self) -> bool:
        """Whether an attempt failing with this kind may be retried."""
        return self is not ErrorKind.FATAL


_KINDS: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (gexc.Aborted, ErrorKind.CONTENTION),
    (gexc.ServiceUnavailable, ErrorKind.UNAVAILABLE),
    # INTERNAL: Firestore documents it as retryable; after a dropped connection the
    # plain client's own commit retry gets "Can't swap from CLOSED to ACTIVE".
    (gexc.InternalServerError, ErrorKind.UNAVAILABLE),
    # UNKNOWN and CANCELLED after a dropped connection: the outcome is unknown, and
    # the retry decides it by reading what is stored (every write carries its id).
    (gexc.Unknown, ErrorKind.UNAVAILABLE),
    (gexc.Cancelled, ErrorKind.UNAVAILABLE),
    (gexc.DeadlineExceeded, ErrorKind.TIMEOUT),
    (TimeoutError, ErrorKind.TIMEOUT),
    (gexc.ResourceExhausted, ErrorKind.OVERLOADED),
)


def classify(exc: BaseException) -> ErrorKind:
    """Classify an attempt's error, looking through the plain client's wrappers.

    ``async_transactional`` wraps an ABORTED commit it gave up on in a
    ``ValueError`` whose ``__cause__`` is the ``Aborted``; ``RetryError`` from
    api-core carries its last error as ``cause``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for exc_type, kind in _KINDS:
            if isinstance(current, exc_type):
                return kind
        if isinstance(current, gexc.RetryError):
            current = current.cause
        elif isinstance(current, ValueError):
            current = current.__cause__
        else:
            return ErrorKind.FATAL
    return ErrorKind.FATAL


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a write is retried.

    Backoff is "full jitter": before retry ``n`` (0-based) the loop sleeps
    ``U(0, min(max_delay, base_delay * 2**n))``; RESOURCE_EXHAUSTED sleeps
    ``max_delay``. The defaults suit a hot document on production Firestore
    and on the emulator; raise ``deadline`` for long outages.

    Args:
        base_delay: First backoff ceiling in seconds.
        max_delay: Largest sleep in seconds.
        max_attempts: Attempts before giving up (>= 1).
        deadline: Seconds from the first attempt after which no new attempt starts.
        attempt_timeout: Seconds one attempt (begin, reads, commit) may take.

    Raises:
        ConfigurationError: A delay, deadline or timeout that is not a finite
            number of seconds > 0, ``max_delay < base_delay``, or ``max_attempts``
            not an int >= 1.
    """

    base_delay: float = 0.02
    max_delay: float = 2.0
    max_attempts: int = 30
    deadline: float = 60.0
    attempt_timeout: float = 20.0

    def __post_init__(self) -> None:
        for name in ("base_delay", "max_delay", "deadline", "attempt_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds > 0, not {value!r}"
                )
        if self.max_delay < self.base_delay:
            raise ConfigurationError("need 0 < base_delay <= max_delay")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, not {attempts!r}")

    def backoff(self, retry_number: int, kind: ErrorKind, rng: random.Random) -> float:
        """Seconds to sleep before retry ``retry_number`` (0 for the first retry)."""
        if kind is ErrorKind.OVERLOADED:
            return self.max_delay
        ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(retry_number, 62)))
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class AttemptFailure:
    """What the retry loop tells its observer about one failed attempt."""

    attempt: int
    kind: ErrorKind
    error: BaseException
    delay: float | None
    """Seconds the loop will sleep before the next attempt; None if it gives up."""


async def run_with_retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    deadline: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    on_failure: Callable[[AttemptFailure], None] | None = None,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds, a fatal error, or the budget runs out.

    Args:
        attempt: One try; called again after each retryable failure.
        policy: Backoff, attempts and timeouts.
        what: Describes the operation in the error message.
        deadline: Seconds of budget, overriding ``policy.deadline``.
        clock: Time source of the per-attempt timeout, the budget and the backoff
            sleeps (inject a fake one in tests).
        rng: Randomness for the jitter.
        on_failure: Called after each failed attempt, before sleeping.

    Returns:
        The attempt's result and the number of attempts made.

    Raises:
        RetryExhaustedError: Retryable failures until ``max_attempts`` or ``deadline``.
        BaseException: A fatal error of an attempt, unchanged.
    """
    rng = rng if rng is not None else random.Random()
    budget = policy.deadline if deadline is None else deadline
    start = clock.monotonic()
    number = 0
    while True:
        number += 1
        remaining = budget - (clock.monotonic() - start)
        try:
            async with clock.timeout(min(policy.attempt_timeout, max(remaining, 0.001))):
                return await attempt(), number
        except Exception as exc:
            kind = classify(exc)
            elapsed = clock.monotonic() - start
            delay: float | None = None
            if kind.retryable and number < policy.max_attempts:
                delay = policy.backoff(number - 1, kind, rng)
                if elapsed + delay >= budget:
                    delay = None
            if on_failure is not None:
                on_failure(AttemptFailure(attempt=number, kind=kind, error=exc, delay=delay))
            if not kind.retryable:
                raise
            if delay is None:
                raise RetryExhaustedError(
                    what, attempts=number, elapsed=elapsed, last_cause=exc
                ) from exc
            await clock.sleep(delay)


async def retried(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy | None, *, what: str, clock: Clock
) -> T:
    """``call()`` under ``policy`` (``RetryPolicy()`` when None): its result, attempts dropped."""
    result, _ = await run_with_retry(call, policy or RetryPolicy(), what=what, clock=clock)
    return result
