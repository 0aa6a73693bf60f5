"""``python -m benchmarks [--quick] [--name NAME] [--out DIR]``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from async_batchstate.testing import FirestoreEmulator

from . import FULL, QUICK, Bench, target_lines, write

PROJECT = "demo-bench"


def main(argv: list[str] | None = None) -> int:
    """Start an emulator, run every scenario, write the results, print the targets."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer points and completions")
    parser.add_argument("--name", help="results file name (default: full or quick)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    console = Console()
    with FirestoreEmulator() as emulator:
        os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
        console.print(f"emulator on {emulator.host}; run [bold]{cfg.name}[/]")
        columns = (
            TextColumn("{task.description:<42}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            results = asyncio.run(Bench(cfg, emulator.host, PROJECT, progress).run())
    paths = write(results, args.out, plots=not args.no_plots)
    console.print(f"run took {results['duration_s']:.0f} s; wrote:")
    for path in paths.values():
        console.print(f"  {path}")
    for line in [*results["warnings"], *target_lines(results)]:
        console.print(line, style="green" if line.startswith("PASS") else "yellow", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
