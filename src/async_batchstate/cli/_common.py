"""What every ``async-batchstate`` subcommand shares: argument types, one-line errors, exit codes.

Exit status of every subcommand: 0 success; 1 the run found or hit problems
(mismatches, refusals, failed batches, Firestore errors); 2 bad input or
configuration (an argument, the environment's flags, no emulator nor project).
Errors are one line on stderr, ``async-batchstate: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .._errors import BatchStateError, ConfigurationError, InvalidInputError
from .._store.schema import Layout, validate_id

PROG = "async-batchstate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_MAX_MESSAGE = 1000


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """``text`` with each run of whitespace (newlines too) made one space, cut at ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def print_error(message: str, *, label: str = "error") -> None:
    """Write ``async-batchstate: <label>: <message>`` to stderr, on one line."""
    print(f"{PROG}: {label}: {one_line(message)}", file=sys.stderr, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are one line and exit status 2.

    Subparsers made from it are of this class too, so every subcommand behaves alike.
    """

    def error(self, message: str) -> NoReturn:
        """Report a bad command line on one line (no usage block) and exit with status 2."""
        print_error(f"{message} (see '{self.prog} --help')")
        self.exit(EXIT_USAGE)


def _argument_type(name: str, check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse ``type=`` that returns the text when ``check`` accepts it."""

    def parse(text: str) -> str:
        try:
            check(text)
        except BatchStateError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = name
    return parse


batch_id_argument = _argument_type("batch id", lambda text: validate_id("batch id", text))
"""``type=`` for a batch id: one Firestore can store as a document id."""

collection_argument = _argument_type("collection", Layout)
"""``type=`` for a batch collection path (``a`` or ``a/doc/b``), each segment a valid id."""

subcollection_argument = _argument_type(
    "subcollection", lambda text: validate_id("completions subcollection", text)
)
"""``type=`` for a subcollection name (a valid id)."""


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--collection``, ``--project`` and ``--mode``: where batches live, how writers run."""
    from .._config import MigrationMode

    parser.add_argument(
        "--collection",
        type=collection_argument,
        default="prediction_batches",
        help="batch collection",
    )
    parser.add_argument("--project", default=None, help="GCP project (else GOOGLE_CLOUD_PROJECT)")
    parser.add_argument(
        "--mode",
        choices=[mode.value for mode in MigrationMode],
        default=None,
        help="the mode the writers run in (default: from the environment flags)",
    )


def positive_int(text: str) -> int:
    """``type=`` for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def share(text: str) -> float:
    """``type=`` for a fraction in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def checkpoint_argument(text: str) -> str:
    """``type=`` for ``--checkpoint``: ``firestore``, ``none``, or a file in an existing folder."""
    if text in ("firestore", "none"):
        return text
    if not text:
        raise argparse.ArgumentTypeError("must be 'firestore', 'none' or a file path, got ''")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
    return text


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _is_usage(exc: BaseException) -> bool:
    return isinstance(exc, ConfigurationError | InvalidInputError)


def _is_reportable(exc: BaseException) -> bool:
    from google.api_core.exceptions import GoogleAPIError

    return isinstance(exc, BatchStateError | GoogleAPIError | OSError)


def report(exc: Exception) -> int:
    """Print ``exc`` as one line and return its exit status; re-raise what is not ours to report.

    Bad input or configuration (``ConfigurationError``, ``InvalidInputError``)
    is status 2. Other library errors, Firestore (google-api-core) errors and
    ``OSError`` are status 1. An exception group counts as its leaves. Anything
    else is a bug and keeps its traceback.
    """
    leaves = _leaves(exc)
    if not all(_is_reportable(leaf) for leaf in leaves):
        raise exc
    first = leaves[0]
    message = str(first) or type(first).__name__
    if not isinstance(first, BatchStateError):
        message = f"{type(first).__name__}: {message}"
    if len(leaves) > 1:
        message += f" (and {len(leaves) - 1} more error(s))"
    print_error(message)
    return EXIT_USAGE if all(_is_usage(leaf) for leaf in leaves) else EXIT_FAILED
