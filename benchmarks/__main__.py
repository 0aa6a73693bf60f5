"""``python -m benchmarks [--quick] [--rtt-ms MS] [--name NAME] [--out DIR]``."""

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
    args = parser.parse_args(argv)
    if args.rtt_ms < 0 or args.jitter_ms < 0:
        parser.error("--rtt-ms and --jitter-ms must be >= 0")
    cfg = QUICK if args.quick else FULL
    if args.rtt_ms:
        cfg = wan(cfg, args.rtt_ms)
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    console = Console()
    with FirestoreEmulator() as emulator, contextlib.ExitStack() as stack:
        host, network = emulator.host, None
        if args.rtt_ms:
            proxy = stack.enter_context(delay_proxy(emulator.host, args.rtt_ms, args.jitter_ms))
            host, network = proxy.host, proxy.facts()
            console.print(f"delay proxy on {host}: {args.rtt_ms:g} ms round trip")
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        console.print(f"emulator on {emulator.host}; run [bold]{cfg.name}[/]")
        columns = (
            TextColumn("{task.description:<42}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bench = Bench(cfg, host, PROJECT, progress, network=network)
            results: dict[str, Any] = asyncio.run(bench.run())
        if args.rtt_ms:
            results["network"]["proxy_cpu_s"] = round(proxy.cpu_seconds(), 1)
    paths = write(results, args.out, plots=not args.no_plots)
    console.print(f"run took {results['duration_s']:.0f} s; wrote:")
    for path in paths.values():
        console.print(f"  {path}")
    for line in [*results["warnings"], *target_lines(results)]:
        console.print(line, style="green" if line.startswith("PASS") else "yellow", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
