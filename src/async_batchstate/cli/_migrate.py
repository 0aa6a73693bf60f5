"""``async-batchstate migrate``: backfill, verify, cleanup-legacy and status from the shell.

Exit status: 0 success; 1 mismatches, refusals or failed batches (a batch
that fails is listed and the run goes on with the others); 2 bad input or
configuration (an id Firestore cannot store, a bad number, conflicting flags,
no emulator nor project, contradictory mode flags), reported on one line
before anything is read or written. A step that refuses to run (its mode is
wrong) is one line, ``async-batchstate: refused: ...``, and status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import InvalidInputError, Layout, MigrationMode
from .. import migration as m
from ..consistency import ConsistencyReport
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    ArgumentParser,
    batch_id_argument,
    checkpoint_argument,
    connection_arguments,
    int_range,
    key_value_table,
    run_with_client,
    subcollection_argument,
)

MAX_CONCURRENCY = 1_000

Command = Callable[[AsyncClient, argparse.Namespace, Console], Awaitable[int]]
S = TypeVar("S")


def register(sub: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add the ``migrate`` subcommand and its ``backfill/verify/cleanup-legacy/status``."""
    parser = sub.add_parser(
        "migrate",
        help="move batches from the legacy array to the completions subcollection",
        description="Steps: DUAL_WRITE everywhere -> backfill -> verify -> "
        "DUAL_WRITE_SUBCOLLECTION_READS -> SUBCOLLECTION_ONLY -> cleanup-legacy. "
        "Connection: FIRESTORE_EMULATOR_HOST or GOOGLE_CLOUD_PROJECT.",
    )
    steps = parser.add_subparsers(dest="migrate_command", required=True)

    common = ArgumentParser(add_help=False)
    connection_arguments(common)
    common.add_argument(
        "--completions-subcollection",
        type=subcollection_argument,
        default="completions",
        help="completions subcollection",
    )
    common.add_argument(
        "--batch-id",
        action="append",
        dest="batch_ids",
        type=batch_id_argument,
        metavar="ID",
        help="only this batch (repeatable)",
    )
    common.add_argument(
        "--concurrency",
        type=int_range(1, MAX_CONCURRENCY),
        default=8,
        help=f"batches in flight (8; at most {MAX_CONCURRENCY})",
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    backfill = steps.add_parser(
        "backfill", parents=[common], help="create missing completion docs from legacy arrays"
    )
    backfill.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    backfill.add_argument(
        "--checkpoint",
        type=checkpoint_argument,
        default=None,
        metavar="WHERE",
        help="'firestore' (a doc in <collection>_migration, default), a file path, or 'none'; "
        "not with --batch-id",
    )
    backfill.add_argument(
        "--restart",
        action="store_true",
        help="ignore a saved checkpoint and start over (not with --batch-id or --checkpoint none)",
    )
    backfill.set_defaults(handler=lambda args: _main(args, _backfill))

    verify = steps.add_parser("verify", parents=[common], help="validate every batch")
    verify.set_defaults(handler=lambda args: _main(args, _verify))

    cleanup = steps.add_parser(
        "cleanup-legacy",
        parents=[common],
        help="remove legacy fields from batches that verify clean (SUBCOLLECTION_ONLY only)",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    cleanup.set_defaults(handler=lambda args: _main(args, _cleanup))

    state = steps.add_parser("status", parents=[common], help="count batches per migration state")
    state.set_defaults(handler=lambda args: _main(args, _status))


def _check_flags(args: argparse.Namespace) -> None:
    """Reject flag combinations that contradict each other.

    Raises:
        InvalidInputError: ``--restart`` or ``--checkpoint`` with ``--batch-id`` (a
            run over listed batches neither reads nor saves the checkpoint; a
            restart would reset the whole collection's), or ``--restart`` with
            ``--checkpoint none``.
    """
    if args.migrate_command != "backfill":
        return
    if args.batch_ids and args.restart:
        raise InvalidInputError(
            "--restart resets the checkpoint of the whole collection, which a run with "
            "--batch-id does not use: drop one of them"
        )
    if args.batch_ids and args.checkpoint is not None:
        raise InvalidInputError("--checkpoint has no effect with --batch-id: drop one of them")
    if args.restart and args.checkpoint == "none":
        raise InvalidInputError("--restart has nothing to reset with --checkpoint none")


def _main(args: argparse.Namespace, command: Command) -> int:
    """Check the flags and the connection, then run ``command`` on a fresh event loop.

    Bad input and configuration errors propagate (``cli.main`` reports them on one
    line with exit status 2) before anything is read or written.
    """
    _check_flags(args)
    if args.migrate_command == "backfill" and args.checkpoint is None:
        args.checkpoint = "firestore"
    args.migration_mode = MigrationMode(args.mode) if args.mode else MigrationMode.from_env()
    args.layout = Layout(args.collection, args.completions_subcollection)
    console = Console()
    return run_with_client(args.project, lambda client: command(client, args, console))


@contextmanager
def _progress(
    args: argparse.Namespace, console: Console, what: str
) -> Iterator[Callable[[m.MigrationProgress], None] | None]:
    errors = Console(stderr=True)
    if args.no_progress or not errors.is_terminal:  # a bar only leaves blank lines in a log
        yield None
        return
    bar = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )
    task = bar.add_task(what, total=None, failed=0)

    def update(p: m.MigrationProgress) -> None:
        bar.update(task, completed=p.done, total=p.total, failed=p.failed)

    with bar:
        yield update


Reasons = Sequence[tuple[str, str]]
"""``(batch id or player, reason)`` rows, printed under a heading when there are any."""
_FAILED = "failed batches (run again to retry):"
_UNREADABLE = "unreadable batches:"


async def _run_step(
    client: AsyncClient,
    args: argparse.Namespace,
    console: Console,
    what: str,
    step: Callable[..., Awaitable[S]],
    **options: Any,
) -> S:
    """Run the migration ``step`` over the selected batches, with a progress bar on a terminal."""
    with _progress(args, console, what) as progress:
        return await step(
            client,
            args.layout,
            args.migration_mode,
            batch_ids=args.batch_ids,
            concurrency=args.concurrency,
            progress=progress,
            **options,
        )


def _reasons_text(reasons: Iterable[tuple[str, str]], limit: int = 50) -> list[str]:
    """``batch: reason`` lines, at most ``limit`` plus a count of the rest."""
    items = list(reasons)
    lines = [f"{batch}: {reason}" for batch, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more")
    return lines


def _print_summary(console: Console, ok: bool, *parts: Table | tuple[str, Reasons] | None) -> int:
    """Print ``parts`` in order (tables; ``(heading, reasons)`` when there are reasons).

    Returns:
        The exit status: ``EXIT_OK`` if ``ok``, else ``EXIT_FAILED``.
    """
    for part in parts:
        if isinstance(part, Table):
            console.print(part)
        elif part is not None and part[1]:
            console.print(f"[bold red]{part[0]}[/]")
            for line in _reasons_text(part[1]):
                console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK if ok else EXIT_FAILED


def _title(what: str, args: argparse.Namespace) -> str:
    """A summary table's title: the step, and how it ran."""
    if "dry_run" in args:
        return what + (" (dry run)" if args.dry_run else "")
    return f"{what} ({args.migration_mode.name} rules)"


async def _checkpoint(client: AsyncClient, args: argparse.Namespace) -> m.Checkpoint | None:
    """The checkpoint ``--checkpoint`` names, reset first with ``--restart``."""
    checkpoint: m.FirestoreCheckpoint | m.FileCheckpoint
    if args.checkpoint == "none":
        return None
    if args.checkpoint == "firestore":
        checkpoint = m.FirestoreCheckpoint(client, args.layout)
    else:
        checkpoint = m.FileCheckpoint(args.checkpoint)
    if args.restart and not args.dry_run:
        await checkpoint.reset()
    return checkpoint


async def _backfill(client: AsyncClient, args: argparse.Namespace, console: Console) -> int:
    summary = await _run_step(
        client,
        args,
        console,
        "backfill",
        m.backfill,
        dry_run=args.dry_run,
        checkpoint=await _checkpoint(client, args),
    )
    verb = "would create" if args.dry_run else "created"
    rows = [
        ("batches", str(summary.batches)),
        ("resumed after", summary.resumed_after or "-"),
        ("batches changed", str(summary.changed)),
        (f"completion docs {verb}", str(summary.completions_created)),
        ("predictions backfilled", str(summary.predictions_backfilled)),
        ("players without a count", str(len(summary.unknown_counts))),
        ("failed batches", str(len(summary.failures))),
    ]
    return _print_summary(
        console,
        summary.ok,
        key_value_table(_title("backfill", args), rows),
        (
            "players left alone (no count in predictions_by_player; reconcile them):",
            summary.unknown_counts,
        ),
        (_FAILED, summary.failures),
    )


def _inconsistent(reports: Sequence[ConsistencyReport]) -> Table | None:
    """The first 50 inconsistent batches, a row each."""
    if not reports:
        return None
    table = Table(title="inconsistent batches")
    for column in ("batch", "array", "completed_count", "docs", "problems"):
        table.add_column(column)
    for report in reports[:50]:
        table.add_row(
            report.batch_id,
            str(report.legacy_array_length),
            str(report.completed_count),
            str(report.completion_docs),
            "; ".join(report.problems),
        )
    return table


async def _verify(client: AsyncClient, args: argparse.Namespace, console: Console) -> int:
    summary = await _run_step(client, args, console, "verify", m.verify)
    rows = [
        ("batches checked", str(summary.checked)),
        ("consistent", str(summary.checked - len(summary.inconsistent))),
        ("inconsistent", str(len(summary.inconsistent))),
        ("unreadable", str(len(summary.failures))),
    ]
    return _print_summary(
        console,
        summary.ok,
        key_value_table(_title("verify", args), rows),
        _inconsistent(summary.inconsistent),
        (_UNREADABLE, summary.failures),
    )


async def _cleanup(client: AsyncClient, args: argparse.Namespace, console: Console) -> int:
    summary = await _run_step(
        client, args, console, "cleanup-legacy", m.cleanup_legacy, dry_run=args.dry_run
    )
    if summary.refused:
        refused = ("cleanup-legacy refused; nothing was removed:", summary.reasons)
        return _print_summary(console, False, refused)
    verb = "would clean" if args.dry_run else "cleaned"
    rows = [
        (f"batches {verb}", str(len(summary.cleaned))),
        ("skipped", str(len(summary.skipped))),
        ("failed batches", str(len(summary.failures))),
    ]
    return _print_summary(
        console,
        summary.ok,
        key_value_table(_title("cleanup-legacy", args), rows),
        ("skipped (changed meanwhile; run again):", summary.skipped),
        (_FAILED, summary.failures),
    )


async def _status(client: AsyncClient, args: argparse.Namespace, console: Console) -> int:
    summary = await _run_step(client, args, console, "status", m.status)
    rows = [(state.value, str(count)) for state, count in summary.counts.items()]
    rows += [("total", str(summary.total)), ("unreadable", str(len(summary.failures)))]
    clean = not summary.failures and not summary.counts[m.BatchState.INCONSISTENT]
    return _print_summary(
        console,
        clean,
        key_value_table(_title("status", args), rows),
        (_UNREADABLE, summary.failures),
    )


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["migrate", *sys.argv[1:]]))
