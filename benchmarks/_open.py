"""Open-loop cells: capacity at the SLO, production's shape.

Messages arrive on a schedule whatever the latency (Poisson, per process), as
Pub/Sub push delivers work as it finishes; a share of them is delivered again,
50-500 ms later, to another process. Latency runs from the SCHEDULED arrival,
so a late dispatch counts against the step (no coordinated omission). Each
sweep raises the offered rate until a step misses the SLO; the highest rate that
met it is the capacity at SLO.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import random
import resource
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient
from rich.progress import Progress

from async_batchstate.testing import (
    RpcCounter,
    WriteCeilingProxy,
)

from ._delay import _cpu_seconds
from ._load import _ABANDONED, check_batch, create_batch, note_error, percentile
from ._run import SCHEMA_VERSION, Bench, Config, machine_facts, worker_client
from ._strategies import NOT_IDEMPOTENT, OPEN_LOOP, STRATEGIES, has_write_path

Arrival = tuple[float, str, str, int]
"""``(seconds after the start, batch id, player, predictions)``: one message."""

HOT, BATCHES, CEILING = "hot", "batches", "ceiling"
GROUPS = (HOT, BATCHES, CEILING)
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
    ceiling_processes: int
    strategies: tuple[str, ...] = OPEN_LOOP
    groups: tuple[str, ...] = GROUPS
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
    ceiling_processes=4,
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
    ceiling_processes=2,
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


# -- one process's share of a step -----------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: gRPC's too
    return usage.ru_utime + usage.ru_stime


@dataclass
class OpenLoad:
    """What one process saw in one step (picklable)."""

    messages: int
    latencies: list[float] = field(default_factory=list)  # s from scheduled arrival, finished
    cut: list[float] = field(default_factory=list)  # unfinished: s from arrival to the cut
    lags: list[float] = field(default_factory=list)  # s each dispatch fell behind its schedule
    succeeded: dict[str, dict[str, int]] = field(default_factory=dict)  # batch -> player -> n
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    cpu_s: float = 0.0
    elapsed: float = 0.0
    rpcs: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    commits: int = 0
    grouped: int = 0
    duplicates: int = 0
    validation_reads: int | None = None


async def open_loop(
    client: AsyncClient,
    collection: str,
    strategy: str,
    arrivals: Sequence[Arrival],
    *,
    drain: float,
    grace: float,
) -> OpenLoad:
    """Dispatch ``arrivals`` on their schedule, each its own task; cut at ``drain`` s after.

    CPU is this process's (``getrusage``) from the first arrival until the
    recorder is closed (the manager's background work included).
    """
    loop = asyncio.get_running_loop()
    rpcs = RpcCounter().attach(client)
    recorder = STRATEGIES[strategy].open(client, collection)
    before = recorder.counters()
    load = OpenLoad(messages=len(arrivals))
    succeeded: defaultdict[str, dict[str, int]] = defaultdict(dict)
    ended = False  # the cut: what returns later is not counted

    async def one(due: float, batch_id: str, player: str, count: int) -> None:
        try:
            await recorder.record(batch_id, player, count)
        except Exception as exc:
            if ended:
                return
            note_error(load.errors, load.error_examples, exc)
        else:
            if not ended:
                load.latencies.append(loop.time() - due)
                succeeded[batch_id][player] = count

    cpu0, t0 = _cpu(), loop.time() + 0.05
    tasks: dict[asyncio.Task[None], float] = {}
    for offset, batch_id, player, count in arrivals:
        due = t0 + offset
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        load.lags.append(max(0.0, loop.time() - due))
        tasks[asyncio.create_task(one(due, batch_id, player, count))] = due
    try:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain)
            ended = True
            now = loop.time()
            load.cut = [now - tasks[task] for task in pending]
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=grace)
                _ABANDONED.update(stuck)
                for task in stuck:
                    task.add_done_callback(_ABANDONED.discard)
        load.elapsed = loop.time() - t0
    finally:
        await recorder.aclose()
        rpcs.detach()
    load.cpu_s = _cpu() - cpu0
    costs = recorder.counters()
    load.attempts = costs.attempts - before.attempts
    load.commits = costs.commits - before.commits
    load.grouped = costs.grouped - before.grouped
    load.duplicates = costs.duplicates - before.duplicates
    if costs.validation_reads is not None:
        load.validation_reads = costs.validation_reads - (before.validation_reads or 0)
    load.rpcs = {k: v for k, v in sorted(rpcs.counts.items()) if v}
    load.succeeded = dict(succeeded)
    return load


@dataclass(frozen=True)
class _OpenJob:
    host: str
    project: str
    collection: str
    strategy: str
    arrivals: tuple[Arrival, ...]
    drain: float
    grace: float


def _open_worker(job: _OpenJob) -> OpenLoad:
    return asyncio.run(_open_worker_load(job))


async def _open_worker_load(job: _OpenJob) -> OpenLoad:
    async with worker_client(job.host, job.project, job.collection, "connect") as client:
        return await open_loop(
            client,
            job.collection,
            job.strategy,
            job.arrivals,
            drain=job.drain,
            grace=job.grace,
        )


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


# -- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    group: str  # HOT, BATCHES or CEILING
    processes: int
    ceiling: float  # writes/s per document; 0: none

    @property
    def key(self) -> str:
        if self.group == CEILING:
            return f"ceiling{self.ceiling:g}-w{self.processes}"
        return f"{self.group}-w{self.processes}"


class OpenBench(Bench):
    """The open-loop run: warm-up, then one rate sweep per cell and strategy.

    ``emulator_pid`` is the emulator JVM's process id (its CPU per message is read
    from ``/proc``); None leaves that column empty.
    """

    def __init__(
        self,
        cfg: Config,
        open_cfg: OpenConfig,
        host: str,
        project: str,
        progress: Progress,
        *,
        network: dict[str, Any] | None = None,
        emulator_pid: int | None = None,
    ) -> None:
        self.open_cfg = open_cfg
        super().__init__(cfg, host, project, progress, network=network)
        self.emulator_pid = emulator_pid

    def cells(self) -> list[_Cell]:
        """Every cell, grouped by process count (a pool is started once per count)."""
        o = self.open_cfg
        cells = [
            _Cell(group, n, 0.0)
            for n in o.processes
            for group in (HOT, BATCHES)
            if group in o.groups
        ]
        if CEILING in o.groups:
            cells += [_Cell(CEILING, o.ceiling_processes, c) for c in o.ceilings]
        return sorted(cells, key=lambda c: c.processes)

    def _steps(self) -> int:
        return 1 + len(self.cells()) * len(self.open_cfg.strategies)

    async def run(self) -> dict[str, Any]:
        """Warm-up, then every sweep; returns the results (the JSON document)."""
        started = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        o = self.open_cfg
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "open_loop",
            "name": o.name,
            "config": asdict(o),
            "machine": machine_facts(),
            "network": self.network,
            "write_path_option": has_write_path(),
            "started_at": started.isoformat(),
            "collection": self.collection,
            "emulator_pid_known": self.emulator_pid is not None,
        }
        results["warmup"] = await self.warm_up()
        sweeps = []
        try:
            for cell in self.cells():
                async with self._ceiling(cell) as where:
                    for strategy in o.strategies:
                        sweeps.append(await self.sweep_cell(cell, strategy, where))
        finally:
            self._close_pool()
        results["sweeps"] = sweeps
        results["machine"]["load_average_at_end"] = os.getloadavg()
        results["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        results["duration_s"] = time.perf_counter() - t0
        return results

    @contextlib.asynccontextmanager
    async def _ceiling(self, cell: _Cell) -> AsyncIterator[tuple[str, WriteCeilingProxy | None]]:
        """Where the cell's clients connect: a WriteCeilingProxy in front of ``host``, or it."""
        if not cell.ceiling:
            yield self.emulator.host, None
            return
        proxy = WriteCeilingProxy(
            self.emulator.host,
            writes_per_second=cell.ceiling,
            max_wait=self.open_cfg.ceiling_max_wait,
        )
        async with proxy:
            yield proxy.host, proxy

    async def sweep_cell(
        self, cell: _Cell, strategy: str, where: tuple[str, WriteCeilingProxy | None]
    ) -> dict[str, Any]:
        """Raise the offered rate until a step misses the SLO (see ``next_rate``)."""
        o = self.open_cfg
        start = o.start_rate if not cell.ceiling else max(1.0, min(o.start_rate, cell.ceiling / 2))
        steps: list[dict[str, Any]] = []
        rate: float | None = start
        while rate is not None:
            steps.append(await self.step(cell, strategy, rate, where))
            rate = next_rate([(s["offered_per_s"], s["ok"]) for s in steps], o)
        steps.sort(key=lambda s: s["offered_per_s"])
        self._done()
        return {
            "cell": cell.key,
            "group": cell.group,
            "processes": cell.processes,
            "ceiling_writes_per_s": cell.ceiling,
            "batches": 1 if cell.group != BATCHES else o.batches,
            "strategy": strategy,
            "label": STRATEGIES[strategy].label,
            "capacity": capacity(steps),
            "steps": steps,
        }

    async def step(
        self,
        cell: _Cell,
        strategy: str,
        rate: float,
        where: tuple[str, WriteCeilingProxy | None],
    ) -> dict[str, Any]:
        """One step: new batches, the schedule on every process, the check after it."""
        o = self.open_cfg
        host, proxy = where
        tag = f"{cell.key}-{strategy}-r{rate:g}"
        self._step(f"open loop {cell.key}: {strategy} at {rate:g}/s", None)
        ids = [f"ol-{tag}-b{j}" for j in range(o.batches if cell.group == BATCHES else 1)]
        parts = schedule(
            rate,
            o.step_s,
            cell.processes,
            ids,
            redeliver=o.redeliver,
            delay=o.redeliver_delay,
            seed=zlib.crc32(tag.encode()),
        )
        expected = Counter(b for b, _ in {(a[1], a[2]) for part in parts for a in part})
        async with self.client() as client:
            sem = asyncio.Semaphore(16)

            async def create(batch_id: str, n: int) -> None:
                async with sem:
                    await create_batch(client, self.collection, batch_id, n)

            await asyncio.gather(*(create(b, n) for b, n in expected.items()))
        jobs = [
            _OpenJob(
                host,
                self.emulator.project,
                self.collection,
                strategy,
                tuple(part),
                o.drain_s,
                o.cancel_grace,
            )
            for part in parts
        ]
        pool = self._pool(cell.processes)
        emulator0, proxy0 = self._emulator_cpu(), self._proxy_cpu(proxy)
        aborted0 = proxy.aborted if proxy else 0
        loads: list[OpenLoad] = await asyncio.to_thread(pool.map, _open_worker, jobs, 1)
        emulator1, proxy1 = self._emulator_cpu(), self._proxy_cpu(proxy)
        succeeded: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for load in loads:
            for batch_id, done in load.succeeded.items():
                succeeded[batch_id].update(done)
        consistency = await self._check(list(expected), succeeded)
        return step_summary(
            loads,
            cfg=o,
            strategy=strategy,
            rate=rate,
            consistency=consistency,
            emulator_cpu_s=None if emulator0 is None else (emulator1 or 0.0) - emulator0,
            ceiling_aborts=(proxy.aborted - aborted0) if proxy else None,
            ceiling_proxy_cpu_s=None if proxy0 is None else (proxy1 or 0.0) - proxy0,
        )

    def _emulator_cpu(self) -> float | None:
        return _cpu_seconds(self.emulator_pid) if self.emulator_pid else None

    @staticmethod
    def _proxy_cpu(proxy: WriteCeilingProxy | None) -> float | None:
        """CPU of the ceiling proxy's process: it competes with the clients on 2 cores."""
        return _cpu_seconds(proxy.pid) if proxy is not None and proxy.pid else None

    async def _check(
        self, batch_ids: list[str], succeeded: dict[str, dict[str, int]]
    ) -> dict[str, Any]:
        """Every batch of the step exact (``check_batch``), summed up."""
        async with self.client() as client:
            sem = asyncio.Semaphore(16)

            async def one(batch_id: str) -> dict[str, Any]:
                async with sem:
                    return await check_batch(
                        client, self.collection, batch_id, succeeded.get(batch_id, {})
                    )

            checks = await asyncio.gather(*(one(b) for b in batch_ids))
        failed = sorted({name for c in checks for name in c["failed_checks"]})
        return {
            "ok": all(c["ok"] for c in checks),
            "failed_checks": failed,
            "batches": len(checks),
            "inexact_batches": sum(not c["ok"] for c in checks),
            "recorded": sum(c["recorded"] for c in checks),
            "confirmed": sum(c["confirmed"] for c in checks),
        }


def groups(results: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The sweeps by cell, in run order: ``(cell key, its sweeps)``."""
    by: dict[str, list[dict[str, Any]]] = {}
    for sweep in results["sweeps"]:
        by.setdefault(sweep["cell"], []).append(sweep)
    yield from by.items()


def cell_title(sweep: dict[str, Any]) -> str:
    """A cell in words: shape, processes, ceiling."""
    shape = "one hot batch" if sweep["batches"] == 1 else f"{sweep['batches']} batches"
    if sweep["ceiling_writes_per_s"]:
        shape += f", ceiling {sweep['ceiling_writes_per_s']:g} writes/s per document"
    return f"{shape}, W = {sweep['processes']}"
