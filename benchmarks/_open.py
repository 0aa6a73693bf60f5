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
import os
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from rich.progress import Progress

from async_batchstate._store.new_batch import LegacyLimits
from async_batchstate.testing import WriteCeilingProxy

from ._config import SCHEMA_VERSION, Config, machine_facts
from ._delay import _cpu_seconds
from ._load import check_batch, create_batch
from ._open_sweep import (
    BATCHES,
    CEILING,
    FIRST,
    HOT,
    OpenConfig,
    capacity,
    next_rate,
    schedule,
    step_summary,
)
from ._open_worker import OpenJob, OpenLoad, open_worker
from ._run import Bench
from ._strategies import STRATEGIES, has_write_path


@dataclass(frozen=True)
class _Cell:
    group: str  # HOT, BATCHES, FIRST or CEILING
    processes: int
    ceiling: float  # writes/s per document; 0: none

    @property
    def key(self) -> str:
        if self.group == CEILING:
            return f"ceiling{self.ceiling:g}-w{self.processes}"
        return f"{self.group}-w{self.processes}"


BATCH_SLICE = 1_000
"""Expected completions added to each of the 200 batches, so they stay open (a slice)."""


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
            for group in (HOT, BATCHES, FIRST)
            if group in o.groups
        ]
        if CEILING in o.groups:
            cells += [_Cell(CEILING, n, c) for n in o.ceiling_processes for c in o.ceilings]
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
        """Raise the offered rate until a step misses the SLO (see ``next_rate``), or run
        each of ``rates`` when given."""
        o = self.open_cfg
        start = o.start_rate if not cell.ceiling else max(1.0, min(o.start_rate, cell.ceiling / 2))
        steps: list[dict[str, Any]] = []
        rate: float | None = start
        # One batch gets a step's every first delivery (about rate / (1 + redeliver) per
        # second): past the legacy array's limit DUAL_WRITE refuses to create it. The
        # sweep stops before (its capacity stays a lower bound, "not reached").
        one_batch = cell.group not in (BATCHES, FIRST)
        most = LegacyLimits().players * (1 + o.redeliver) / o.step_s * 0.95
        fixed = list(o.rates)
        if fixed:
            rate = fixed.pop(0)
        while rate is not None and not (one_batch and rate > most):
            steps.append(await self.step(cell, strategy, rate, where))
            if o.rates:  # a grid: every rate, whatever the SLO says
                rate = fixed.pop(0) if fixed else None
            else:
                rate = next_rate([(s["offered_per_s"], s["ok"]) for s in steps], o)
        steps.sort(key=lambda s: s["offered_per_s"])
        self._done()
        return {
            "cell": cell.key,
            "group": cell.group,
            "processes": cell.processes,
            "ceiling_writes_per_s": cell.ceiling,
            "batches": o.batches if cell.group in (BATCHES, FIRST) else 1,
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
        many = cell.group in (BATCHES, FIRST)
        ids = [f"ol-{tag}-b{j}" for j in range(o.batches if many else 1)]
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

            # 200 concurrent batches are a slice of long batches (hundreds of players
            # each, open for minutes): they stay open through the step, so what is
            # measured is the stream of completions, not 200 batches born and finished
            # within 8 s with 4 players each (whose per-batch costs, a settings read
            # per process, the flip and its final check, would dominate). The hot
            # batch finishes at the end of its step: finalization is measured there.
            # For the same reason each process has read the slice's batches' settings
            # before the step (unmeasured): a long batch's first message in a process
            # is long past; here it would be every process's first message of 200
            # fresh batches, about one settings read per message at 100/s.
            # The FIRST cell measures exactly those first messages: fresh batches, no
            # settings read beforehand.
            await asyncio.gather(*(create(b, n + BATCH_SLICE * many) for b, n in expected.items()))
        jobs = [
            OpenJob(
                host,
                self.emulator.project,
                self.collection,
                strategy,
                tuple(part),
                o.drain_s,
                o.cancel_grace,
                warm=cell.group == BATCHES,
                ceiling=cell.ceiling,
            )
            for part in parts
        ]
        pool = self._pool(cell.processes)
        emulator0, proxy0 = self._emulator_cpu(), self._proxy_cpu(proxy)
        aborted0 = proxy.aborted if proxy else 0
        loads: list[OpenLoad] = await asyncio.to_thread(pool.map, open_worker, jobs, 1)
        emulator1, proxy1 = self._emulator_cpu(), self._proxy_cpu(proxy)
        succeeded: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for load in loads:
            for batch_id, done in load.succeeded.items():
                succeeded[batch_id].update(done)
        consistency = await self._check(list(expected), succeeded)
        # A fresh database for the next step: the emulator answers every query (a
        # listing, an aggregation) by scanning ALL its documents, so a sweep's earlier
        # steps would slow every later step's queries (production Firestore does not).
        reset = getattr(self.emulator, "reset", None)
        if reset is not None:
            await asyncio.to_thread(reset, self.emulator.project)
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
