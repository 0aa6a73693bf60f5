"""Fleet pacing: each process spaces its writes of a batch so the fleet's stay at a rate.

N processes that each keep one write in flight on a hot batch keep N Commits queued
at its document: a write waits about N / C behind the others (C: the document's
write ceiling), and a completion waits for its process's write in flight and then
its own, about 2N / C. Pacing removes that queue. Every write reads back the
batch's count (the transform results of its Commit), so a process measures the
fleet's completions per second on the batch, ``L``, from the counts its own writes
read; and it measures its own, ``l``, as completions arrive. For the fleet to make
``rate`` Commits per second, a Commit must carry ``g = L * u * k / rate`` queued
completions (``u``: completions queued here per one it counted, redeliveries
included; ``k``: Commits a write of this process sent per write that landed,
refused ones included, since each takes a write slot of the document), so this
process writes ``g / l`` seconds after its previous write started (or at once when
twice ``g`` are queued: its arrivals outran its estimate). Every process then writes about every
``N * k / rate`` s (N processes of equal load), the document sees ``rate`` Commits
per second and no standing queue, and a completion waits about half that interval
at the median, the whole of it at worst, plus one round trip.

Both rates are measured, never fed back from this process's own spacing (the
fleet's count moves with every process's completions, its own arrivals with its
own load), so processes of equal load settle at equal intervals. ``g <= 1`` (a fleet
under the rate) holds nothing back.

Pacing only ever delays a write; what is written, and every outcome, is the same.
"""

from __future__ import annotations

import math

from .._clock import Clock

MAX_INTERVAL = 1.0
"""Longest pause between two write starts of one batch: beyond it the fleet is too large
for the rate, and holding completions longer would only move the queue into the process."""
_WINDOW = 0.25
"""Least seconds between two measurements of the fleet's completions per second."""
_ARRIVALS_TAU = 0.5
"""Time constant (s) of this process's arrival rate: a burst after a quiet spell shows
within a few arrivals, and twice the group target (``g``) starts its write at once anyway."""
_FLEET_TAU = 1.0
"""Time constant (s) of the fleet's rate: a measurement over a long span (a quiet spell)
replaces the estimate rather than averaging with it, and an estimate no write of this
process has refreshed for longer than ``MAX_INTERVAL`` fades: a batch that went quiet
holds nothing back."""


class Pacer:
    """One batch's write spacing in this process.

    Args:
        rate: The fleet's Commits per second to aim for on the batch document (> 0).
        clock: The manager's clock.
    """

    def __init__(self, rate: float, clock: Clock) -> None:
        self._rate = rate
        self._clock = clock
        self._started: float | None = None
        self._fleet = 0.0
        """The fleet's completions per second on the batch (0: not measured yet)."""
        self._mark: tuple[float, int] | None = None
        self._commits = 1.0
        """Commits sent per write that landed (smoothed)."""
        self._sent = 0
        self._arrivals = 0.0
        self._arrived_at = 0.0
        self._queued = 0
        self._counted = 0
        self._refreshed = 0.0
        """When a write of this process last landed (``monotonic``)."""

    @property
    def group(self) -> float:
        """Queued completions a Commit should carry for the fleet to stay at the rate."""
        if self._fleet == 0.0:
            return 0.0
        per_counted = self._queued / self._counted if self._counted else 1.0
        stale = self._clock.monotonic() - self._refreshed - MAX_INTERVAL
        fleet = self._fleet * math.exp(-stale / _FLEET_TAU) if stale > 0 else self._fleet
        return fleet * per_counted * self._commits / self._rate

    @property
    def interval(self) -> float:
        """Least seconds between two write starts while fewer than ``group`` are queued."""
        group = self.group
        if group <= 1.0:
            return 0.0
        own = self._own(self._clock.monotonic())
        return MAX_INTERVAL if own * MAX_INTERVAL <= group else group / own

    def delay(self, queued: int) -> float:
        """Seconds until the next write may start, with ``queued`` completions waiting."""
        if self._started is None or queued >= 2.0 * self.group:
            return 0.0
        return max(0.0, self._started + self.interval - self._clock.monotonic())

    def _own(self, now: float) -> float:
        """This process's completions of the batch per second (decayed to ``now``)."""
        if self._arrivals == 0.0:
            return 0.0
        return self._arrivals * math.exp(min(0.0, self._arrived_at - now) / _ARRIVALS_TAU)

    def arrived(self) -> None:
        """A completion of the batch was queued in this process."""
        now = self._clock.monotonic()
        self._arrivals = self._own(now) + 1.0 / _ARRIVALS_TAU
        self._arrived_at = now
        self._queued += 1

    def started(self) -> None:
        """A write of the batch starts now."""
        self._started = self._clock.monotonic()

    def sent(self, commits: int) -> None:
        """This process sent ``commits`` Commits to the batch (landed or refused)."""
        self._sent += commits

    def landed(self, count: int | None, counted: int) -> None:
        """A write landed.

        Args:
            count: The batch's count it read back (None: not read).
            counted: The completions it counted.
        """
        self._commits = 0.9 * self._commits + 0.1 * max(self._sent, 1)
        self._sent = 0
        self._counted += counted
        if self._counted > 1_000:  # follow a change in the share of redeliveries
            self._queued //= 2
            self._counted //= 2
        if count is None:
            return
        now = self._clock.monotonic()
        self._refreshed = now
        if self._mark is None or count < self._mark[1]:
            self._mark = (now, count)  # the first count, or a batch made again
            self._fleet = 0.0
            return
        since, before = self._mark
        span = now - since
        if span >= _WINDOW:
            fleet = (count - before) / span
            weight = 1.0 if self._fleet == 0.0 else 1.0 - math.exp(-span / _FLEET_TAU)
            self._fleet = weight * fleet + (1.0 - weight) * self._fleet
            self._mark = (now, count)
