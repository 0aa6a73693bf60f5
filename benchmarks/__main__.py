"""``python -m benchmarks [--quick] [--rtt-ms MS] [--open-loop [--only ...]] [--name NAME]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from async_batchstate.testing import FirestoreEmulator

from . import FULL, QUICK, Bench, target_lines, wan, write
from ._delay import delay_proxy
from ._open import OpenBench
from ._open_report import write_open
from ._open_sweep import GROUPS, OPEN_FULL, OPEN_QUICK, open_wan
from ._strategies import OPEN_LOOP, STRATEGIES

PROJECT = "demo-bench"


def main(argv: list[str] | None = None) -> int:
    """Start an emulator, run every scenario, write the results, print the targets."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer points and completions")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="WAN profile: every client talks to the emulator through a delay proxy (in its "
        "own process) adding this round trip, half each way (default 0: loopback)",
    )
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+- on each round trip")
    parser.add_argument(
        "--name", help="results file name (default: full, quick, wan<rtt>, quick-wan<rtt>)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    loop = parser.add_argument_group("open loop (capacity at SLO)")
    loop.add_argument(
        "--open-loop",
        action="store_true",
        help="run the open-loop rate sweeps instead of the closed-loop scenarios",
    )
    loop.add_argument(
        "--only",
        type=_names(GROUPS),
        help=f"open-loop cells to run, comma-separated from {','.join(GROUPS)} (default: all)",
    )
    loop.add_argument(
        "--processes", type=_ints, help="open-loop W values, comma-separated (default 4,8)"
    )
    loop.add_argument("--step-s", type=float, help="seconds of arrivals per step (default 8)")
    loop.add_argument(
        "--start-rate", type=float, help="first offered rate of a sweep, messages/s (default 100)"
    )
    loop.add_argument("--max-steps", type=int, help="steps per sweep at most (default 6)")
    loop.add_argument(
        "--rates",
        type=_floats,
        help="fixed offered rates of every sweep, messages/s, comma-separated: each is run "
        "whatever the SLO says (instead of the search from --start-rate)",
    )
    loop.add_argument(
        "--ceilings",
        type=_floats,
        help="writes/s per document of the ceiling cells, comma-separated (default 20,100,400)",
    )
    loop.add_argument(
        "--ceiling-processes",
        type=_ints,
        help="W values of the ceiling cells, comma-separated (default 4): N coordinator "
        "processes on one hot document, the fleet-size model",
    )
    loop.add_argument(
        "--strategies",
        type=_names(tuple(STRATEGIES)),
        help=f"comma-separated strategy keys (default: {','.join(OPEN_LOOP)})",
    )
    args = parser.parse_args(argv)
    if args.rtt_ms < 0 or args.jitter_ms < 0:
        parser.error("--rtt-ms and --jitter-ms must be >= 0")
    tuning = (
        "only",
        "processes",
        "step_s",
        "start_rate",
        "max_steps",
        "strategies",
        "ceilings",
        "ceiling_processes",
        "rates",
    )
    if not args.open_loop and any(getattr(args, k) is not None for k in tuning):
        parser.error(f"{', '.join('--' + k.replace('_', '-') for k in tuning)} need --open-loop")
    for k in ("step_s", "start_rate", "max_steps"):
        if getattr(args, k) is not None and getattr(args, k) <= 0:
            parser.error(f"--{k.replace('_', '-')} must be > 0")
    cfg = QUICK if args.quick else FULL
    if args.rtt_ms:
        cfg = wan(cfg, args.rtt_ms)
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    ocfg = OPEN_QUICK if args.quick else OPEN_FULL
    if args.rtt_ms:
        ocfg = open_wan(ocfg, args.rtt_ms)
    overrides = {k: getattr(args, k) for k in ("name", *tuning) if k != "only"}
    overrides["groups"] = args.only
    ocfg = dataclasses.replace(ocfg, **{k: v for k, v in overrides.items() if v is not None})
    console = Console()
    with FirestoreEmulator() as emulator, contextlib.ExitStack() as stack:
        host, network = emulator.host, None
        if args.rtt_ms:
            proxy = stack.enter_context(delay_proxy(emulator.host, args.rtt_ms, args.jitter_ms))
            host, network = proxy.host, proxy.facts()
            console.print(f"delay proxy on {host}: {args.rtt_ms:g} ms round trip")
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        name = ocfg.name if args.open_loop else cfg.name
        console.print(f"emulator on {emulator.host}; run [bold]{name}[/]")
        columns = (
            TextColumn("{task.description:<42}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bench = (
                OpenBench(
                    cfg,
                    ocfg,
                    host,
                    PROJECT,
                    progress,
                    network=network,
                    emulator_pid=emulator.pid,
                )
                if args.open_loop
                else Bench(cfg, host, PROJECT, progress, network=network)
            )
            results: dict[str, Any] = asyncio.run(bench.run())
        if args.rtt_ms:
            results["network"]["proxy_cpu_s"] = round(proxy.cpu_seconds(), 1)
    writer = write_open if args.open_loop else write
    paths = writer(results, args.out, plots=not args.no_plots)
    console.print(f"run took {results['duration_s']:.0f} s; wrote:")
    for path in paths.values():
        console.print(f"  {path}")
    for line in [*results["warnings"], *target_lines(results)]:
        console.print(line, style="green" if line.startswith("PASS") else "yellow", markup=False)
    return 0


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = sorted(set(names) - set(allowed))
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return names

    return parse


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _floats(text, integers=True))


def _floats(text: str, *, integers: bool = False) -> tuple[float, ...]:
    try:
        values = tuple((int if integers else float)(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers like 4,8, got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
