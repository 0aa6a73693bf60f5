"""``async-batchstate batch``: show, list and expire batches from the shell.

Exit status: 0 success; 1 the batch does not exist or was not expired by this
call; 2 bad input or configuration (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .._clock import SYSTEM_CLOCK
from .._config import MigrationMode
from .._errors import BatchNotFoundError
from .._store.connect import aclose_client, client_from_env
from .._types import BatchProgress
from .._write.manager import AsyncBatchStateManager
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    ArgumentParser,
    batch_id_argument,
    connection_arguments,
    positive_int,
    print_error,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Command = Callable[[AsyncBatchStateManager, argparse.Namespace], Awaitable[int]]


def duration(text: str) -> dt.timedelta:
    """``90``, ``45s``, ``30m``, ``2h`` or ``1d`` as a timedelta (argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 45s, 30m, 2h, 1d")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def register(sub: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add the ``batch`` subcommand and its ``show/list/expire``."""
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
        "--older-than", type=duration, metavar="AGE", help="only batches created before AGE ago"
    )
    listing.add_argument("--limit", type=positive_int, default=None, help="at most this many")
    listing.set_defaults(handler=lambda args: _main(args, _list))

    expire = verbs.add_parser("expire", parents=[common], help="expire an unfinished batch")
    expire.add_argument("batch_id", type=batch_id_argument, metavar="ID")
    expire.add_argument("--reason", required=True, help="why (stored with the batch)")
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
        type=float,
        default=60.0,
        help="seconds the process that owes it keeps it before this one may run it (60)",
    )
    owed.set_defaults(handler=lambda args: _main(args, _callbacks))


def callback_argument(text: str) -> Callable[..., Any]:
    """``type=`` for ``MODULE:FUNCTION``: the callable it names."""
    module, _, name = text.partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE:FUNCTION, got {text!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot load {text!r}: {exc}") from None
    if not callable(found):
        raise argparse.ArgumentTypeError(f"{text!r} is not callable")
    return cast("Callable[..., Any]", found)


def _main(args: argparse.Namespace, command: Command) -> int:
    """Connect and run ``command``; bad configuration propagates to ``cli.main`` (exit 2)."""
    mode = MigrationMode(args.mode) if args.mode else MigrationMode.from_env()
    client_from_env(args.project)  # fail fast, before any event loop
    callback = getattr(args, "run", None)
    lease = getattr(args, "lease", 60.0)

    async def run() -> int:
        client = client_from_env(args.project)  # an AsyncClient is bound to this loop
        try:
            async with AsyncBatchStateManager(
                client,
                collection=args.collection,
                mode=mode,
                validation_rate=0.0,
                on_complete=callback,
                on_expired=callback,
                callback_lease=lease,
                callback_sweep_interval=None,  # runs the one batch it is asked about, no other
            ) as manager:
                return await command(manager, args)
        finally:
            await aclose_client(client)

    try:
        return asyncio.run(run())
    except BatchNotFoundError as exc:
        print_error(str(exc), label="not found")
        return EXIT_FAILED


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
        "finalisation_key": progress.finalisation_key,
    }


def _table(title: str, rows: list[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table


def _print(renderable: Any) -> None:
    from rich.console import Console

    Console().print(renderable)


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
    _print(_table(f"batch {progress.batch_id}", rows))
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
    _print(table)
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
