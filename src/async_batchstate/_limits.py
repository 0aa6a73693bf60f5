"""Write-rate limiting (aiolimiter) and an adaptive in-flight limit (AIMD)."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from ._errors import ConfigurationError


class AdaptiveLimit:
    """Additive-increase, multiplicative-decrease limit on transactions in flight.

    It starts at ``maximum``. Every contended attempt (ABORTED or
    RESOURCE_EXHAUSTED) multiplies the limit by ``decrease``; every success
    adds ``increase / limit`` (so about +1 per window of successes). The limit
    never leaves ``[minimum, maximum]``. Under cross-process contention on one
    hot document this lets each process fall back to one transaction in flight
    by itself, and climb back once the contention is gone.

    Args:
        maximum: Upper bound, and the starting value.
        minimum: Lower bound (>= 1).
        decrease: Factor applied on contention, in ``(0, 1)``.
        increase: Additive step per window of successes (> 0).
    """

    def __init__(
        self, maximum: int, *, minimum: int = 1, decrease: float = 0.5, increase: float = 1.0
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ConfigurationError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        if not 0.0 < decrease < 1.0 or increase <= 0.0:
            raise ConfigurationError("need 0 < decrease < 1 and increase > 0")
        self.minimum = minimum
        self.maximum = maximum
        self._decrease = decrease
        self._increase = increase
        self._value = float(maximum)

    @property
    def limit(self) -> int:
        """The current whole-number limit."""
        return max(self.minimum, int(self._value))

    def on_success(self) -> None:
        """Grow the limit a little."""
        self._value = min(float(self.maximum), self._value + self._increase / max(self._value, 1.0))

    def on_contention(self) -> None:
        """Shrink the limit multiplicatively."""
        self._value = max(float(self.minimum), self._value * self._decrease)

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit}, minimum={self.minimum}, maximum={self.maximum})"


def make_rate_limiter(rate: float | None) -> AsyncLimiter | None:
    """An ``AsyncLimiter`` for ``rate`` transaction attempts per second, or None.

    aiolimiter is a leaky bucket of capacity ``rate`` over one second: an idle
    limiter admits a burst of up to ``rate`` attempts at once, then drips at
    ``rate`` per second. Below one per second a bucket of capacity ``rate``
    could never hold the one unit an attempt takes, so ``0 < rate < 1`` becomes
    a bucket of one attempt every ``1 / rate`` seconds (``0.5``: one attempt
    every 2 s).

    Raises:
        ConfigurationError: ``rate`` is not a real number (``bool`` included), is
            not finite, or is not > 0.
    """
    import math
    import numbers

    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ConfigurationError(
            f"rate_limit must be a number of operations per second, not {type(rate).__name__}"
        )
    try:
        value = float(rate)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"rate_limit must be a finite number > 0 operations per second, got {rate!r}"
        )
    if value >= 1:
        return AsyncLimiter(max_rate=value, time_period=1.0)
    period = 1.0 / value
    if not math.isfinite(period):
        raise ConfigurationError(f"rate_limit {rate!r} is too small: one operation every {period}s")
    return AsyncLimiter(max_rate=1, time_period=period)
