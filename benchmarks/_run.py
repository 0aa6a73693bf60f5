"""The scenarios, in order: warm-up, ceiling, overhead, contention sweep, processes, ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient
from rich.progress import Progress

from async_batchstate.testing import EmulatorInfo, aclose_client, find_emulator_jar, make_client

from ._load import (
    Advance,
    Load,
    Player,
    ceiling,
    check_batch,
    create_batch,
    drive,
    percentile,
    players,
)
from ._strategies import MULTIPROCESS, OVERHEAD, STRATEGIES, SWEEP

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Config:
    """Sizes of one run. ``sweep`` is ``(concurrency, completions)`` per point."""

    name: str
    overhead_ops: int  # per strategy, split over ``overhead_rounds`` interleaved rounds
    overhead_rounds: int
    sweep: tuple[tuple[int, int], ...]
    cell_budget: float  # seconds before a cell is cut short and reported as stalled
    processes: tuple[int, ...]
    process_ops: int  # per process
    process_concurrency: int  # callers per process
    process_budget: float
    ceiling_docs: int
    warmup_min_s: float  # the JVM keeps speeding up for a while (DESIGN.md section 4)
    warmup_max_s: float
    warmup_min_rounds: int


FULL = Config(
    name="full",
    overhead_ops=600,
    overhead_rounds=3,
    sweep=((1, 300), (10, 2000), (50, 3000), (200, 5000), (500, 6000)),
    cell_budget=60.0,
    processes=(1, 2, 4),
    process_ops=1500,
    process_concurrency=200,
    process_budget=90.0,
    ceiling_docs=6000,
    warmup_min_s=40.0,
    warmup_max_s=90.0,
    warmup_min_rounds=3,
)
QUICK = Config(
    name="quick",
    overhead_ops=90,
    overhead_rounds=3,
    sweep=((1, 50), (50, 500), (200, 1000), (500, 1500)),
    cell_budget=6.0,
    processes=(1, 2, 4),
    process_ops=300,
    process_concurrency=200,
    process_budget=15.0,
    ceiling_docs=1500,
    warmup_min_s=8.0,
    warmup_max_s=20.0,
    warmup_min_rounds=2,
)
TINY = Config(  # the smoke test: every scenario, a few completions each
    name="tiny",
    overhead_ops=6,
    overhead_rounds=2,
    sweep=((1, 4), (10, 20)),
    cell_budget=4.0,
    processes=(2,),
    process_ops=10,
    process_concurrency=5,
    process_budget=10.0,
    ceiling_docs=60,
    warmup_min_s=0.0,
    warmup_max_s=0.0,
    warmup_min_rounds=1,
)


def summarise(
    loads: list[Load],
    *,
    scenario: str,
    strategy: str,
    concurrency: int,
    ops: int,
    consistency: dict[str, Any],
    processes: int = 1,
    parallel: bool = True,
) -> dict[str, Any]:
    """One result cell from the loads of one or more processes (or sequential rounds)."""
    latencies = [x for load in loads for x in load.latencies]
    attempts_each = Counter(a for load in loads for a in load.attempts_each)
    succeeded = sum(len(load.succeeded) for load in loads)
    errors = sum((load.errors for load in loads), Counter[str]())
    aborts = sum((Counter(load.aborts) for load in loads), Counter[str]())
    if parallel:
        elapsed = max(x.started + x.elapsed for x in loads) - min(x.started for x in loads)
    else:
        elapsed = sum(load.elapsed for load in loads)
    attempts = sum(load.attempts for load in loads)
    commits = sum(load.commits for load in loads)
    failed = sum(errors.values())
    return {
        "scenario": scenario,
        "strategy": strategy,
        "label": STRATEGIES[strategy].label,
        "processes": processes,
        "concurrency": concurrency,
        "ops": ops,
        "succeeded": succeeded,
        "failed": failed,
        "unfinished": ops - succeeded - failed,
        "stalled": any(load.stalled for load in loads),
        "elapsed_s": elapsed,
        "completions_per_s": succeeded / elapsed if elapsed else 0.0,
        "fraction_of_ceiling": None,  # filled in once the run's ceiling is known
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=0.0) * 1e3,
        "attempts": attempts,
        "attempts_per_completion": attempts / max(1, succeeded + failed),
        "aborts": sum(aborts.values()),
        "aborts_by_cause": dict(aborts),
        "commits": commits,
        "commits_per_completion": commits / max(1, succeeded),
        "attempts_histogram": {str(k): v for k, v in sorted(attempts_each.items())},
        "errors": dict(errors),
        "error_examples": {k: v for load in loads for k, v in load.error_examples.items()},
        "consistency": consistency,
        "latencies_ms": [round(x * 1e3, 2) for x in latencies],
    }


# -- multi-process: each worker is a spawned process with its own client ---------------

_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


@dataclass(frozen=True)
class _Job:
    host: str
    project: str
    collection: str
    strategy: str
    batch_id: str
    prefix: str
    ops: int
    concurrency: int
    budget: float


def _worker(job: _Job) -> Load:
    _barrier.wait(timeout=120)  # all processes start together, one job each
    return asyncio.run(_worker_load(job))


async def _worker_load(job: _Job) -> Load:
    client = make_client(EmulatorInfo(job.host, job.project, None))
    try:
        work = players(job.ops, job.prefix)
        return await drive(
            client,
            job.collection,
            job.strategy,
            job.batch_id,
            work,
            concurrency=job.concurrency,
            budget=job.budget,
        )
    finally:
        await aclose_client(client)


# -- the run -------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """Where the numbers come from: cores, Python, emulator, client versions, load."""
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "google_cloud_firestore": version("google-cloud-firestore"),
        "grpcio": version("grpcio"),
        "async_batchstate": version("async-batchstate"),
    }
    with contextlib.suppress(Exception):
        jar = find_emulator_jar()
        facts["emulator_jar"] = str(jar)
        snapshot = jar.parents[2] / ".install" / "cloud-firestore-emulator.snapshot.json"
        component = json.loads(snapshot.read_text())["components"][0]
        facts["emulator_version"] = component["version"]["version_string"]
    with contextlib.suppress(Exception):
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        facts["java"] = java.stderr.splitlines()[0]
    return facts


class Bench:
    """One benchmark run against the emulator at ``host``."""

    def __init__(self, cfg: Config, host: str, project: str, progress: Progress) -> None:
        self.cfg = cfg
        self.emulator = EmulatorInfo(host, project, None)
        self.collection = f"bench_{uuid.uuid4().hex[:8]}"
        self.progress = progress
        self._overall = progress.add_task("benchmark", total=self._steps())
        self._current = progress.add_task("", total=None)

    def _steps(self) -> int:
        cfg = self.cfg
        return (
            3  # warm-up, two ceiling runs
            + len(OVERHEAD) * cfg.overhead_rounds
            + len(cfg.sweep) * len(SWEEP)
            + len(cfg.processes) * len(MULTIPROCESS)
        )

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncClient]:
        """A fresh client per cell, closed after it."""
        client = make_client(self.emulator)
        try:
            yield client
        finally:
            await aclose_client(client)

    def _step(self, description: str, total: int | None) -> Advance:
        self.progress.reset(self._current, total=total, description=description)
        return lambda n: self.progress.advance(self._current, n)

    def _done(self) -> None:
        self.progress.advance(self._overall)

    async def run(self) -> dict[str, Any]:
        """Every scenario; returns the raw results (the JSON document)."""
        started = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": self.cfg.name,
            "config": asdict(self.cfg),
            "machine": machine_facts(),
            "started_at": started.isoformat(),
            "collection": self.collection,
        }
        results["warmup"] = await self.warm_up()
        first = await self.ceiling("ceiling-start")
        results["overhead"] = await self.overhead()
        results["sweep"] = await self.sweep()
        results["multiprocess"] = await self.multiprocess()
        last = await self.ceiling("ceiling-end")
        best = max(first["docs_per_s"], last["docs_per_s"])
        results["ceiling"] = {"runs": [first, last], "docs_per_s": best}
        for cell in results["overhead"] + results["sweep"] + results["multiprocess"]:
            cell["fraction_of_ceiling"] = cell["completions_per_s"] / best
        results["machine"]["load_average_at_end"] = os.getloadavg()
        results["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        results["duration_s"] = time.perf_counter() - t0
        return results

    async def warm_up(self) -> dict[str, Any]:
        """Exercise every write path until the bulk rate stops climbing (the JVM warms up)."""
        rounds: list[float] = []
        t0 = time.perf_counter()
        advance = self._step("warm-up", None)
        cfg = self.cfg

        def warming() -> bool:
            spent = time.perf_counter() - t0
            if len(rounds) < cfg.warmup_min_rounds or spent < cfg.warmup_min_s:
                return True
            return spent < cfg.warmup_max_s and abs(rounds[-1] - rounds[-2]) > 0.1 * rounds[-1]

        while warming():
            n = len(rounds)
            async with self.client() as client:
                docs = max(250, cfg.ceiling_docs // 2)
                cell = await ceiling(client, self.collection, f"warm{n}-bulk", docs)
                rounds.append(cell["docs_per_s"])
                for strategy, ops, concurrency in (("manager", 300, 100), ("blind_txn", 100, 10)):
                    batch_id = f"warm{n}-{strategy}"
                    ops = min(ops, cfg.ceiling_docs)
                    await create_batch(client, self.collection, batch_id, ops)
                    await drive(
                        client,
                        self.collection,
                        strategy,
                        batch_id,
                        players(ops),
                        concurrency=concurrency,
                        budget=self.cfg.cell_budget,
                        advance=advance,
                    )
        self._done()
        return {"bulk_docs_per_s": rounds, "seconds": time.perf_counter() - t0}

    async def ceiling(self, batch_id: str) -> dict[str, Any]:
        """The raw-write ceiling, checked like every cell."""
        advance = self._step(f"ceiling ({batch_id})", self.cfg.ceiling_docs)
        async with self.client() as client:
            cell = await ceiling(
                client, self.collection, batch_id, self.cfg.ceiling_docs, advance=advance
            )
        self._done()
        return cell

    async def _cell(
        self,
        scenario: str,
        strategy: str,
        concurrency: int,
        batch_id: str,
        work: list[Player],
        warm: list[Player] | None = None,
    ) -> tuple[Load, dict[str, Any]]:
        """Drive ``work`` into a new batch (after unmeasured ``warm`` completions); check it."""
        warm = warm or []
        advance = self._step(f"{scenario}: {strategy} x{concurrency}", len(warm) + len(work))
        async with self.client() as client:
            await create_batch(client, self.collection, batch_id, len(warm) + len(work))
            loads = [
                await drive(
                    client,
                    self.collection,
                    strategy,
                    batch_id,
                    part,
                    concurrency=concurrency,
                    budget=self.cfg.cell_budget,
                    advance=advance,
                )
                for part in (warm, work)
                if part
            ]
            succeeded = {p: n for load in loads for p, n in load.succeeded.items()}
            consistency = await check_batch(client, self.collection, batch_id, succeeded)
        self._done()
        return loads[-1], consistency

    async def overhead(self) -> list[dict[str, Any]]:
        """Sequential cost per completion; strategies interleaved in rounds against drift."""
        cfg = self.cfg
        per_round = max(1, cfg.overhead_ops // cfg.overhead_rounds)
        loads: dict[str, list[Load]] = {s: [] for s in OVERHEAD}
        consistent: dict[str, bool] = {s: True for s in OVERHEAD}
        for r in range(cfg.overhead_rounds):
            for strategy in OVERHEAD:
                # The first completions of a round warm this code path up; not measured.
                load, consistency = await self._cell(
                    "overhead",
                    strategy,
                    1,
                    f"overhead-{strategy}-{r}",
                    players(per_round, prefix=f"r{r}-"),
                    warm=players(min(5, per_round), prefix=f"r{r}-warm-"),
                )
                loads[strategy].append(load)
                consistent[strategy] &= consistency["ok"]
        return [
            summarise(
                loads[s],
                scenario="overhead",
                strategy=s,
                concurrency=1,
                ops=per_round * cfg.overhead_rounds,
                consistency={"ok": consistent[s], "failed_checks": []},
                parallel=False,
            )
            for s in OVERHEAD
        ]

    async def sweep(self) -> list[dict[str, Any]]:
        """Every strategy at every concurrency, all completions into ONE batch per cell."""
        cells = []
        for concurrency, ops in self.cfg.sweep:
            for strategy in SWEEP:
                load, consistency = await self._cell(
                    "sweep", strategy, concurrency, f"sweep-{strategy}-c{concurrency}", players(ops)
                )
                cells.append(
                    summarise(
                        [load],
                        scenario="sweep",
                        strategy=strategy,
                        concurrency=concurrency,
                        ops=ops,
                        consistency=consistency,
                    )
                )
        return cells

    async def multiprocess(self) -> list[dict[str, Any]]:
        """N spawned processes, each with its own client, into one batch."""
        cfg = self.cfg
        cells = []
        ctx = multiprocessing.get_context("spawn")
        for n in cfg.processes:
            barrier = ctx.Barrier(n)
            with ctx.Pool(n, initializer=_init_worker, initargs=(barrier,)) as pool:
                for strategy in MULTIPROCESS:
                    self._step(f"{n} processes: {strategy}", None)
                    batch_id = f"procs-{strategy}-n{n}"
                    async with self.client() as client:
                        await create_batch(client, self.collection, batch_id, n * cfg.process_ops)
                    jobs = [
                        _Job(
                            self.emulator.host,
                            self.emulator.project,
                            self.collection,
                            strategy,
                            batch_id,
                            f"w{i}-",
                            cfg.process_ops,
                            cfg.process_concurrency,
                            cfg.process_budget,
                        )
                        for i in range(n)
                    ]
                    loads = await asyncio.to_thread(pool.map, _worker, jobs, 1)
                    succeeded = {p: c for load in loads for p, c in load.succeeded.items()}
                    async with self.client() as client:
                        consistency = await check_batch(
                            client, self.collection, batch_id, succeeded
                        )
                    cells.append(
                        summarise(
                            loads,
                            scenario="multiprocess",
                            strategy=strategy,
                            concurrency=cfg.process_concurrency,
                            ops=n * cfg.process_ops,
                            consistency=consistency,
                            processes=n,
                        )
                    )
                    self._done()
        return cells
