"""The ``async-batchstate`` command: ``demo``, ``migrate`` and ``batch``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="async-batchstate",
        description="Exactly-once batch completion tracking on Firestore.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from ._demo import register as register_demo

    register_demo(sub)
    from ._batch_cli import register as register_batch

    register_batch(sub)
    try:
        from ._migrate_cli import register as register_migrate
    except ImportError:  # pragma: no cover - migration CLI not built yet
        pass
    else:
        register_migrate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
