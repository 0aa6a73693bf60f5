"""``async-batchstate demo``: a simulated coordinator run on the local emulator."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = sub.add_parser("demo", help="simulate a coordinator run on the local emulator")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    raise NotImplementedError("demo: work in progress")
