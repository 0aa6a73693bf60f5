"""``async-batchstate batch``: show, list and expire batches from the shell.

Exit status: 0 success; 1 the batch does not exist (``async-batchstate: not
found: ...``), was not expired by this call, or has no callback owed; 2 bad
input or configuration (one line on stderr, no traceback, nothing read or written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .. import AsyncBatchStateManager, BatchProgress, MigrationMode
from .._clock import SYSTEM_CLOCK
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    ArgumentParser,
    batch_id_argument,
    connection_arguments,
    int_range,
    key_value_table,
    plain_text,
    print_out,
    reason_argument,
    run_with_client,
    seconds_range,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_AGE = dt.timedelta(days=36_500)
"""The oldest ``--older-than``: a century (older, no batch can match)."""
MAX_LEASE = 86_400.0

Command = Callable[[AsyncBatchStateManager, argparse.Namespace], Awaitable[int]]


def duration(text: str) -> dt.timedelta:
    """``90``, ``45s``, ``30m``, ``2h`` or ``1d`` as a timedelta, at most ``MAX_AGE`` (a type=)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text, re.ASCII)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 45s, 30m, 2h, 1d")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds > MAX_AGE.total_seconds():
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_AGE.days:,}d")
    return dt.timedelta(seconds=seconds)


def register(sub: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add the ``batch`` subcommand and its ``show/list/expire/callbacks``."""
    parser = sub.add_parser(
        "batch",
        help="inspect, list and expire batches",
        description="Connection: FIRESTORE_EMULATOR_HOST or GOOGLE_CLOUD_PROJECT.",
    )
    verbs = parser.add_subparsers(dest="batch_command", required=True)
    common = ArgumentParser(add_help=False)
    connection_arguments(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = verbs.add_parser("show", parents=[common], help="a batch's progress and consistency")
    show.add_argument("batch_id", type=batch_id_argument, metavar="ID")
    show.set_defaults(handler=lambda args: _main(args, _show))

    listing = verbs.add_parser("list", parents=[common], help="list batches")
    listing.add_argument(
        "--status", choices=["in_progress", "complete", "expired"], help="only this status"
    )
    listing.add_argument(
        "--older-than",
        type=duration,
        metavar="AGE",
        help=f"only batches created before AGE ago (at most {MAX_AGE.days}d)",
    )
    listing.add_argument(
        "--limit", type=int_range(1, 1_000_000), default=None, help="at most this many"
    )
    listing.set_defaults(handler=lambda args: _main(args, _list))

    expire = verbs.add_parser("expire", parents=[common], help="expire an unfinished batch")
    expire.add_argument("batch_id", type=batch_id_argument, metavar="ID")
    expire.add_argument(
        "--reason", type=reason_argument, required=True, help="why (stored with the batch)"
    )
    expire.set_defaults(handler=lambda args: _main(args, _expire))

    owed = verbs.add_parser(
        "callbacks",
        parents=[common],
        help="run a finished batch's owed on_complete/on_expired (its runner died)",
    )
    owed.add_argument("batch_id", type=batch_id_argument, metavar="ID")
    owed.add_argument(
        "--run",
        type=callback_argument,
        required=True,
        metavar="MODULE:FUNCTION",
        help="the coordinator's callback, called as f(batch_id, progress) (sync or async)",
    )
    owed.add_argument(
        "--lease",
        type=seconds_range(0.0, MAX_LEASE),
        default=60.0,
        help="seconds the process that owes it keeps it before this one may run it (60)",
    )
    owed.set_defaults(handler=lambda args: _main(args, _callbacks))


def callback_argument(text: str) -> Callable[..., Any]:
    """``type=`` for ``MODULE:FUNCTION``: the callable it names.

    Importing runs the module: whatever it raises (a syntax error too) is a bad
    ``--run``, reported on one line.
    """
    module, _, name = plain_text(text).partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE:FUNCTION, got {text!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # the user's module: any error at import is theirs
        raise argparse.ArgumentTypeError(
            f"cannot load {text!r}: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(found):
        raise argparse.ArgumentTypeError(f"{text!r} is not callable")
    return cast("Callable[..., Any]", found)


def _main(args: argparse.Namespace, command: Command) -> int:
    """Run ``command`` with a manager; bad configuration propagates to ``cli.main`` (exit 2)."""
    mode = MigrationMode(args.mode) if args.mode else MigrationMode.from_env()
    callback = getattr(args, "run", None)

    async def run(client: Any) -> int:
        async with AsyncBatchStateManager(
            client,
            collection=args.collection,
            mode=mode,
            validation_rate=0.0,
            on_complete=callback,
            on_expired=callback,
            callback_lease=getattr(args, "lease", 60.0),
            callback_sweep_interval=None,  # runs the one batch it is asked about, no other
        ) as manager:
            return await command(manager, args)

    return run_with_client(args.project, run)


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def as_dict(progress: BatchProgress) -> dict[str, Any]:
    """A JSON-ready view of ``progress``."""
    return {
        "batch_id": progress.batch_id,
        "status": progress.status,
        "expected_count": progress.expected_count,
        "completed_count": progress.completed_count,
        "total_predictions": progress.total_predictions,
        "missing_players": list(progress.missing_players),
        "deadline": _when(progress.deadline),
        "created_at": _when(progress.created_at),
        "finished_at": _when(progress.finished_at),
        "expired_reason": progress.expired_reason,
        "finalization_key": progress.finalization_key,
    }


async def _show(manager: AsyncBatchStateManager, args: argparse.Namespace) -> int:
    progress = await manager.get_progress(args.batch_id)
    report = await manager.validate(args.batch_id)
    view = as_dict(progress) | {"consistent": report.is_consistent, "consistency": report.summary()}
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    missing = ", ".join(progress.missing_players[:20])
    if len(progress.missing_players) > 20:
        missing += f", ... ({len(progress.missing_players)} in all)"
    rows = [
        ("status", progress.status),
        ("completed", f"{progress.completed_count} of {progress.expected_count}"),
        ("predictions", str(progress.total_predictions)),
        ("missing players", missing or "-"),
        ("deadline", view["deadline"] or "-"),
        ("created", view["created_at"] or "-"),
        ("finished", view["finished_at"] or "-"),
        ("expired because", progress.expired_reason or "-"),
        ("consistency", report.summary()),
    ]
    print_out(key_value_table(f"batch {progress.batch_id}", rows))
    return 0


async def _list(manager: AsyncBatchStateManager, args: argparse.Namespace) -> int:
    # Real time: it is compared with the server's created_at stamps.
    before = None if args.older_than is None else SYSTEM_CLOCK.now() - args.older_than
    found = [
        p
        async for p in manager.list_batches(
            status=args.status, created_before=before, limit=args.limit
        )
    ]
    if args.json:
        print(json.dumps([as_dict(p) for p in found], indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"{len(found)} batch(es)")
    for column in ("batch", "status", "completed", "created", "deadline"):
        table.add_column(column)
    for p in found:
        table.add_row(
            p.batch_id,
            p.status,
            f"{p.completed_count}/{p.expected_count}",
            _when(p.created_at) or "-",
            _when(p.deadline) or "-",
        )
    print_out(table)
    return 0


async def _expire(manager: AsyncBatchStateManager, args: argparse.Namespace) -> int:
    expired = await manager.expire(args.batch_id, reason=args.reason)
    progress = await manager.get_progress(args.batch_id, include_players=False)
    if args.json:
        print(json.dumps({"expired": expired, "status": progress.status}))
    else:
        print(
            f"batch {args.batch_id}: {'expired' if expired else 'not expired'}; "
            f"status {progress.status}"
        )
    return EXIT_OK if expired else EXIT_FAILED


async def _callbacks(manager: AsyncBatchStateManager, args: argparse.Namespace) -> int:
    ran = await manager.deliver_owed_callbacks(args.batch_id)
    if args.json:
        print(json.dumps({"ran": ran}))
    else:
        print(f"batch {args.batch_id}: {'ran the owed callback' if ran else 'nothing owed now'}")
    return EXIT_OK if ran else EXIT_FAILED
