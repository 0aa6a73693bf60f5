"""The ``async-batchstate`` command: ``demo``, ``migrate`` and ``batch``.

Exit status: 0 success; 1 the run found or hit problems; 2 bad input or
configuration. Errors are one line on stderr (``async-batchstate: error: ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli_common import PROG, ArgumentParser, report


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = ArgumentParser(
        prog=PROG,
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
    """Run the command line; returns the exit status.

    A bad command line exits (``SystemExit``) with status 2 after one line on stderr.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except Exception as exc:  # reported on one line, or re-raised if it is a bug
        return report(exc)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
