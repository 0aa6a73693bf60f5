"""What every ``async-batchstate`` subcommand shares: argument types, the run, one-line errors.

Exit status of every subcommand: 0 success; 1 the run found or hit problems
(mismatches, refusals, failed batches, a batch that does not exist, Firestore
errors); 2 bad input or configuration (an argument, the environment's flags, no
emulator nor project). Errors are one line on stderr, ``async-batchstate:
<label>: ...``, never a traceback: :func:`report` is the one place that turns a
failure into that line. Every argument is checked while the command line is
parsed, before anything is read or written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import BatchNotFoundError, BatchStateError, ConfigurationError, InvalidInputError, Layout
from .._store.ids import validate_id

if TYPE_CHECKING:
    from google.cloud.firestore_v1.async_client import AsyncClient
    from rich.table import Table

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


# -- argument types: each refuses bad text with a one-line reason ---------------------


def _argument_type(name: str, check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse ``type=`` that returns the text when ``check`` accepts it.

    ``check`` raises ``BatchStateError`` or ``argparse.ArgumentTypeError``; text
    that is not valid UTF-8 (a lone surrogate: a byte the shell's encoding could
    not decode) or holds control characters is refused first (they could not be
    stored, or would garble the terminal).
    """

    def parse(text: str) -> str:
        try:
            plain_text(text)
            check(text)
        except BatchStateError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = name
    return parse


def plain_text(text: str) -> str:
    """``text`` if it is valid UTF-8 without control characters.

    Raises:
        argparse.ArgumentTypeError: A lone surrogate or a control character.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid UTF-8") from None
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise argparse.ArgumentTypeError(f"{text!r} contains control characters")
    return text


batch_id_argument = _argument_type("batch id", lambda text: validate_id("batch id", text))
"""``type=`` for a batch id: one Firestore can store as a document id."""

collection_argument = _argument_type("collection", Layout)
"""``type=`` for a batch collection path (``a`` or ``a/doc/b``), each segment a valid id."""

subcollection_argument = _argument_type(
    "subcollection", lambda text: validate_id("completions subcollection", text)
)
"""``type=`` for a subcollection name (a valid id)."""

_PROJECT = re.compile(r"(?:[a-z0-9][a-z0-9.-]*:)?[a-z](?:[a-z0-9-]{0,98}[a-z0-9])?", re.ASCII)


def _check_project(text: str) -> None:
    if not _PROJECT.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a project id (lowercase letters, digits and hyphens, "
            "starting with a letter)"
        )


project_argument = _argument_type("project", _check_project)
"""``type=`` for a Google Cloud project id (``my-project``, ``example.com:my-project``)."""

MAX_REASON = 1000


def _check_reason(text: str) -> None:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"is {len(text)} characters; at most {MAX_REASON}")


reason_argument = _argument_type("reason", _check_reason)
"""``type=`` for a reason stored with a batch: 1 to ``MAX_REASON`` characters of plain text."""


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer in ``[low, high]`` (ASCII digits)."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip(), re.ASCII):
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:,}, {high:,}], got {text.strip()}")
        return value

    parse.__name__ = "integer"
    return parse


def seconds_range(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type=`` for a number of seconds in ``(low, high]`` (finite)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(
                f"must be in ({low:g}, {high:g}] seconds, got {text!r}"
            )
        return value

    parse.__name__ = "seconds"
    return parse


def share(text: str) -> float:
    """``type=`` for a fraction in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _check_checkpoint(text: str) -> None:
    if text in ("firestore", "none"):
        return
    if not text:
        raise argparse.ArgumentTypeError("must be 'firestore', 'none' or a file path, got ''")
    path = Path(text)
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file in it")
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
        path.exists()  # a name the file system refuses (too long) fails here, not mid-run
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.strerror or exc}") from None


checkpoint_argument = _argument_type("checkpoint", _check_checkpoint)
"""``type=`` for ``--checkpoint``: ``firestore``, ``none``, or a file in an existing folder."""


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--collection``, ``--project`` and ``--mode``: where batches live, how writers run."""
    from .. import MigrationMode

    parser.add_argument(
        "--collection",
        type=collection_argument,
        default="prediction_batches",
        help="batch collection",
    )
    parser.add_argument(
        "--project",
        type=project_argument,
        default=None,
        help="GCP project (else GOOGLE_CLOUD_PROJECT)",
    )
    parser.add_argument(
        "--mode",
        choices=[mode.value for mode in MigrationMode],
        default=None,
        help="the mode the writers run in (default: from the environment flags)",
    )


# -- running a subcommand ------------------------------------------------------------


def run_with_client(project: str | None, body: Callable[[AsyncClient], Awaitable[int]]) -> int:
    """Run ``body`` with a client on a fresh event loop, and close the client after it.

    The connection settings are checked before any event loop starts (an
    ``AsyncClient`` is bound to the loop it is made on, so the one used is made
    inside it).

    Raises:
        ConfigurationError: Neither an emulator nor a project is configured.
    """
    from .._store.connect import aclose_client, client_from_env

    client_from_env(project)  # fail fast

    async def run() -> int:
        client = client_from_env(project)
        try:
            return await body(client)
        finally:
            await aclose_client(client)

    return asyncio.run(run())


def key_value_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column table without header: names in bold, values right-aligned."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_out(renderable: Any) -> None:
    """Print a rich renderable (a table) on stdout."""
    from rich.console import Console

    Console().print(renderable)


# -- failures: one line --------------------------------------------------------------


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


def _label(exc: BaseException) -> str:
    from ..migration import MigrationError

    if isinstance(exc, BatchNotFoundError):
        return "not found"
    if isinstance(exc, MigrationError):
        return "refused"
    return "error"


def report(exc: Exception) -> int:
    """Print ``exc`` as one line and return its exit status; re-raise what is not ours to report.

    Bad input or configuration (``ConfigurationError``, ``InvalidInputError``)
    is status 2, labelled ``error``. Other library errors, Firestore
    (google-api-core) errors and ``OSError`` are status 1: a batch that does not
    exist is labelled ``not found``, a migration step that refused to run
    ``refused``, the rest ``error``. An exception group counts as its leaves.
    Anything else is a bug and keeps its traceback.
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
    print_error(message, label=_label(first))
    return EXIT_USAGE if all(_is_usage(leaf) for leaf in leaves) else EXIT_FAILED


class _OneLineLog(logging.Handler):
    """The library's warnings as ``async-batchstate: warning: ...`` lines, no traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            cause = record.exc_info[1]
            message += f" ({type(cause).__name__}: {cause})"
        print_error(message, label=record.levelname.lower())


@contextmanager
def one_line_logs() -> Iterator[None]:
    """While inside, the library's log records of WARNING and up are one line each on stderr.

    The library never configures logging; the command line is an application and
    does, so that a warning logged with its exception is not a traceback.
    """
    logger = logging.getLogger("async_batchstate")
    handler = _OneLineLog(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
