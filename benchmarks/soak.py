"""Soak: mixed load for a set duration, then every invariant of every batch checked.

Run from the repository root::

    python -m benchmarks.soak --duration 600          # 10 minutes, own emulator
    python -m benchmarks.soak --duration 60 --json soak.json

Load, all at once for ``--duration`` seconds:

* ``--concurrent-batches`` batches in flight, each in one of the four
  migration modes (round robin; one manager per mode, one shared client);
* every player reported by a caller at a random moment of the batch's spread;
* ``--dup-rate`` of players delivered twice concurrently (Pub/Sub redelivery),
  ``--late-dup-rate`` redelivered after the batch completed with ANOTHER count
  (must be a ``DUPLICATE`` and change nothing: the first count wins);
* ``--cancel-rate`` of callers cancelled at a random point;
* optionally (``--reset-every``) every connection reset through a
  ``FaultyProxy`` at that interval.

Every caller that was cancelled or got an error is redelivered until it is
confirmed (as Pub/Sub would). When a batch is done it is checked at once;
at the end every batch is read back again. Invariants per batch: completion
documents == ``completed_count`` == array length == map size, totals == sums
of the per-player counts, the recorded players and counts are exactly the
ones sent (first count wins), ``status`` complete, ``on_complete`` ran
exactly once and at most one caller was told ``batch_completed``.

Exit status 1 if any invariant is violated or a completion was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from async_batchstate import (
    AsyncBatchStateManager,
    BatchProgress,
    BatchStateError,
    CompletionStatus,
    MigrationMode,
    RetryPolicy,
)
from async_batchstate.instrumentation import AttemptFailed, ErrorKind, Event
from async_batchstate.testing import (
    EmulatorInfo,
    FaultyProxy,
    FirestoreEmulator,
    aclose_client,
    batch_violations,
    make_client,
)

PROJECT = "demo-async-batchstate-soak"


@dataclass
class Figures:
    """What the soak did and found."""

    duration_s: float = 0.0
    batches: int = 0
    batches_by_mode: dict[str, int] = field(default_factory=dict)
    completions: int = 0
    """Distinct completions recorded (players across all batches)."""
    calls: int = 0
    """record_completion calls, including duplicates and redeliveries."""
    duplicates_returned: int = 0
    redeliveries: int = 0
    cancellations: int = 0
    caller_errors: int = 0
    """Callers that got a typed error (then redelivered)."""
    caller_errors_by_type: dict[str, int] = field(default_factory=dict)
    untyped_errors: int = 0
    lost: int = 0
    """Completions never confirmed after every redelivery round."""
    retries: int = 0
    attempts: int = 0
    transactions: int = 0
    aborts_by_cause: dict[str, int] = field(default_factory=dict)
    attempt_errors: dict[str, int] = field(default_factory=dict)
    """Failed attempts by kind and exception type."""
    connection_resets: int = 0
    finalizations: int = 0
    violations: list[str] = field(default_factory=list)
    completions_per_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.lost == 0 and self.untyped_errors == 0


class Soak:
    def __init__(self, args: argparse.Namespace, client: Any, reader: Any) -> None:
        self.args = args
        self.client = client
        self.reader = reader
        self.rng = random.Random(args.seed)
        self.collection = f"soak_{uuid.uuid4().hex[:8]}"
        self.figures = Figures()
        self.on_complete: Counter[str] = Counter()
        self.told_complete: Counter[str] = Counter()
        self.done: list[tuple[str, MigrationMode, dict[str, int]]] = []
        policy = RetryPolicy(deadline=args.deadline, attempt_timeout=min(10.0, args.deadline))
        self.managers = {
            mode: AsyncBatchStateManager(
                client,
                collection=self.collection,
                mode=mode,
                retry=policy,
                on_complete=self._completed,
                hooks=[self._event],
            )
            for mode in MigrationMode
        }

    def _event(self, event: Event) -> None:
        if isinstance(event, AttemptFailed):
            error = event.error
            name = f"{event.kind.value}:{type(error).__name__}"
            if event.kind is ErrorKind.FATAL:
                name += f"({str(error)[:80]}; context={error.__context__!r:.80})"
            causes = self.figures.attempt_errors
            causes[name] = causes.get(name, 0) + 1

    def _completed(self, batch_id: str, _progress: BatchProgress) -> None:
        self.on_complete[batch_id] += 1

    async def call(
        self, manager: AsyncBatchStateManager, batch_id: str, player: str, count: int
    ) -> bool:
        """One delivery; True if confirmed (recorded or duplicate)."""
        self.figures.calls += 1
        try:
            result = await manager.record_completion(batch_id, player, count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            name = type(exc).__name__
            self.figures.caller_errors += 1
            errors = self.figures.caller_errors_by_type
            errors[name] = errors.get(name, 0) + 1
            if not isinstance(exc, BatchStateError):
                self.figures.untyped_errors += 1
            return False
        if result.status is CompletionStatus.DUPLICATE:
            self.figures.duplicates_returned += 1
        if result.batch_completed:
            self.told_complete[batch_id] += 1
        return True

    async def run_batch(self, number: int) -> None:
        args, rng = self.args, self.rng
        mode = list(MigrationMode)[number % len(MigrationMode)]
        manager = self.managers[mode]
        batch_id = f"b{number:06d}"
        size = rng.randint(args.min_players, args.max_players)
        counts = {f"p{i}-{uuid.uuid4().hex[:4]}": rng.randint(0, 50) for i in range(size)}
        await manager.create_batch(batch_id, expected_players=list(counts))
        confirmed: set[str] = set()

        async def deliver(player: str, delay: float) -> None:
            await asyncio.sleep(delay)
            if await self.call(manager, batch_id, player, counts[player]):
                confirmed.add(player)

        tasks: list[asyncio.Task[None]] = []
        for player in counts:
            tasks.append(asyncio.create_task(deliver(player, rng.uniform(0, args.spread))))
            if rng.random() < args.dup_rate:
                tasks.append(asyncio.create_task(deliver(player, rng.uniform(0, args.spread))))
        victims = [t for t in tasks if rng.random() < args.cancel_rate]
        for task in victims:
            task.get_loop().call_later(rng.uniform(0, args.spread + 0.2), task.cancel)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self.figures.cancellations += sum(isinstance(r, asyncio.CancelledError) for r in results)

        for _round in range(8):  # Pub/Sub redelivers what was not acknowledged
            missing = [p for p in counts if p not in confirmed]
            if not missing:
                break
            self.figures.redeliveries += len(missing)
            await asyncio.gather(*(deliver(p, 0.0) for p in missing))
        missing = [p for p in counts if p not in confirmed]
        self.figures.lost += len(missing)
        if missing:
            self.figures.violations.append(f"{batch_id}: {len(missing)} never confirmed")

        with contextlib.suppress(Exception):
            await manager.wait_until_complete(batch_id, timeout=60)
        late = [p for p in counts if rng.random() < args.late_dup_rate]
        for player in late:  # a late redelivery with another count: first count wins
            self.figures.calls += 1
            result = await manager.record_completion(batch_id, player, counts[player] + 1)
            if result.status is not CompletionStatus.DUPLICATE or result.batch_completed:
                self.figures.violations.append(f"{batch_id}: late redelivery of {player} {result}")
            self.figures.duplicates_returned += 1
        await self.check(batch_id, mode, counts)
        self.done.append((batch_id, mode, counts))
        self.figures.batches += 1
        by_mode = self.figures.batches_by_mode
        by_mode[mode.name] = by_mode.get(mode.name, 0) + 1
        self.figures.completions += len(counts)

    async def check(self, batch_id: str, mode: MigrationMode, counts: dict[str, int]) -> None:
        problems = await batch_violations(
            self.reader, self.collection, batch_id, mode, expected=counts, require_finalized=True
        )
        if self.on_complete[batch_id] != 1:
            problems.append(f"{batch_id}: on_complete ran {self.on_complete[batch_id]} times")
        if self.told_complete[batch_id] > 1:
            problems.append(f"{batch_id}: {self.told_complete[batch_id]} callers told complete")
        self.figures.violations.extend(problems)

    async def run(self, proxy: FaultyProxy | None) -> Figures:
        args = self.args
        started = time.monotonic()
        stop_at = started + args.duration
        number = 0
        running: set[asyncio.Task[None]] = set()
        next_reset = started + args.reset_every if args.reset_every else None
        last_report = started
        while time.monotonic() < stop_at or running:
            while time.monotonic() < stop_at and len(running) < args.concurrent_batches:
                task = asyncio.create_task(self.run_batch(number))
                number += 1
                running.add(task)
            done, running = await asyncio.wait(running, timeout=1.0)
            for task in done:
                if task.exception() is not None:
                    self.figures.violations.append(f"batch task crashed: {task.exception()!r}")
            now = time.monotonic()
            if proxy is not None and next_reset is not None and now >= next_reset:
                self.figures.connection_resets += await proxy.reset()
                next_reset = now + args.reset_every
            if now - last_report >= 30:
                last_report = now
                print(
                    f"  t={now - started:5.0f}s batches={self.figures.batches} "
                    f"completions={self.figures.completions} calls={self.figures.calls} "
                    f"errors={self.figures.caller_errors} "
                    f"violations={len(self.figures.violations)}",
                    flush=True,
                )
        self.figures.duration_s = time.monotonic() - started
        for manager in self.managers.values():
            await manager.aclose()
            stats = manager.stats()
            self.figures.retries += stats.retries
            self.figures.attempts += stats.attempts
            self.figures.transactions += stats.commits
            self.figures.finalizations += stats.batches_finalized
            for cause, n in stats.failures_by_cause.items():
                self.figures.aborts_by_cause[cause] = self.figures.aborts_by_cause.get(cause, 0) + n
        print(f"  final read-back of {len(self.done)} batches ...", flush=True)
        before = len(self.figures.violations)
        semaphore = asyncio.Semaphore(4)

        async def recheck(batch_id: str, mode: MigrationMode, counts: dict[str, int]) -> None:
            async with semaphore:
                self.figures.violations.extend(
                    await batch_violations(
                        self.reader,
                        self.collection,
                        batch_id,
                        mode,
                        expected=counts,
                        require_finalized=True,
                    )
                )

        await asyncio.gather(*(recheck(*d) for d in self.done))
        ran = sum(self.on_complete.values())
        if ran != len(self.done):
            self.figures.violations.append(f"on_complete ran {ran} times, {len(self.done)} batches")
        if len(self.figures.violations) > before:
            print("  final read-back found new violations", flush=True)
        self.figures.completions_per_s = self.figures.completions / self.figures.duration_s
        return self.figures


async def soak(args: argparse.Namespace, emulator: EmulatorInfo) -> Figures:
    reader = make_client(emulator)
    proxy: FaultyProxy | None = None
    try:
        if args.reset_every:
            proxy = await FaultyProxy(emulator.host).start()
            client = make_client(EmulatorInfo(proxy.host, emulator.project, None))
        else:
            client = make_client(emulator)
        try:
            return await Soak(args, client, reader).run(proxy)
        finally:
            await aclose_client(client)
    finally:
        if proxy is not None:
            await proxy.aclose()
        await aclose_client(reader)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    add = parser.add_argument
    add("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    add("--concurrent-batches", type=int, default=6)
    add("--min-players", type=int, default=20)
    add("--max-players", type=int, default=300)
    add("--spread", type=float, default=2.0, help="seconds over which a batch's callers start")
    add("--dup-rate", type=float, default=0.1, help="share of players delivered twice at once")
    add("--late-dup-rate", type=float, default=0.02, help="share redelivered after completion")
    add("--cancel-rate", type=float, default=0.05, help="share of callers cancelled")
    add("--reset-every", type=float, default=0.0, help="reset all connections every N s (0: off)")
    add("--deadline", type=float, default=20.0, help="retry deadline per completion, seconds")
    add("--seed", type=int, default=20240601)
    add("--emulator-host", default=None, help="host:port of a running emulator (else start one)")
    add("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.ERROR)
    own: FirestoreEmulator | None = None
    host = args.emulator_host
    if host is None:
        own = FirestoreEmulator().start()
        host = own.host
    try:
        print(f"soak: {args.duration:.0f}s against {host}", flush=True)
        figures = asyncio.run(soak(args, EmulatorInfo(host, PROJECT, None)))
    finally:
        if own is not None:
            own.stop()
    report = asdict(figures)
    report["violation_count"] = len(figures.violations)
    report["violations"] = figures.violations[:50]
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    print("RESULT:", "OK" if figures.ok else "FAILED", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, sort_keys=True)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
