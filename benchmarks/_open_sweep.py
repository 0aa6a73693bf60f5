"""An open-loop sweep: its sizes, the arrival schedule, when to step, a step's figures
and the capacity at SLO."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._load import percentile
from ._open_worker import Arrival, OpenLoad
from ._strategies import NOT_IDEMPOTENT, OPEN_LOOP, STRATEGIES

HOT, BATCHES, FIRST, CEILING = "hot", "batches", "first", "ceiling"
GROUPS = (HOT, BATCHES, FIRST, CEILING)
"""Cells: one hot batch; 200 long batches whose settings each process already holds;
the same 200 fresh (each process's first message of a batch reads its settings first);
the hot batch behind a per-document write ceiling."""
NOT_REACHED = "not reached"
"""A sweep's ``limit`` when no step missed the SLO (its capacity is a lower bound)."""


@dataclass(frozen=True)
class OpenConfig:
    """Sizes of an open-loop run. Rates are messages per second over all processes."""

    name: str
    step_s: float  # seconds of arrivals per step
    drain_s: float  # after the last arrival: what is still in flight then is cut (unfinished)
    processes: tuple[int, ...]  # W, for the hot batch and the many-batches shape
    start_rate: float  # first step of a sweep (the ceiling cells start at a share of it)
    max_steps: int  # per sweep
    batches: int  # the many-batches shape
    ceilings: tuple[float, ...]  # writes/s per document (WriteCeilingProxy), hot batch
    ceiling_processes: tuple[int, ...]  # W values of the ceiling cells (the fleet-size model)
    strategies: tuple[str, ...] = OPEN_LOOP
    groups: tuple[str, ...] = GROUPS
    rates: tuple[float, ...] = ()  # fixed offered rates, every one run (no search): a grid
    redeliver: float = 0.1
    redeliver_delay: tuple[float, float] = (0.05, 0.5)  # seconds after the first delivery
    ceiling_max_wait: float = 1.0  # WriteCeilingProxy's max_wait
    slo_p99_ms: float = 500.0
    slo_failures: float = 0.001  # share of messages failed or unfinished
    lag_limit_ms: float = 50.0  # p99 dispatch lag above it: the step is CPU-bound
    cancel_grace: float = 2.0


OPEN_FULL = OpenConfig(
    name="open",
    step_s=8.0,
    drain_s=5.0,
    processes=(4, 8),
    start_rate=100.0,
    max_steps=6,
    batches=200,
    ceilings=(20.0, 100.0, 400.0),
    ceiling_processes=(4,),
)
OPEN_QUICK = OpenConfig(  # every cell once, tiny: the smoke test and `--quick --open-loop`
    name="quick-open",
    step_s=1.0,
    drain_s=3.0,
    processes=(2,),
    start_rate=20.0,
    max_steps=1,
    batches=5,
    ceilings=(20.0, 100.0, 400.0),
    ceiling_processes=(2,),
    cancel_grace=0.5,
)


def open_wan(cfg: OpenConfig, rtt_ms: float) -> OpenConfig:
    """``cfg`` for the WAN profile (the same steps; only the name says where it ran)."""
    return replace(cfg, name=f"{cfg.name}-wan{rtt_ms:g}")


# -- the schedule ----------------------------------------------------------------------


def schedule(
    rate: float,
    seconds: float,
    processes: int,
    batches: Sequence[str],
    *,
    redeliver: float,
    delay: tuple[float, float],
    seed: int,
    prefix: str = "p",
) -> list[list[Arrival]]:
    """Each process's arrivals, in time order, ``rate`` messages/s in all.

    First deliveries arrive at each process as a Poisson process of rate
    ``rate / processes / (1 + redeliver)``, each for a new player of a batch drawn
    uniformly from ``batches``. A ``redeliver`` share of them (drawn independently)
    arrives once more, ``U(delay)`` seconds later, at another process (at the same
    one if there is only one).
    """
    rng = random.Random(seed)
    out: list[list[Arrival]] = [[] for _ in range(processes)]
    each = rate / processes / (1 + redeliver)
    n = 0
    for w in range(processes):
        t = rng.expovariate(each)
        while t < seconds:
            message = (t, rng.choice(batches), f"{prefix}{w}-{n:07d}", n % 5 + 1)
            out[w].append(message)
            if rng.random() < redeliver:
                other = rng.choice([x for x in range(processes) if x != w] or [w])
                out[other].append((t + rng.uniform(*delay), *message[1:]))
            n += 1
            t += rng.expovariate(each)
    for part in out:
        part.sort()
    return out


def next_rate(steps: Sequence[tuple[float, bool]], cfg: OpenConfig) -> float | None:
    """The next offered rate of a sweep, from ``(rate, met the SLO)`` so far; None: done.

    Doubles from ``start`` until a step misses, then tries once between the highest
    pass and the lowest miss (geometric middle, when they are more than 1.5x apart);
    if the first step misses, halves down to an eighth of it.
    """
    if len(steps) >= cfg.max_steps:
        return None
    tried = {r for r, _ in steps}
    passed = [r for r, ok in steps if ok]
    missed = [r for r, ok in steps if not ok]
    if not missed:
        return steps[-1][0] * 2
    low = min(missed)
    if not passed:
        rate = low / 2
        return rate if rate >= steps[0][0] / 8 and rate not in tried else None
    high = max(r for r in passed if r < low) if any(r < low for r in passed) else None
    if high is None or low / high <= 1.5:
        return None
    middle = float(round(math.sqrt(high * low)))
    return middle if middle not in tried else None


# -- a step's figures ------------------------------------------------------------------


def step_summary(
    loads: Sequence[OpenLoad],
    *,
    cfg: OpenConfig,
    strategy: str,
    rate: float,
    consistency: dict[str, Any],
    emulator_cpu_s: float | None,
    ceiling_aborts: int | None = None,
    ceiling_proxy_cpu_s: float | None = None,
) -> dict[str, Any]:
    """One step of a sweep, from its processes' loads; ``ok`` is whether it met the SLO."""
    messages = sum(x.messages for x in loads)
    latencies = [t for x in loads for t in x.latencies]
    # An unfinished call waited at least until the cut: that lower bound is its latency.
    waited = latencies + [t for x in loads for t in x.cut]
    lags = [t for x in loads for t in x.lags]
    errors = sum((x.errors for x in loads), Counter[str]())
    rpcs = sum((Counter(x.rpcs) for x in loads), Counter[str]())
    unfinished = sum(len(x.cut) for x in loads)
    failed = sum(errors.values())
    commits = sum(x.commits for x in loads)
    reads = [x.validation_reads for x in loads]
    done = max(1, len(latencies))
    p99 = percentile(waited, 99) * 1e3
    lag_p99 = percentile(lags, 99) * 1e3
    failure_share = (failed + unfinished) / max(1, messages)
    exact = bool(consistency["ok"])
    misses = [
        what
        for what, missed in (
            (f"p99 >= {cfg.slo_p99_ms:g} ms", p99 >= cfg.slo_p99_ms),
            (f"failures >= {cfg.slo_failures:.1%}", failure_share >= cfg.slo_failures),
            ("not exact", not exact and strategy not in NOT_IDEMPOTENT),
        )
        if missed
    ]
    cpu_bound = lag_p99 > cfg.lag_limit_ms
    elapsed = max((x.elapsed for x in loads), default=0.0)
    return {
        "strategy": strategy,
        "label": STRATEGIES[strategy].label,
        "offered_per_s": rate,
        "messages": messages,
        "completions": len(latencies),
        "completions_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "failed": failed,
        "unfinished": unfinished,
        "failure_share": failure_share,
        "p50_ms": percentile(waited, 50) * 1e3,
        "p95_ms": percentile(waited, 95) * 1e3,
        "p99_ms": p99,
        "max_ms": max(waited, default=0.0) * 1e3,
        "dispatch_lag_p99_ms": lag_p99,
        "dispatch_lag_max_ms": max(lags, default=0.0) * 1e3,
        "cpu_bound": cpu_bound,
        "client_cpu_ms_per_message": sum(x.cpu_s for x in loads) * 1e3 / max(1, messages),
        "emulator_cpu_ms_per_message": (
            None if emulator_cpu_s is None else emulator_cpu_s * 1e3 / max(1, messages)
        ),
        "rpcs": dict(sorted(rpcs.items())),
        "rpcs_per_message": sum(rpcs.values()) / max(1, messages),
        "attempts": sum(x.attempts for x in loads),
        "commits": commits,
        "mean_group_size": sum(x.grouped for x in loads) / commits if commits else 0.0,
        "duplicates": sum(x.duplicates for x in loads),
        "validation_reads_per_completion": (
            None if None in reads else sum(r or 0 for r in reads) / done
        ),
        "ceiling_aborts": ceiling_aborts,
        "ceiling_proxy_cpu_ms_per_message": (
            None if ceiling_proxy_cpu_s is None else ceiling_proxy_cpu_s * 1e3 / max(1, messages)
        ),
        "errors": dict(errors),
        "error_examples": {k: v for x in loads for k, v in x.error_examples.items()},
        "consistency": consistency,
        "exact": exact,
        "ok": not misses,
        "misses": misses,
        "latencies_ms": [round(t * 1e3, 2) for t in latencies],
    }


def capacity(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The highest offered rate that met the SLO, and what stopped the sweep."""
    passed = [s for s in steps if s["ok"]]
    missed = [s for s in steps if not s["ok"]]
    best = max(passed, key=lambda s: s["offered_per_s"], default=None)
    first_miss = min(missed, key=lambda s: s["offered_per_s"], default=None)
    if first_miss is None:
        limit = NOT_REACHED
    elif first_miss["cpu_bound"]:
        limit = "cpu-bound"  # arrivals fell behind: the machine's limit, not the library's
    else:
        limit = ", ".join(first_miss["misses"])
    return {
        "per_s": best["offered_per_s"] if best else 0.0,
        "limit": limit,
        "missed_at_per_s": first_miss["offered_per_s"] if first_miss else None,
        "exact": all(s["exact"] for s in steps),
        "at": {k: v for k, v in (best or {}).items() if k != "latencies_ms"},
    }
