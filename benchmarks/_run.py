"""The scenarios, in order: warm-up, ceiling, overhead, sweep, processes, redelivery, ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient
from rich.progress import Progress

from async_batchstate.testing import EmulatorInfo, aclose_client, find_emulator_jar, make_client

from ._load import (
    CANCEL_GRACE,
    Advance,
    Load,
    Player,
    ceiling,
    check_batch,
    create_batch,
    deliveries,
    drive,
    percentile,
    players,
)
from ._strategies import (
    MULTIPROCESS,
    OVERHEAD,
    REDELIVERY,
    RPC_COST,
    STRATEGIES,
    SWEEP,
    has_write_path,
)

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Config:
    """Sizes of one run. ``sweep`` is ``(concurrency, completions)`` per point.

    ``redelivery`` is ``(processes, callers per process, players)`` per cell; each
    runs without redeliveries and with ``redeliver`` of the messages delivered twice.
    """

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
    redelivery: tuple[tuple[int, int, int], ...] = ()
    redeliver: float = 0.1
    rpc_burst: int = 200  # concurrent callers of the RPC-cost cells
    cancel_grace: float = CANCEL_GRACE  # seconds a cut cell's cancelled callers get to end


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
    redelivery=((4, 100, 2000), (8, 10, 1500)),
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
    redelivery=((4, 100, 600), (8, 10, 400)),
)
TINY = Config(  # the smoke test: every scenario, cell and code path, as few completions as can
    name="tiny",
    overhead_ops=2,  # one measured completion per round (after one unmeasured), two rounds
    overhead_rounds=2,
    sweep=((1, 2), (4, 8)),  # one caller, and contention
    # (a) read-modify-write stalls under any contention on the emulator (lock waits): its
    # contended cell is cut at the budget and reported stalled, its callers cancelled and
    # abandoned after the grace. Those two are its cost.
    cell_budget=2.0,
    processes=(2,),
    process_ops=3,
    process_concurrency=2,
    process_budget=10.0,
    ceiling_docs=20,
    warmup_min_s=0.0,
    warmup_max_s=0.0,
    warmup_min_rounds=1,
    redelivery=((2, 2, 8),),
    redeliver=0.25,  # 2 of the 8 players delivered twice
    rpc_burst=4,  # the mixed burst: 2 redelivered players and 2 new ones
    cancel_grace=0.5,
)


def wan(cfg: Config, rtt_ms: float) -> Config:
    """``cfg`` for the WAN profile: every RPC costs ``rtt_ms`` more, so fewer completions.

    The sequential and single-caller cells pay a round trip per RPC, and the plain
    strategies that stall stall longer; sizes shrink so the run stays bounded.
    """
    quick = cfg.name == QUICK.name
    return replace(
        cfg,
        name=f"{'quick-' if quick else ''}wan{rtt_ms:g}",
        overhead_ops=cfg.overhead_ops // 2,
        sweep=tuple((c, n if c > 1 else n * 2 // 3) for c, n in cfg.sweep),
        cell_budget=cfg.cell_budget * (1.5 if quick else 0.75),
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
    redeliver: float = 0.0,
) -> dict[str, Any]:
    """One result cell from the loads of one or more processes (or sequential rounds).

    ``ops`` counts messages (a redelivery is a second message of the same player);
    ``succeeded`` counts calls that returned normally, duplicates included.
    """
    latencies = [x for load in loads for x in load.latencies]
    attempts_each = Counter(a for load in loads for a in load.attempts_each)
    succeeded = len(latencies)
    errors = sum((load.errors for load in loads), Counter[str]())
    aborts = sum((Counter(load.aborts) for load in loads), Counter[str]())
    rpcs = sum((Counter(load.rpcs) for load in loads), Counter[str]())
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
        "redeliver": redeliver,
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
        "duplicates": sum(load.duplicates for load in loads),
        "rpcs": dict(sorted(rpcs.items())),
        "rpcs_per_completion": sum(rpcs.values()) / max(1, succeeded),
        "commit_rpcs_per_commit": rpcs["Commit"] / commits if commits else 0.0,
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
    work: tuple[Player, ...]
    concurrency: int
    budget: float
    grace: float


def _worker(job: _Job) -> Load:
    return asyncio.run(_worker_load(job))


@contextlib.asynccontextmanager
async def worker_client(
    host: str, project: str, collection: str, document: str
) -> AsyncIterator[AsyncClient]:
    """A worker process's client, connected before the clock starts as a running instance
    is (one read of ``document`` opens the channel: TCP, HTTP/2, several round trips
    through the delay proxy), yielded once every process is ready: they start together."""
    client = make_client(EmulatorInfo(host, project, None))
    try:
        await client.collection(collection).document(document).get()
        await asyncio.to_thread(_barrier.wait, 120)
        yield client
    finally:
        await aclose_client(client)


async def _worker_load(job: _Job) -> Load:
    async with worker_client(job.host, job.project, job.collection, job.batch_id) as client:
        return await drive(
            client,
            job.collection,
            job.strategy,
            job.batch_id,
            job.work,
            concurrency=job.concurrency,
            budget=job.budget,
            grace=job.grace,
        )


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
    """One benchmark run against the emulator at ``host``.

    ``network`` describes what lies between the clients and the emulator (for the
    WAN profile: the delay proxy that ``host`` points at); it goes into the results.
    """

    def __init__(
        self,
        cfg: Config,
        host: str,
        project: str,
        progress: Progress,
        *,
        network: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.network = network or {"rtt_ms": 0.0, "profile": "local"}
        self.emulator = EmulatorInfo(host, project, None)
        self.collection = f"bench_{uuid.uuid4().hex[:8]}"
        self.progress = progress
        self._workers: tuple[int, Any] | None = None  # the last process pool: (size, pool)
        self._overall = progress.add_task("benchmark", total=self._steps())
        self._current = progress.add_task("", total=None)

    def _steps(self) -> int:
        cfg = self.cfg
        return (
            3  # warm-up, two ceiling runs
            + len(OVERHEAD) * cfg.overhead_rounds
            + len(cfg.sweep) * len(SWEEP)
            + len(cfg.processes) * len(MULTIPROCESS)
            + len(cfg.redelivery) * 2 * len(REDELIVERY)
            + len(RPC_COST)
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
        console = self.progress.console
        if not console.is_terminal and not self.progress.disable:  # a log file: one line a step
            console.print(f"{time.strftime('%H:%M:%S')} {description}", markup=False)
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
            "network": self.network,
            "write_path_option": has_write_path(),
            "started_at": started.isoformat(),
            "collection": self.collection,
        }
        results["warmup"] = await self.warm_up()
        first = await self.ceiling("ceiling-start")
        results["overhead"] = await self.overhead()
        results["sweep"] = await self.sweep()
        try:
            results["multiprocess"] = await self.multiprocess()
            results["redelivery"] = await self.redelivery()
        finally:
            self._close_pool()
        results["rpc_cost"] = await self.rpc_cost()
        last = await self.ceiling("ceiling-end")
        best = max(first["docs_per_s"], last["docs_per_s"])
        results["ceiling"] = {"runs": [first, last], "docs_per_s": best}
        for scenario in ("overhead", "sweep", "multiprocess", "redelivery", "rpc_cost"):
            for cell in results[scenario]:
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
                docs = max(min(250, cfg.ceiling_docs), cfg.ceiling_docs // 2)
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
                        grace=self.cfg.cancel_grace,
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
                    grace=self.cfg.cancel_grace,
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

    async def _processes(
        self,
        pool: Any,
        scenario: str,
        strategy: str,
        batch_id: str,
        parts: list[list[Player]],
        *,
        concurrency: int,
        redeliver: float = 0.0,
    ) -> dict[str, Any]:
        """One job per process of ``pool``, each with its own client, into one batch."""
        n = len(parts)
        expected = len({p for part in parts for p, _ in part})
        async with self.client() as client:
            await create_batch(client, self.collection, batch_id, expected)
        jobs = [
            _Job(
                self.emulator.host,
                self.emulator.project,
                self.collection,
                strategy,
                batch_id,
                tuple(part),
                concurrency,
                self.cfg.process_budget,
                self.cfg.cancel_grace,
            )
            for part in parts
        ]
        loads = await asyncio.to_thread(pool.map, _worker, jobs, 1)
        succeeded = {p: c for load in loads for p, c in load.succeeded.items()}
        async with self.client() as client:
            consistency = await check_batch(client, self.collection, batch_id, succeeded)
        self._done()
        return summarise(
            loads,
            scenario=scenario,
            strategy=strategy,
            concurrency=concurrency,
            ops=sum(map(len, parts)),
            consistency=consistency,
            processes=n,
            redeliver=redeliver,
        )

    def _pool(self, n: int) -> Any:
        """``n`` spawned worker processes that start each job together.

        The last pool is kept for the next scenario that wants as many processes (they
        need not start again: each job opens its own client anyway); it is terminated
        when one wants another number, and at the end of the run.
        """
        if self._workers is not None and self._workers[0] == n:
            return self._workers[1]
        self._close_pool()
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(n, initializer=_init_worker, initargs=(ctx.Barrier(n),))
        self._workers = (n, pool)
        return pool

    def _close_pool(self) -> None:
        if self._workers is not None:
            self._workers[1].terminate()
            self._workers[1].join()
            self._workers = None

    async def multiprocess(self) -> list[dict[str, Any]]:
        """N spawned processes, each with its own client and players, into one batch."""
        cfg = self.cfg
        cells = []
        for n in cfg.processes:
            parts = [players(cfg.process_ops, f"w{i}-") for i in range(n)]
            pool = self._pool(n)
            for strategy in MULTIPROCESS:
                self._step(f"{n} processes: {strategy}", None)
                cell = await self._processes(
                    pool,
                    "multiprocess",
                    strategy,
                    f"procs-{strategy}-n{n}",
                    parts,
                    concurrency=cfg.process_concurrency,
                )
                cells.append(cell)
        return cells

    async def redelivery(self) -> list[dict[str, Any]]:
        """Pub/Sub's shape: a share of messages delivered again, to a random process.

        Each cell runs without and with redeliveries, every strategy on the same
        messages. The plain blind transaction counts a redelivered completion twice
        (its consistency check fails: that is the finding); the manager must be exact.
        """
        cfg = self.cfg
        cells = []
        for n, concurrency, total in cfg.redelivery:
            work = players(total, f"n{n}c{concurrency}-")
            pool = self._pool(n)
            for redeliver in (0.0, cfg.redeliver):
                parts = deliveries(work, n, redeliver, window=n * concurrency)
                for strategy in REDELIVERY:
                    tag = f"{n}x{concurrency}, {redeliver:.0%} redelivered"
                    self._step(f"{tag}: {strategy}", None)
                    cell = await self._processes(
                        pool,
                        "redelivery",
                        strategy,
                        f"redeliver-{strategy}-n{n}c{concurrency}-r{round(redeliver * 100)}",
                        parts,
                        concurrency=concurrency,
                        redeliver=redeliver,
                    )
                    cells.append(cell)
        return cells

    async def rpc_cost(self) -> list[dict[str, Any]]:
        """RPCs per group, in isolation: a burst of fresh completions, then a mixed burst.

        One recorder per strategy records one completion first (unmeasured: the
        manager reads a batch's settings once), then ``rpc_burst`` callers at once
        record fresh players, then as many again, half of them redelivering players of
        the first burst. No background validation and no finalisation (the batch
        expects more), so every RPC counted is the group writes' own.
        """
        n = self.cfg.rpc_burst
        fresh = players(n, "fresh-")
        again = fresh[: n // 2] + players(n - n // 2, "new-")
        random.Random(2).shuffle(again)
        phases = (("warm-up", players(1, "warm-")), ("fresh", fresh), ("half redelivered", again))
        cells = []
        for strategy in RPC_COST:
            batch_id = f"rpcs-{strategy}"
            advance = self._step(f"RPC cost: {strategy}", sum(len(w) for _, w in phases))
            succeeded: dict[str, int] = {}
            async with self.client() as client:
                await create_batch(client, self.collection, batch_id, 10 * n)  # never final
                recorder = STRATEGIES[strategy].open(client, self.collection)
                try:
                    for phase, work in phases:
                        load = await drive(
                            client,
                            self.collection,
                            strategy,
                            batch_id,
                            work,
                            concurrency=len(work),
                            budget=self.cfg.cell_budget,
                            grace=self.cfg.cancel_grace,
                            advance=advance,
                            recorder=recorder,
                        )
                        succeeded.update(load.succeeded)
                        if phase == "warm-up":
                            continue
                        consistency = await check_batch(
                            client, self.collection, batch_id, succeeded
                        )
                        cell = summarise(
                            [load],
                            scenario="rpc_cost",
                            strategy=strategy,
                            concurrency=n,
                            ops=n,
                            consistency=consistency,
                            redeliver=0.0 if phase == "fresh" else 0.5,
                        )
                        cells.append({**cell, "phase": phase})
                finally:
                    await recorder.aclose()
            self._done()
        return cells
