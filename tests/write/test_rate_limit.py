"""``make_rate_limiter``: rates below one per second work, nonsense rates are refused (no I/O)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from async_batchstate import ConfigurationError
from async_batchstate._write.limits import make_rate_limiter


def test_no_rate_means_no_limiter() -> None:
    """``None`` is "unlimited": no limiter at all."""
    assert None is make_rate_limiter(None)


async def test_half_per_second_admits_one_attempt_then_waits() -> None:
    """0.5/s: the first attempt is admitted at once (it used to fail every time), the next waits."""
    limiter = make_rate_limiter(0.5)
    assert limiter is not None

    await limiter.acquire()

    assert False is limiter.has_capacity()


def test_rate_below_one_is_one_attempt_every_inverse_seconds() -> None:
    """0.25/s is a bucket of one attempt that drains in 4 s, i.e. 0.25 attempts per second."""
    limiter = make_rate_limiter(0.25)
    assert limiter is not None

    assert (1, 4.0) == (limiter.max_rate, limiter.time_period)


async def test_rate_of_one_or_more_keeps_its_burst() -> None:
    """5/s: an idle limiter admits a burst of 5, then no more until it drips."""
    limiter = make_rate_limiter(5)
    assert limiter is not None

    for _ in range(5):
        await limiter.acquire()

    assert False is limiter.has_capacity()


def test_fraction_is_accepted() -> None:
    """Any real number works, not only float and int."""
    limiter = make_rate_limiter(Fraction(1, 2))  # type: ignore[arg-type]
    assert limiter is not None

    assert 2.0 == limiter.time_period


@pytest.mark.parametrize(
    "rate",
    [math.nan, math.inf, -math.inf, 0, 0.0, -1, -0.5, 5e-324, 10**400],
    ids=["nan", "inf", "-inf", "0", "0.0", "-1", "-0.5", "subnormal", "10**400"],
)
def test_non_finite_or_non_positive_rate_is_refused(rate: float) -> None:
    """NaN, infinities, zero, negatives and rates with no finite period raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="rate_limit"):
        make_rate_limiter(rate)


@pytest.mark.parametrize("rate", [True, False, "1", b"1", [1]], ids=repr)
def test_non_number_rate_is_refused(rate: object) -> None:
    """A bool (an int subclass, surely a mistake) or a non-number raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="must be a number"):
        make_rate_limiter(rate)  # type: ignore[arg-type]
