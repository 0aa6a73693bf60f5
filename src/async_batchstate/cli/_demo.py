"""``async-batchstate demo``: a simulated prediction coordinator run.

A coordinator creates a batch, "publishes" one message per player, and a pool
of concurrent workers consume the messages (an anyio memory stream stands in
for Pub/Sub). Like Pub/Sub, delivery is at least once: a share of messages is
delivered twice, and a share of workers fail before acknowledging, so their
message comes back. Every completion goes through ``record_completion``; at
the end the demo checks that every structure agrees and that exactly one
caller finalized the batch.

With ``--pubsub push`` or ``--pubsub pull`` the messages go through the real
Pub/Sub emulator instead (``PUBSUB_EMULATOR_HOST``, else one started for the
run): a publisher that sends some messages twice, and the
``async_batchstate.pubsub`` push endpoint (on a loopback server) or pull
consumer recording them; a failed worker's write is refused, so Pub/Sub
redelivers the message.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._config import MigrationMode
from .._errors import ConfigurationError, InvalidInputError
from .._store.connect import EMULATOR_ENV, PROJECT_ENV, aclose_client, client_from_env
from .._types import BatchProgress, CompletionStatus
from .._write.group import FaultPoint
from .._write.manager import AsyncBatchStateManager
from ..consistency import ConsistencyReport
from ..testing._emulator import EmulatorNotFoundError, EmulatorStartError, FirestoreEmulator
from ._common import (
    ArgumentParser,
    batch_id_argument,
    collection_argument,
    int_range,
    share,
)

_COLUMNS = (
    TextColumn("[progress.description]{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TextColumn("{task.fields[detail]}"),
)


def register(sub: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = sub.add_parser(
        "demo",
        help="simulate a coordinator run (starts a local Firestore emulator)",
        description=(
            "Simulate a prediction coordinator: one batch, one message per player, many "
            "concurrent workers, at-least-once delivery. Uses the Firestore emulator named by "
            f"{EMULATOR_ENV}, else the project in {PROJECT_ENV}, else starts a local emulator."
        ),
    )
    parser.add_argument(
        "--players", type=int_range(1, 100_000), default=500, help="players in the batch (500)"
    )
    parser.add_argument(
        "--workers",
        type=int_range(1, 10_000),
        default=100,
        help="concurrent workers per process (100)",
    )
    parser.add_argument(
        "--processes",
        type=int_range(1, 64),
        default=1,
        help="worker processes, each with its own client, sharing the messages (1; "
        "at most --players)",
    )
    parser.add_argument(
        "--redeliver",
        type=share,
        default=0.1,
        help="share of messages delivered twice, as Pub/Sub may (0.1)",
    )
    parser.add_argument(
        "--fail",
        type=share,
        default=0.05,
        help="share of deliveries whose worker fails before recording; redelivered (0.05)",
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in MigrationMode],
        default=None,
        help="migration mode (default: from ENABLE_SUBCOLLECTION_COMPLETIONS, DUAL_WRITE_MODE, "
        "USE_SUBCOLLECTION_READS; DUAL_WRITE when unset)",
    )
    parser.add_argument(
        "--collection", type=collection_argument, default="demo_batches", help="batch collection"
    )
    parser.add_argument(
        "--batch-id",
        type=batch_id_argument,
        default=None,
        help="batch id (default: a new random one)",
    )
    parser.add_argument(
        "--seed",
        type=int_range(0, 2**63 - 1),
        default=None,
        help="random seed (>= 0), for a repeatable run",
    )
    parser.add_argument(
        "--pubsub",
        choices=["push", "pull"],
        default=None,
        help="deliver through the Pub/Sub emulator to the push endpoint or the pull consumer "
        "(needs the pubsub extra; one process, --workers deliveries at once)",
    )
    parser.set_defaults(handler=run)


@dataclass
class _DemoTally:
    recorded: int = 0
    duplicates: int = 0
    worker_failures: int = 0
    commits: int = 0
    attempts: int = 0
    retries: int = 0
    latency: str = ""
    completers: list[str] = field(default_factory=list)

    def merge(self, other: _DemoTally) -> None:
        """Add another process's counts (latency stays this process's)."""
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.worker_failures += other.worker_failures
        self.commits += other.commits
        self.attempts += other.attempts
        self.retries += other.retries
        self.completers += other.completers


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the batch ends consistent and finalized exactly once.

    Raises:
        InvalidInputError: More ``--processes`` than ``--players`` (a process
            without a message would wait for one forever).
        ConfigurationError: No emulator nor project configured, and no local
            emulator could be started.
    """
    if args.pubsub and args.processes > 1:
        raise InvalidInputError("--pubsub runs in one process: drop --processes")
    if args.processes > args.players:
        raise InvalidInputError(
            f"--processes ({args.processes}) must not exceed --players ({args.players}): "
            "every process needs at least one message"
        )
    console = Console()
    # Turn SIGTERM into an exception so the emulator we started is stopped on the way out.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with _firestore(console) as describe:
            console.print(f"[bold]Firestore:[/] {describe}")
            if args.pubsub:
                return _run_pubsub(args, console)
            return anyio.run(_main, args, console)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _firestore(console: Console) -> Iterator[str]:
    """Use the configured emulator or project; otherwise run a local emulator for the demo."""
    if os.environ.get(EMULATOR_ENV):
        yield f"emulator at {os.environ[EMULATOR_ENV]}"
        return
    if os.environ.get(PROJECT_ENV):
        yield f"project {os.environ[PROJECT_ENV]}"
        return
    with console.status("starting the local Firestore emulator..."):
        try:
            emulator = FirestoreEmulator().start()
        except (EmulatorNotFoundError, EmulatorStartError) as exc:
            # The start error carries the emulator's log after its first line.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(
                f"no Firestore configured ({EMULATOR_ENV}, {PROJECT_ENV}) and the local "
                f"emulator cannot start: {first}"
            ) from exc
    os.environ[EMULATOR_ENV] = emulator.host
    try:
        yield f"local emulator at {emulator.host} (pid {emulator.pid}), stopped at exit"
    finally:
        os.environ.pop(EMULATOR_ENV, None)
        emulator.stop()


async def _main(args: argparse.Namespace, console: Console) -> int:
    rng = random.Random(args.seed)
    client = client_from_env()
    batch_id = args.batch_id or f"demo-{uuid.uuid4().hex[:8]}"
    players = [f"player-{i:05d}" for i in range(args.players)]
    # At-least-once delivery: some messages twice, spread over the processes.
    messages = [p for p in players for _ in range(2 if rng.random() < args.redeliver else 1)]
    rng.shuffle(messages)
    mode = MigrationMode(args.mode) if args.mode else None
    try:
        async with AsyncBatchStateManager(client, collection=args.collection, mode=mode) as manager:
            await manager.create_batch(batch_id, expected_players=players)
            console.print(
                f"[bold]Batch[/] {batch_id!r}: {len(players)} players, "
                f"{args.processes} process(es) x {args.workers} workers, mode {manager.mode.name}, "
                f"{len(messages) - len(players)} redeliveries, {args.fail:.0%} worker failures"
            )
            started = time.perf_counter()
            children = [
                _spawn(args, batch_id, messages[k :: args.processes], args.seed, k)
                for k in range(1, args.processes)
            ]
            tally = await _record(
                args, batch_id, messages[:: args.processes], rng, console, manager
            )
            for process, results in children:
                await anyio.to_thread.run_sync(process.join)
                tally.merge(_DemoTally(**results.get(timeout=5)))
            elapsed = time.perf_counter() - started
            final = await manager.wait_until_complete(batch_id, timeout=60)
            report = await manager.validate(batch_id)
    finally:
        await aclose_client(client)

    return summary(console, batch_id, len(players), tally, elapsed, final, report)


def summary(
    console: Console,
    batch_id: str,
    players: int,
    tally: _DemoTally,
    elapsed: float,
    final: BatchProgress,
    report: ConsistencyReport,
    extra: dict[str, str] | None = None,
) -> int:
    """Print the run's table; 0 when consistent, finalized once and every player recorded."""
    ok = (
        report.is_consistent
        and final.is_finalized
        and len(tally.completers) == 1
        and tally.recorded == players
    )
    table = Table(title=f"batch {batch_id}", show_header=False)
    table.add_row("completions recorded", str(tally.recorded))
    table.add_row("duplicates (redeliveries)", str(tally.duplicates))
    table.add_row("worker failures, redelivered", str(tally.worker_failures))
    table.add_row(
        "throughput", f"{(tally.recorded + tally.duplicates) / elapsed:,.0f} completions/s"
    )
    table.add_row("commits / attempts", f"{tally.commits} / {tally.attempts}")
    table.add_row("retries", str(tally.retries))
    table.add_row(
        "completions per transaction",
        f"{(tally.recorded + tally.duplicates) / max(tally.commits, 1):.1f}",
    )
    table.add_row("latency p50 / p99 (first process)", tally.latency)
    table.add_row("finalized", f"{final.status}, by {tally.completers}")
    table.add_row(
        "progress",
        f"{final.completed_count}/{final.expected_count}, {final.total_predictions} predictions",
    )
    for name, value in (extra or {}).items():
        table.add_row(name, value)
    verdict = "[green]consistent[/]" if report.is_consistent else "[red]MISMATCH[/]"
    table.add_row("consistency check", f"{verdict}: {report.summary()}")
    console.print(table)
    console.print("[bold green]OK[/]" if ok else "[bold red]INCONSISTENT[/]")
    return 0 if ok else 1


def _spawn(
    args: argparse.Namespace, batch_id: str, messages: list[str], seed: int | None, index: int
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.queues.Queue[dict[str, Any]]]:
    """Start a worker process (its own client and manager) on a share of the messages."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[dict[str, Any]] = context.Queue()
    child_seed = None if seed is None else seed + index
    process = context.Process(
        target=_child,
        args=(vars(args) | {"handler": None}, batch_id, messages, child_seed, results),
        name=f"async-batchstate demo worker {index}",
    )
    process.start()
    return process, results


def _child(
    arguments: dict[str, Any],
    batch_id: str,
    messages: list[str],
    seed: int | None,
    results: multiprocessing.queues.Queue[dict[str, Any]],
) -> None:
    """A worker process: record its messages, then report its tally."""
    args = argparse.Namespace(**arguments)

    async def main() -> _DemoTally:
        client = client_from_env()
        try:
            mode = MigrationMode(args.mode) if args.mode else None
            async with AsyncBatchStateManager(
                client, collection=args.collection, mode=mode
            ) as manager:
                return await _record(args, batch_id, messages, random.Random(seed), None, manager)
        finally:
            await aclose_client(client)

    results.put(dataclasses.asdict(anyio.run(main)))


async def _record(
    args: argparse.Namespace,
    batch_id: str,
    messages: list[str],
    rng: random.Random,
    console: Console | None,
    manager: AsyncBatchStateManager,
) -> _DemoTally:
    """Workers consume ``messages``; a failed delivery goes back on the queue."""
    tally = _DemoTally()
    send, receive = anyio.create_memory_object_stream[str](max_buffer_size=len(messages) * 2)
    for message in messages:
        send.send_nowait(message)
    outstanding = len(messages)
    started = time.perf_counter()
    with Progress(*_COLUMNS, console=console, disable=console is None) as progress:
        task = progress.add_task("deliveries (this process)", total=outstanding, detail="")

        async def worker(inbox: MemoryObjectReceiveStream[str], scope: anyio.CancelScope) -> None:
            nonlocal outstanding
            async for player in inbox:
                await anyio.sleep(rng.random() * 0.005)  # the "prediction work"
                if rng.random() < args.fail:
                    tally.worker_failures += 1
                    send.send_nowait(player)  # not acknowledged: Pub/Sub redelivers it
                    continue
                count = sum(map(ord, player)) % 20
                result = await manager.record_completion(batch_id, player, count)
                if result.status is CompletionStatus.RECORDED:
                    tally.recorded += 1
                else:
                    tally.duplicates += 1
                if result.batch_completed:
                    tally.completers.append(player)
                outstanding -= 1
                stats = manager.stats()
                rate = (tally.recorded + tally.duplicates) / (time.perf_counter() - started)
                progress.update(
                    task,
                    advance=1,
                    detail=f"{rate:,.0f}/s dup {tally.duplicates} retries {stats.retries} "
                    f"failed workers {tally.worker_failures}",
                )
                if outstanding == 0:
                    scope.cancel()  # every delivery is acknowledged: stop the workers

        async with send, receive, anyio.create_task_group() as tg:
            for _ in range(args.workers):
                tg.start_soon(worker, receive, tg.cancel_scope)
    stats = manager.stats()
    tally.commits, tally.attempts, tally.retries = (
        stats.commits,
        stats.attempts,
        stats.retries,
    )
    tally.latency = f"{stats.latency_p50 * 1e3:.0f} ms / {stats.latency_p99 * 1e3:.0f} ms"
    return tally


# -- through the Pub/Sub emulator (--pubsub push|pull) -----------------------------------


def _run_pubsub(args: argparse.Namespace, console: Console) -> int:
    """The demo through the Pub/Sub emulator (started here unless ``PUBSUB_EMULATOR_HOST``)."""
    from ..testing._pubsub import PUBSUB_HOST_ENV, PubSubEmulator

    existing = os.environ.get(PUBSUB_HOST_ENV)
    if existing:
        console.print(f"[bold]Pub/Sub:[/] emulator at {existing}")
        return anyio.run(_main_pubsub, args, console, PubSubEmulator.attach(existing))
    with console.status("starting the local Pub/Sub emulator..."):
        try:
            emulator = PubSubEmulator().start()
        except (EmulatorNotFoundError, EmulatorStartError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(
                f"--pubsub needs the Pub/Sub emulator ({PUBSUB_HOST_ENV}), which cannot "
                f"start: {first}"
            ) from exc
    os.environ[PUBSUB_HOST_ENV] = emulator.host
    try:
        console.print(
            f"[bold]Pub/Sub:[/] local emulator at {emulator.host} (pid {emulator.pid}), "
            "stopped at exit"
        )
        return anyio.run(_main_pubsub, args, console, emulator)
    finally:
        os.environ.pop(PUBSUB_HOST_ENV, None)
        emulator.stop()


async def _main_pubsub(args: argparse.Namespace, console: Console, emulator: Any) -> int:
    try:
        from .. import pubsub
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from exc
    from google.api_core.exceptions import PermissionDenied

    from ..testing._pubsub import LoopbackAsgiServer

    rng = random.Random(args.seed)
    client = client_from_env()
    batch_id = args.batch_id or f"demo-{uuid.uuid4().hex[:8]}"
    players = [f"player-{i:05d}" for i in range(args.players)]
    # A publisher that retries publishes some messages twice (another message id each).
    sends = [p for p in players for _ in range(2 if rng.random() < args.redeliver else 1)]
    rng.shuffle(sends)
    tally = _DemoTally()

    async def failing_worker(point: FaultPoint, batch: str, group: Sequence[str]) -> None:
        # A worker that fails before its write: refused, so Pub/Sub delivers it again.
        if point is FaultPoint.BEFORE_BEGIN and rng.random() < args.fail:
            tally.worker_failures += 1
            raise PermissionDenied("demo: worker failure")  # type: ignore[no-untyped-call]

    project = os.environ.get(PROJECT_ENV) or "demo-async-batchstate"
    topic = f"demo-completions-{uuid.uuid4().hex[:8]}"
    emulator.create_topic(project, topic)
    mode = MigrationMode(args.mode) if args.mode else None
    try:
        async with AsyncBatchStateManager(
            client,
            collection=args.collection,
            mode=mode,
            on_complete=lambda b, p: tally.completers.append(p.finalizer_id or b),
            fault_injector=failing_worker if args.fail else None,
        ) as manager:
            await manager.create_batch(batch_id, expected_players=players)
            console.print(
                f"[bold]Batch[/] {batch_id!r}: {len(players)} players through Pub/Sub "
                f"{args.pubsub}, {args.workers} deliveries at once, mode {manager.mode.name}, "
                f"{len(sends) - len(players)} publisher duplicates, {args.fail:.0%} worker "
                "failures"
            )
            data = [
                json.dumps(
                    {"batch_id": batch_id, "player": p, "predictions_count": sum(map(ord, p)) % 20}
                ).encode()
                for p in sends
            ]
            started = time.perf_counter()
            async with contextlib.AsyncExitStack() as stack:
                adapter: Any
                if args.pubsub == "push":
                    adapter = pubsub.PushEndpoint(manager, max_concurrency=args.workers)
                    server = await stack.enter_async_context(LoopbackAsgiServer(adapter))
                    emulator.create_subscription(
                        project, topic + "-push", topic, push_endpoint=server.url
                    )
                else:
                    path = emulator.create_subscription(project, topic + "-pull", topic)
                    adapter = await stack.enter_async_context(
                        pubsub.PullConsumer(manager, path, max_outstanding=args.workers)
                    )
                emulator.publish(project, topic, data)
                with Progress(*_COLUMNS, console=console) as progress:
                    task = progress.add_task("acknowledged", total=len(sends), detail="")
                    while (stats := adapter.stats()).acked < len(sends):
                        progress.update(
                            task,
                            completed=stats.acked,
                            detail=f"dup {stats.duplicates} redelivered {stats.retried}",
                        )
                        await anyio.sleep(0.1)
                    progress.update(task, completed=stats.acked)
            elapsed = time.perf_counter() - started
            final = await manager.wait_until_complete(batch_id, timeout=60)
            report = await manager.validate(batch_id)
            m = manager.stats()
    finally:
        await aclose_client(client)
    tally.recorded, tally.duplicates = stats.acked - stats.duplicates, stats.duplicates
    tally.commits, tally.attempts, tally.retries = m.commits, m.attempts, m.retries
    tally.latency = f"{m.latency_p50 * 1e3:.0f} ms / {m.latency_p99 * 1e3:.0f} ms"
    extra = {f"pubsub {args.pubsub}": f"{stats.acked} acked, {stats.retried} redelivered"}
    return summary(console, batch_id, len(players), tally, elapsed, final, report, extra)
