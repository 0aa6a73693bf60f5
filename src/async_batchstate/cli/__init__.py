"""The ``async-batchstate`` command: ``demo``, ``migrate`` and ``batch``.

Exit status: 0 success; 1 the run found or hit problems (a batch that does not
exist: ``async-batchstate: not found: ...``); 2 bad input or configuration,
refused while parsing, before anything is read or written. Errors are one line on
stderr (``async-batchstate: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._common import PROG, ArgumentParser, one_line_logs, report

_CLI_EXTRA_MODULES = frozenset({"rich"})
"""Top-level modules of the ``[cli]`` extra; the core install does not have them."""
_CLI_EXTRA_MISSING = (
    "the async-batchstate command needs the [cli] extra: pip install 'async-batchstate[cli]'"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = ArgumentParser(
        prog=PROG,
        description="Exactly-once batch completion tracking on Firestore.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from ._batch import register as register_batch
    from ._demo import register as register_demo
    from ._migrate import register as register_migrate

    register_demo(sub)
    register_migrate(sub)
    register_batch(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 without the ``[cli]`` extra).

    A bad command line exits (``SystemExit``) with status 2 after one line on stderr.
    """
    try:
        parser = build_parser()
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_EXTRA_MODULES:
            raise
        print(_CLI_EXTRA_MISSING, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    with one_line_logs():
        try:
            status: int = args.handler(args)
        except Exception as exc:  # reported on one line, or re-raised if it is a bug
            return report(exc)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
