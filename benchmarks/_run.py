"""The scenarios, in order: warm-up, ceiling, overhead, sweep, processes, redelivery, ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient
from rich.progress import Progress

from async_batchstate.testing import EmulatorInfo, aclose_client, make_client

from ._config import SCHEMA_VERSION, Config, machine_facts
from ._load import (
    Advance,
    Load,
    Player,
    ceiling,
    check_batch,
    create_batch,
    deliveries,
    drive,
    players,
    summarise,
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
from ._worker import Job, init_worker, worker


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
            Job(
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
        loads = await asyncio.to_thread(pool.map, worker, jobs, 1)
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
        pool = ctx.Pool(n, initializer=init_worker, initargs=(ctx.Barrier(n),))
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
        the first burst. No background validation and no finalization (the batch
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
