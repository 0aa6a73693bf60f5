"""The ``async-batchstate`` command: ``demo`` and ``migrate``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_CLI_EXTRA_MODULES = frozenset({"rich"})
"""Top-level modules of the ``[cli]`` extra; the core install does not have them."""
_CLI_EXTRA_MISSING = (
    "the async-batchstate command needs the [cli] extra: pip install 'async-batchstate[cli]'"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="async-batchstate",
        description="Exactly-once batch completion tracking on Firestore.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from ._demo import register as register_demo
    from ._migrate_cli import register as register_migrate

    register_demo(sub)
    register_migrate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 without the ``[cli]`` extra)."""
    try:
        parser = build_parser()
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_EXTRA_MODULES:
            raise
        print(_CLI_EXTRA_MISSING, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
