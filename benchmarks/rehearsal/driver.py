"""The rehearsal's driver: emulators, proxy, fleet, publisher, the schedule, the checks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, Layout, MigrationMode
from async_batchstate.migration import backfill, cleanup_legacy, verify
from async_batchstate.testing import (
    EmulatorInfo,
    FirestoreEmulator,
    PubSubEmulator,
    aclose_client,
    batch_violations,
    make_client,
)

from .._delay import _cpu_seconds
from .fleet import Fleet, Slot, rest
from .plan import EVENTS, LEGACY, SUB_ONLY, Config, Event, Message, Traffic, traffic
from .proxy import ControlledProxy, controlled_proxy
from .records import Records

PROJECT = "demo-rehearsal"
ACK_DEADLINE = 10  # s, of every subscription (and each consumer's lease extension)
STRANDED = ACK_DEADLINE + 2.0  # s unacknowledged after publishing: the emulator stranded it
COMPLETIONS = "completions"


@dataclass(frozen=True)
class Emulator:
    """The Firestore emulator: where it listens, and its process if it is ours."""

    host: str
    pid: int | None

    def cpu_seconds(self) -> float | None:
        """CPU time it used so far (None when another process started it)."""
        return None if self.pid is None else _cpu_seconds(self.pid)


class Run:
    """One rehearsal in progress: what it started and what it saw."""

    def __init__(self, cfg: Config, run_dir: Path, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.say = log
        self.tag = uuid.uuid4().hex[:6]
        self.collection = f"rehearsal-{self.tag}"
        self.layout = Layout(self.collection, COMPLETIONS)
        self.plan: Traffic = traffic(cfg, self.tag)
        self.records = Records()
        self.events: list[dict[str, Any]] = []
        self.published: dict[str, float] = {}  # key -> when the publish call returned
        self.created: dict[str, float] = {}
        self.create_errors: list[str] = []
        self.creator_mode: MigrationMode = LEGACY
        self.fleet_mode: MigrationMode = LEGACY
        self.t0 = 0.0
        self.managers: dict[MigrationMode, AsyncBatchStateManager] = {}
        self.samples: list[dict[str, float]] = []
        self._slots: list[Slot] = []
        self.seeks: list[dict[str, float]] = []

    # -- helpers ---------------------------------------------------------------------

    def now(self) -> float:
        return time.time() - self.t0

    async def until(self, at: float) -> None:
        if (wait := self.t0 + at - time.time()) > 0:
            await asyncio.sleep(wait)

    def manager(self, client: AsyncClient, mode: MigrationMode) -> AsyncBatchStateManager:
        """The driver's own manager in ``mode`` (no callbacks: they are the fleet's)."""
        if mode not in self.managers:
            self.managers[mode] = AsyncBatchStateManager(
                client,
                collection=self.collection,
                mode=mode,
                callback_sweep_interval=None,
                validation_rate=0.0,
            )
        return self.managers[mode]

    def read_records(self, fleet: Fleet) -> None:
        self.records.read([p.log for p in fleet.procs])

    # -- the run -----------------------------------------------------------------------

    async def run(
        self, firestore_host: str | None = None, pubsub_host: str | None = None
    ) -> dict[str, Any]:
        """Start (or attach to) both emulators and the proxy, then play the run."""
        with contextlib.ExitStack() as stack:
            if firestore_host is None:
                firestore = stack.enter_context(FirestoreEmulator())
                emulator = Emulator(firestore.host, firestore.pid)
            else:
                emulator = Emulator(firestore_host, None)
            if pubsub_host is None:
                pubsub = stack.enter_context(PubSubEmulator())
            else:
                pubsub = PubSubEmulator.attach(pubsub_host)
            proxy = stack.enter_context(controlled_proxy(emulator.host, self.cfg.rtt_ms))
            return await self._run(emulator, pubsub, proxy)

    async def _run(
        self, firestore: Emulator, pubsub: PubSubEmulator, proxy: ControlledProxy
    ) -> dict[str, Any]:
        cfg = self.cfg
        fleet = Fleet(
            base_env={
                **os.environ,
                "FIRESTORE_EMULATOR_HOST": proxy.host,
                "PUBSUB_EMULATOR_HOST": pubsub.host,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "REHEARSAL_COLLECTION": self.collection,
            },
            pubsub_host=pubsub.host,
            project=PROJECT,
            run_dir=self.run_dir,
            lease=cfg.lease,
        )
        proxied = make_client(EmulatorInfo(proxy.host, PROJECT, None))
        direct = make_client(EmulatorInfo(firestore.host, PROJECT, None))
        try:
            self._subscriptions(fleet, pubsub)
            self._slots = fleet.slots
            self.say(f"starting {cfg.processes} coordinators (LEGACY)")
            await asyncio.gather(*(fleet.start(s, LEGACY) for s in fleet.slots))
            await proxied.collection(self.collection).document("warm").get()
            cpu0 = firestore.cpu_seconds()
            self.t0 = time.time() + 1.0
            self.say(
                f"publishing {len(self.plan.messages)} messages for {len(self.plan.batches)} "
                f"batches over {cfg.duration:.0f} s"
            )
            kicker = asyncio.create_task(self._kick(fleet, pubsub))
            await asyncio.gather(
                self._create(proxied),
                self._publish(pubsub),
                self._schedule(fleet, proxy, proxied),
                self._sample(fleet, firestore, proxy),
            )
            self.say("publishing over: waiting for every message and callback")
            try:
                settled = await self._settle(fleet, direct)
            finally:
                kicker.cancel()
            ends = await fleet.shutdown()
            self.events.append({"t": self.now(), "action": "shutdown", "detail": ends})
            self.read_records(fleet)
            checks = await self._check(direct)
            cpu = {
                "firestore_emulator_s": (
                    None if cpu0 is None else (firestore.cpu_seconds() or 0.0) - cpu0
                ),
                "proxy_s": proxy.cpu_seconds(),
            }
            return {
                "tag": self.tag,
                "settled": settled,
                "checks": checks,
                "cpu": cpu,
                "processes": [
                    {
                        "name": p.name,
                        "mode": p.mode.name,
                        "started": p.started - self.t0,
                        "ended": None if p.ended is None else p.ended - self.t0,
                        "how": p.how or "end",
                    }
                    for p in fleet.procs
                ],
            }
        finally:
            fleet.kill_all()
            for manager in self.managers.values():
                await manager.aclose(drain_timeout=5)
            await aclose_client(proxied)
            await aclose_client(direct)

    def _subscriptions(self, fleet: Fleet, pubsub: PubSubEmulator) -> None:
        """A topic and subscription per slot (the publisher routes each message to one).

        One per slot, pull slots included: the emulator keeps routing messages to a
        streaming pull that was closed (a drained or killed process), each held there
        for an ack deadline before it tries again (see the README); a slot of its own
        keeps one slot's closed streams from starving the others.
        """
        cfg = self.cfg
        for i in range(cfg.processes):
            kind = "push" if i >= cfg.processes - cfg.push else "pull"
            topic = f"rh-{kind}{i}-{self.tag}"
            pubsub.create_topic(PROJECT, topic)
            push = {"push_endpoint": "http://127.0.0.1:9/push", "retry_backoff": (0.5, 5.0)}
            sub = pubsub.create_subscription(
                PROJECT,
                f"rh-{kind}{i}-sub-{self.tag}",
                topic,
                ack_deadline=ACK_DEADLINE,
                **(push if kind == "push" else {}),  # type: ignore[arg-type]
            )
            fleet.slots.append(Slot(i, kind, topic, sub))

    async def _create(self, client: AsyncClient) -> None:
        """Create every batch at its time, in the mode the coordinators are deployed in."""
        tasks = []

        async def one(batch_id: str, players: tuple[str, ...], deadline: float | None) -> None:
            when = (
                None if deadline is None else dt.datetime.fromtimestamp(self.t0 + deadline, dt.UTC)
            )
            try:
                await self.manager(client, self.creator_mode).create_batch(
                    batch_id, expected_players=players, deadline=when
                )
                self.created[batch_id] = self.now()
            except Exception as exc:
                self.create_errors.append(f"{batch_id}: {exc!r}")

        for b in self.plan.batches:
            await self.until(b.created)
            tasks.append(asyncio.create_task(one(b.batch_id, b.players, b.deadline)))
        await asyncio.gather(*tasks)

    async def _publish(self, pubsub: PubSubEmulator) -> None:
        """Publish open loop: every 20 ms, what is due, whatever the fleet is doing."""
        topics = {s.index: s.topic for s in self._slots}
        messages = self.plan.messages
        i = 0
        while i < len(messages):
            await asyncio.sleep(0.02)
            now = self.now()
            due: dict[str, list[Message]] = defaultdict(list)
            while i < len(messages) and messages[i].at <= now:
                due[topics[messages[i].route]].append(messages[i])
                i += 1
            calls = [asyncio.to_thread(self._send, pubsub.host, t, ms) for t, ms in due.items()]
            await asyncio.gather(*calls)

    def _send(self, host: str, topic: str, messages: list[Message]) -> None:
        body = {
            "messages": [
                {"data": base64.b64encode(m.data()).decode(), "attributes": {"k": m.key}}
                for m in messages
            ]
        }
        rest(host, "POST", f"projects/{PROJECT}/topics/{topic}:publish", body)
        t = self.now()
        for m in messages:
            self.published[m.key] = t

    async def _sample(self, fleet: Fleet, firestore: Emulator, proxy: ControlledProxy) -> None:
        """CPU of the emulator and the proxy, and the host's load, every 5 s."""
        end = self.cfg.duration
        while self.now() < end:
            await asyncio.sleep(5)
            self.samples.append(
                {
                    "t": self.now(),
                    "firestore_cpu_s": firestore.cpu_seconds(),
                    "proxy_cpu_s": proxy.cpu_seconds(),
                    "load1": os.getloadavg()[0],
                    "processes": sum(1 for s in fleet.slots if s.proc is not None),
                }
            )

    async def _kick(self, fleet: Fleet, pubsub: PubSubEmulator) -> None:
        """Seek a subscription back to the start when the emulator strands its messages.

        The emulator (0.8.x) strands some messages for good: those it was pushing
        to an endpoint that went away, and those it routed to a streaming pull
        that was closed (it keeps routing to closed streams). Real Pub/Sub
        redelivers them when their ack deadline passes. Here, a message
        unacknowledged ``STRANDED`` s after its publish makes the driver seek its
        subscription to the run's start: every unacknowledged message is
        delivered again (in-flight ones too: duplicates, which the library
        absorbs). Their latency counts, seek included.
        """
        pending: dict[int, dict[str, Message]] = defaultdict(dict)
        next_message = 0
        last: dict[int, float] = {}
        when = dt.datetime.fromtimestamp(self.t0 - 5, dt.UTC).isoformat().replace("+00:00", "Z")
        while True:
            await asyncio.sleep(1.0)
            self.read_records(fleet)
            messages = self.plan.messages
            while next_message < len(messages) and messages[next_message].key in self.published:
                m = messages[next_message]
                pending[m.route][m.key] = m
                next_message += 1
            now = self.now()
            for slot in fleet.slots:
                waiting = pending[slot.index]
                for key in [k for k in waiting if k in self.records.acks]:
                    del waiting[key]
                old = [k for k in waiting if now - self.published[k] > STRANDED]
                if old and now - last.get(slot.index, -STRANDED) > STRANDED:
                    last[slot.index] = now
                    await asyncio.to_thread(
                        rest, pubsub.host, "POST", f"{slot.subscription}:seek", {"time": when}
                    )
                    self.seeks.append({"t": now, "slot": slot.index, "stranded": len(old)})

    # -- the schedule ------------------------------------------------------------------

    async def _schedule(self, fleet: Fleet, proxy: ControlledProxy, client: AsyncClient) -> None:
        for event in EVENTS:
            await self.until(event.at * self.cfg.duration)
            began = self.now()
            self.say(f"{began:6.1f}s {event.action} {event.mode.name if event.mode else ''}")
            detail = await self._play(event, fleet, proxy, client)
            self.events.append(
                {
                    "t": began,
                    "end": self.now(),
                    "action": event.action,
                    "mode": event.mode.name if event.mode else None,
                    "detail": detail,
                }
            )

    async def _play(
        self, event: Event, fleet: Fleet, proxy: ControlledProxy, client: AsyncClient
    ) -> Any:
        slots = fleet.slots
        a = event.action
        if a == "roll":
            assert event.mode is not None
            self.creator_mode = event.mode
            out = [await fleet.deploy(s, event.mode) for s in slots]
            self.fleet_mode = event.mode
            return out
        if a in ("rollback", "forward"):
            assert event.mode is not None
            half = slots[: max(1, len(slots) // 2)]
            return [await fleet.deploy(s, event.mode) for s in half]
        if a == "kill":
            slot = slots[0]
            mode = slot.proc.mode if slot.proc else self.fleet_mode
            ended = await fleet.stop(slot, signal.SIGKILL)
            await fleet.start(slot, mode)
            return ended
        if a == "term":
            slot = slots[-1]
            mode = slot.proc.mode if slot.proc else self.fleet_mode
            ended = await fleet.stop(slot, signal.SIGTERM)  # scale-in: drain, exit
            await asyncio.sleep(2.0)
            await fleet.start(slot, mode)  # and scale out again
            return ended
        if a in ("cut", "blackhole"):
            await proxy.command(a)
            await asyncio.sleep(event.seconds)
            await proxy.command("restore")
            return {"seconds": event.seconds}
        if a == "backfill":
            summary = await backfill(client, self.layout, self.fleet_mode)
            return _summary(summary)
        if a == "verify":
            assert event.mode is not None
            checked = await verify(client, self.layout, event.mode)
            return {
                "checked": checked.checked,
                "inconsistent": [
                    {"batch_id": r.batch_id, "problems": list(r.problems)}
                    for r in checked.inconsistent
                ],
                "failures": list(checked.failures),
            }
        if a == "cleanup":
            summary = await cleanup_legacy(client, self.layout, SUB_ONLY)
            return _summary(summary)
        raise AssertionError(a)

    # -- the end -----------------------------------------------------------------------

    async def _settle(self, fleet: Fleet, client: AsyncClient) -> dict[str, Any]:
        """Until every message is acknowledged and every batch's callback ran (or a timeout)."""
        began = time.monotonic()
        keys = {m.key for m in self.plan.messages}
        limit = self.cfg.settle
        while time.monotonic() - began < limit:
            self.read_records(fleet)
            if keys <= self.records.acks.keys():
                break
            await asyncio.sleep(1.0)
        unacked = sorted(keys - self.records.acks.keys())
        # A read through the public API moves an overdue batch to expired (its owed
        # on_expired then runs in the fleet: the next touch or the sweep).
        reader = self.manager(client, SUB_ONLY)
        for b in self.plan.batches:
            if b.batch_id in self.created:
                await reader.get_progress(b.batch_id, include_players=False)
        waiting = {b.batch_id for b in self.plan.batches if b.batch_id in self.created}
        while time.monotonic() - began < limit + 4 * self.cfg.lease + 10:
            self.read_records(fleet)
            waiting -= self.records.callbacks.keys()
            if not waiting:
                break
            await asyncio.sleep(1.0)
        return {
            "seconds": time.monotonic() - began,
            "unacked": unacked[:20],
            "unacked_count": len(unacked),
            "callbacks_missing": sorted(waiting)[:20],
        }

    def pending(self) -> dict[str, set[str]]:
        """Per batch, the completions none of whose messages was acknowledged (still in Pub/Sub)."""
        acked: dict[tuple[str, str], bool] = {}
        for m in self.plan.messages:
            if m.stored:
                key = (m.batch_id, m.player)
                acked[key] = acked.get(key, False) or m.key in self.records.acks
        out: dict[str, set[str]] = defaultdict(set)
        for (batch_id, player), done in acked.items():
            if not done:
                out[batch_id].add(player)
        return out

    async def _check(self, client: AsyncClient) -> dict[str, Any]:
        """Every batch with the invariant checker and the public API.

        A batch with a completion still in Pub/Sub (no message of it acknowledged
        by the end: the emulator strands some, see the README) is checked for
        consistency only; the others for exact contents, status and finalization.
        """
        reader = self.manager(client, SUB_ONLY)
        expected: dict[str, dict[str, int]] = defaultdict(dict)
        for m in self.plan.messages:
            if m.stored:
                expected[m.batch_id].setdefault(m.player, m.count)
        pending = self.pending()
        out: dict[str, Any] = {}
        for b in self.plan.batches:
            if b.batch_id not in self.created:
                out[b.batch_id] = {"problems": ["never created"], "stored": {}, "pending": True}
                continue
            held = b.batch_id in pending
            problems = await batch_violations(
                client,
                self.collection,
                b.batch_id,
                SUB_ONLY,
                expected=None if held else expected[b.batch_id],
                completions_subcollection=COMPLETIONS,
                require_finalized=True,
            )
            progress = await reader.get_progress(b.batch_id, include_players=False)
            want = "expired" if b.expires else "complete"
            players = expected[b.batch_id]
            if not held and progress.status != want:
                problems.append(f"{b.batch_id}: status {progress.status}, planned {want}")
            if not held and (progress.completed_count, progress.total_predictions) != (
                len(players),
                sum(players.values()),
            ):
                problems.append(
                    f"{b.batch_id}: progress {progress.completed_count}/"
                    f"{progress.total_predictions}, expected {len(players)}/{sum(players.values())}"
                )
            ref = client.collection(self.collection).document(b.batch_id)
            stored = {
                d.id: int((d.to_dict() or {}).get("predictions_count", -1))
                async for d in ref.collection(COMPLETIONS).stream()
            }
            out[b.batch_id] = {
                "problems": problems,
                "status": progress.status,
                "finalization_key": progress.finalization_key,
                "stored": stored,
                "pending": held,
            }
        return out


def _summary(summary: Any) -> dict[str, Any]:
    data = asdict(summary)
    for key in ("cleaned", "unknown_counts"):
        if key in data and isinstance(data[key], list | tuple):
            data[key] = len(data[key])
    return data


async def rehearse(
    cfg: Config,
    run_dir: Path,
    say: Callable[[str], None],
    *,
    firestore_host: str | None = None,
    pubsub_host: str | None = None,
) -> tuple[Run, dict[str, Any]]:
    """Play the rehearsal; the run (plan, records, events) and the end checks."""
    run = Run(cfg, run_dir, say)
    result = await run.run(firestore_host, pubsub_host)
    return run, result
