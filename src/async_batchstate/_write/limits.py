"""Write-rate limiting (aiolimiter) and an adaptive in-flight limit (AIMD)."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from .._config import MigrationMode
from .._errors import ConfigurationError

_FLOOR_CREEP = 1.001
"""The latency floor rises at most 0.1 % per success: fast enough to follow a slower link
over a few thousand commits, too slow to mistake a standing queue (a document at its
write ceiling) for the baseline within the few hundred commits that queue builds in."""


class AdaptiveLimit:
    """How many writes of one batch may be in flight: follows contention AND latency.

    Callers in a closed loop get at most ``callers / latency`` completions per
    second, so on a slow link more writes in flight are what keeps a process
    near what the document absorbs; on a contended document fewer are. The
    limit starts at ``initial`` and:

    * grows by ``increase / limit`` per successful attempt (about +1 per window
      of successes) while the attempt's latency stays within ``tolerance`` times
      its floor (the lowest latency seen, which creeps up 0.1 % per success so it
      follows a slower baseline, but not a standing queue);
    * shrinks by ``decrease`` on contention (ABORTED, RESOURCE_EXHAUSTED) and,
      gently (x0.9), when latency rises past ``tolerance`` times its floor: the
      server is queueing our writes, and more in flight would only add to it.

    It never leaves ``[minimum, maximum]``.

    Args:
        maximum: Upper bound.
        initial: Starting value (default ``min(2, maximum)``).
        minimum: Lower bound (>= 1).
        decrease: Factor applied on contention, in ``(0, 1)``.
        increase: Additive step per window of successes (> 0).
        tolerance: Latency over ``tolerance`` times its floor counts as queueing (> 1).
    """

    def __init__(
        self,
        maximum: int,
        *,
        initial: int | None = None,
        minimum: int = 1,
        decrease: float = 0.5,
        increase: float = 1.0,
        tolerance: float = 2.0,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ConfigurationError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        if not 0.0 < decrease < 1.0 or increase <= 0.0 or tolerance <= 1.0:
            raise ConfigurationError("need 0 < decrease < 1, increase > 0 and tolerance > 1")
        start = min(2, maximum) if initial is None else initial
        if not minimum <= start <= maximum:
            raise ConfigurationError(f"need minimum <= initial <= maximum, got {start}")
        self.minimum = minimum
        self.maximum = maximum
        self._decrease = decrease
        self._increase = increase
        self._tolerance = tolerance
        self._value = float(start)
        self._floor: float | None = None

    @property
    def limit(self) -> int:
        """The current whole-number limit."""
        return max(self.minimum, int(self._value))

    @property
    def latency_floor(self) -> float | None:
        """The lowest recent attempt latency, seconds (None before the first success)."""
        return self._floor

    def on_success(self, latency: float | None = None) -> None:
        """An attempt succeeded in ``latency`` seconds: grow, unless latency says queueing."""
        if latency is not None and latency >= 0.0:
            floor = latency if self._floor is None else min(latency, self._floor * _FLOOR_CREEP)
            self._floor = floor
            if latency > self._tolerance * floor:
                self._value = max(float(self.minimum), self._value * 0.9)
                return
        self._value = min(float(self.maximum), self._value + self._increase / max(self._value, 1.0))

    def on_contention(self) -> None:
        """Shrink the limit multiplicatively."""
        self._value = max(float(self.minimum), self._value * self._decrease)

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit}, minimum={self.minimum}, maximum={self.maximum})"


def in_flight_bound(mode: MigrationMode, coalesce: bool, write_path: str, given: int | None) -> int:
    """The bound of a batch's adaptive in-flight limit: ``given``, else the default.

    Raises:
        ConfigurationError: ``given`` below 1.
    """
    if given is not None:
        if given < 1:
            raise ConfigurationError("max_in_flight_per_batch must be >= 1")
        return given
    if mode is MigrationMode.LEGACY:
        return 1  # LEGACY reads the hot document first: a second write would void the first
    if not coalesce:
        return 32
    return 16 if write_path == "auto" else 2


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
