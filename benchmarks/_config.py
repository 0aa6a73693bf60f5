"""A run's sizes (full, quick, tiny, WAN) and the facts of the machine it ran on."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any

from async_batchstate.testing import find_emulator_jar

from ._load import CANCEL_GRACE

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
