"""Backoff maths, deadlines, error classification and AIMD, on a fake clock (unit, no sleeps)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
from google.api_core import exceptions as gexc

from async_batchstate import RetryExhaustedError, RetryPolicy
from async_batchstate._retry import AttemptFailure, classify, run_with_retry
from async_batchstate._write.limits import AdaptiveLimit
from async_batchstate.instrumentation import ErrorKind
from async_batchstate.testing import FakeClock


class MaxRandom(random.Random):
    """uniform(a, b) returns b: the backoff ceiling itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def failing(errors: list[BaseException], result: str = "ok") -> Callable[[], Awaitable[str]]:
    """An attempt that raises ``errors`` one per call, then returns ``result``."""
    calls = iter(errors)

    async def attempt() -> str:
        error = next(calls, None)
        if error is not None:
            raise error
        return result

    return attempt


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (gexc.Aborted("x"), ErrorKind.CONTENTION),
        (gexc.ServiceUnavailable("x"), ErrorKind.UNAVAILABLE),
        (gexc.DeadlineExceeded("x"), ErrorKind.TIMEOUT),
        (TimeoutError(), ErrorKind.TIMEOUT),
        (gexc.ResourceExhausted("x"), ErrorKind.OVERLOADED),
        (gexc.InvalidArgument("x"), ErrorKind.FATAL),
        (gexc.NotFound("x"), ErrorKind.FATAL),
        (RuntimeError("x"), ErrorKind.FATAL),
        (ValueError("plain"), ErrorKind.FATAL),
    ],
)
def test_classification(error: BaseException, kind: ErrorKind) -> None:
    """Each gRPC status maps to its retry treatment."""
    assert kind is classify(error)


def test_classification_sees_through_the_plain_clients_value_error() -> None:
    """async_transactional wraps an exhausted ABORTED commit in ValueError from Aborted."""
    try:
        try:
            raise gexc.Aborted("contention")
        except gexc.Aborted as exc:
            raise ValueError("Failed to commit transaction in 1 attempts.") from exc
    except ValueError as wrapped:
        assert ErrorKind.CONTENTION is classify(wrapped)


def test_classification_sees_through_retry_error() -> None:
    """api-core's RetryError carries the last error as its cause."""
    assert ErrorKind.UNAVAILABLE is classify(
        gexc.RetryError("gave up", gexc.ServiceUnavailable("x"))
    )


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    """The n-th retry sleeps at most min(max_delay, base * 2**n)."""
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    ceilings = [policy.backoff(n, ErrorKind.CONTENTION, MaxRandom()) for n in range(6)]
    assert [0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == pytest.approx(ceilings)


def test_jitter_stays_within_zero_and_the_ceiling() -> None:
    """Full jitter draws from U(0, ceiling)."""
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    rng = random.Random(7)
    delays = [policy.backoff(3, ErrorKind.UNAVAILABLE, rng) for _ in range(500)]
    assert all(0.0 <= d <= 0.8 for d in delays)
    assert max(delays) > 0.6 and min(delays) < 0.2  # spread over the range


def test_resource_exhausted_waits_the_maximum_delay() -> None:
    """Overload backs off by max_delay, not by the jittered curve."""
    assert 2.5 == RetryPolicy(max_delay=2.5).backoff(0, ErrorKind.OVERLOADED, random.Random(1))


async def test_retries_until_success_and_reports_attempts() -> None:
    """Two ABORTED attempts then success: the result and the attempt count come back."""
    clock = FakeClock()
    failures: list[AttemptFailure] = []
    result = await run_with_retry(
        failing([gexc.Aborted("a"), gexc.Aborted("b")]),
        RetryPolicy(base_delay=0.1, max_delay=1.0),
        what="test",
        clock=clock,
        rng=MaxRandom(),
        on_failure=failures.append,
    )
    assert ("ok", 3) == result
    assert [0.1, 0.2] == pytest.approx(clock.sleeps)
    assert [1, 2] == [f.attempt for f in failures]


async def test_fatal_error_is_raised_unchanged_without_retry() -> None:
    """A non-retryable error propagates at once, with no sleep."""
    clock = FakeClock()
    with pytest.raises(gexc.InvalidArgument):
        await run_with_retry(
            failing([gexc.InvalidArgument("bad")]), RetryPolicy(), what="t", clock=clock
        )
    assert [] == clock.sleeps


async def test_max_attempts_bounds_the_retries() -> None:
    """After max_attempts retryable failures a RetryExhaustedError carries attempts and cause."""
    clock = FakeClock()
    with pytest.raises(RetryExhaustedError) as info:
        await run_with_retry(
            failing([gexc.ServiceUnavailable("down")] * 10),
            RetryPolicy(max_attempts=4),
            what="writing",
            clock=clock,
            rng=MaxRandom(),
        )
    assert 4 == info.value.attempts
    assert isinstance(info.value.last_cause, gexc.ServiceUnavailable)
    assert info.value.__cause__ is info.value.last_cause
    assert 3 == len(clock.sleeps)


async def test_deadline_stops_before_a_sleep_that_would_cross_it() -> None:
    """No retry starts after the deadline; elapsed is reported on the fake clock."""
    clock = FakeClock()
    with pytest.raises(RetryExhaustedError) as info:
        await run_with_retry(
            failing([gexc.ResourceExhausted("quota")] * 100),
            RetryPolicy(base_delay=0.5, max_delay=2.0, deadline=5.0, max_attempts=100),
            what="writing",
            clock=clock,
        )
    # Overload sleeps max_delay (2 s): attempts at t=0, 2, 4; the next sleep would cross 5 s.
    assert 3 == info.value.attempts
    assert 4.0 == info.value.elapsed
    assert [2.0, 2.0] == clock.sleeps


async def test_the_attempt_timeout_is_on_the_clock() -> None:
    """An attempt that takes 3 fake seconds under a 2 s attempt timeout is cut off there
    (TIMEOUT, retried), without a real second passing."""
    clock = FakeClock()
    failures: list[AttemptFailure] = []
    calls = 0

    async def slow_then_quick() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await clock.sleep(3.0)
            return "too late"
        return "ok"

    result = await run_with_retry(
        slow_then_quick,
        RetryPolicy(base_delay=0.1, max_delay=1.0, attempt_timeout=2.0),
        what="t",
        clock=clock,
        rng=MaxRandom(),
        on_failure=failures.append,
    )

    assert ("ok", 2) == result
    assert [ErrorKind.TIMEOUT] == [f.kind for f in failures]
    assert isinstance(failures[0].error, TimeoutError)
    assert [3.0, 0.1] == pytest.approx(clock.sleeps)


def test_invalid_policies_are_configuration_errors() -> None:
    """Nonsense knobs fail at construction."""
    from async_batchstate import ConfigurationError

    for kwargs in (
        {"base_delay": 0},
        {"base_delay": 2, "max_delay": 1},
        {"max_attempts": 0},
        {"deadline": 0},
    ):
        with pytest.raises(ConfigurationError):
            RetryPolicy(**kwargs)


def test_aimd_halves_on_contention_and_grows_back_slowly() -> None:
    """Multiplicative decrease to the floor, additive increase to the ceiling."""
    limit = AdaptiveLimit(8, initial=8)
    assert 8 == limit.limit
    limit.on_contention()
    assert 4 == limit.limit
    for _ in range(5):
        limit.on_contention()
    assert 1 == limit.limit
    for _ in range(3):
        limit.on_success()
    assert 3 >= limit.limit >= 2
    for _ in range(200):
        limit.on_success()
    assert 8 == limit.limit


def test_adaptive_limit_starts_low_and_grows_while_latency_stays_at_its_floor() -> None:
    """No contention, steady latency (a slow link): the limit climbs to its maximum."""
    limit = AdaptiveLimit(16)
    assert 2 == limit.limit
    for _ in range(400):
        limit.on_success(0.014)
    assert 16 == limit.limit
    assert 0.014 == pytest.approx(limit.latency_floor)


def test_adaptive_limit_shrinks_when_latency_rises_past_its_floor() -> None:
    """Commits slowing to several times their floor (queueing) shrink the limit, not grow it."""
    limit = AdaptiveLimit(16, initial=16)
    limit.on_success(0.010)
    for _ in range(10):
        limit.on_success(0.100)
    assert 5 == limit.limit  # 16 * 0.9**10 = 5.6


def test_adaptive_limit_shrinks_on_every_contention_signal() -> None:
    """ABORTED and RESOURCE_EXHAUSTED (both reported as contention) halve the limit."""
    limit = AdaptiveLimit(16, initial=16)
    limit.on_contention()
    limit.on_contention()
    assert 4 == limit.limit


def test_adaptive_limit_rejects_bad_bounds() -> None:
    """Initial outside [minimum, maximum] and a tolerance <= 1 are configuration errors."""
    from async_batchstate import ConfigurationError

    for kwargs in ({"initial": 0}, {"initial": 9}, {"tolerance": 1.0}):
        with pytest.raises(ConfigurationError):
            AdaptiveLimit(8, **kwargs)
