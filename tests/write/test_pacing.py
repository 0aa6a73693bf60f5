"""Fleet pacing (``document_write_rate``): the control law and the lane's pause, no I/O.

The law is checked on a simulated fleet (fake time, seeded): N processes, each with
its own ``Pacer``, Poisson arrivals and one write in flight, write one hot document
that serves C Commits per second in arrival order (the model ``WriteCeilingProxy``
applies); a share of the Commits is refused whole (a redelivery's completion
document exists) and sent again, and every landed write reads the batch's count
back. Unpaced, the document holds a standing queue of N Commits; paced, the fleet's
Commits settle at the rate asked for and each process writes about every
N * k / rate seconds. ``test_pacing_emulator.py`` checks what is written.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from dataclasses import dataclass, field

import pytest

from async_batchstate import CompletionStatus, RetryPolicy
from async_batchstate._clock import Clock, SystemClock
from async_batchstate._write.group import PlayerCompletion
from async_batchstate._write.lanes import Lane, Pending
from async_batchstate._write.limits import AdaptiveLimit
from async_batchstate._write.pacing import MAX_INTERVAL, Pacer
from async_batchstate._write.runner import GroupRunner
from async_batchstate.testing import FakeClock

from .test_lanes import FakeRunner, submit

CEILING, RATE, REFUSED = 100.0, 80.0, 0.1


@dataclass
class Fleet:
    """What a simulated run measured over its second half."""

    commits_per_s: float
    mean_wait: float
    """Seconds a Commit waited at the document for the ones ahead of it."""
    p50: float
    p99: float
    """Completion latency, seconds from its arrival to its write's answer."""
    intervals: list[float] = field(default_factory=list)
    """Mean seconds between two write starts, per process."""


def simulate(
    processes: int,
    offered: float,
    rate: float | None,
    *,
    seconds: float = 30.0,
    rtt: float = 0.004,
    seed: int = 1,
) -> Fleet:
    """``processes`` of equal load sharing ``offered`` completions/s on one hot batch."""
    rng = random.Random(seed)
    clock = FakeClock(start=0.0)
    pacers = [None if rate is None else Pacer(rate, clock) for _ in range(processes)]
    events: list[tuple[float, int, str, int, int]] = []
    seq = 0

    def push(at: float, kind: str, p: int, data: int = 0) -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, p, data))
        seq += 1

    each = offered / processes
    queued: list[list[float]] = [[] for _ in range(processes)]
    flying: list[list[float] | None] = [None] * processes
    due: list[float | None] = [None] * processes
    starts: list[list[float]] = [[] for _ in range(processes)]
    free_at, count, commits, waits, latencies = 0.0, 0, 0, [], []
    half = seconds / 2

    def try_start(p: int, now: float) -> None:
        if flying[p] is not None or not queued[p]:
            return
        pacer = pacers[p]
        pause = 0.0 if pacer is None else pacer.delay(len(queued[p]))
        if pause > 0:
            if due[p] is None:
                due[p] = now + pause
                push(now + pause, "due", p)
            return
        due[p] = None
        if pacer is not None:
            pacer.started()
        starts[p].append(now)
        flying[p], queued[p] = queued[p], []
        push(now + rtt / 2, "reach", p)

    for p in range(processes):
        push(rng.expovariate(each), "arrive", p)
    while events:
        at, _, kind, p, data = heapq.heappop(events)
        if at > seconds:
            break
        clock.advance(max(0.0, at - clock.monotonic()))
        pacer = pacers[p]
        if kind == "arrive":
            queued[p].append(at)
            push(at + rng.expovariate(each), "arrive", p)
            if pacer is not None:
                pacer.arrived()
            try_start(p, at)
        elif kind == "due":
            due[p] = None
            try_start(p, at)
        elif kind == "reach":  # served in arrival order, one slot of 1 / CEILING each
            begin = max(at, free_at)
            free_at = begin + 1.0 / CEILING
            if at > half:
                waits.append(begin - at)
                commits += 1
            refused = rng.random() < REFUSED
            if not refused:
                count += len(flying[p] or [])
            push(free_at + rtt / 2, "answer", p, -1 if refused else count)
        else:  # answered
            if pacer is not None:
                pacer.sent(1)
            if data < 0:  # refused whole: the write sends it again at once
                push(at + rtt / 2, "reach", p)
                continue
            if pacer is not None:
                pacer.landed(data, len(flying[p] or []))
            latencies += [at - t for t in flying[p] or [] if t > half]
            flying[p] = None
            try_start(p, at)
    latencies.sort()
    gaps = [
        (late[-1] - late[0]) / (len(late) - 1)
        for late in ([t for t in s if t > half] for s in starts)
        if len(late) > 1
    ]
    return Fleet(
        commits / (seconds - half),
        sum(waits) / len(waits),
        latencies[len(latencies) // 2],
        latencies[int(0.99 * len(latencies))],
        gaps,
    )


@pytest.mark.parametrize("processes", [4, 8, 16])
def test_unpaced_a_fleet_of_n_queues_n_commits_at_the_document(processes: int) -> None:
    """The model behind the fleet-size benchmark: each Commit waits about (N - 1) / C,
    the document serves its ceiling, and a completion waits about 2N / C."""
    fleet = simulate(processes, 800.0, None)
    assert fleet.commits_per_s == pytest.approx(CEILING, rel=0.03)
    assert fleet.mean_wait == pytest.approx((processes - 1) / CEILING, rel=0.2)
    assert fleet.p50 == pytest.approx(2 * processes / CEILING, rel=0.3)


@pytest.mark.parametrize("processes", [4, 8, 16, 32])
def test_paced_the_fleet_settles_at_the_rate_with_equal_intervals(processes: int) -> None:
    """Commits (refused ones included) at the rate, no standing queue at the document,
    every process writing about every N * k / rate seconds (k: Commits per landed
    write), and completions waiting less than unpaced at the median and at p99."""
    paced = simulate(processes, 800.0, RATE)
    unpaced = simulate(processes, 800.0, None)
    assert paced.commits_per_s == pytest.approx(RATE, rel=0.15)  # a full group goes early
    assert paced.mean_wait < 0.5 * unpaced.mean_wait
    expected = processes * (1 / (1 - REFUSED)) / RATE
    assert len(paced.intervals) == processes
    mean = sum(paced.intervals) / processes
    assert mean == pytest.approx(min(expected, MAX_INTERVAL), rel=0.2)
    assert max(paced.intervals) < 1.6 * min(paced.intervals)  # equal loads, equal shares
    assert paced.p50 < 0.8 * unpaced.p50
    assert paced.p99 < 0.8 * unpaced.p99


@pytest.mark.parametrize("processes", [4, 16])
def test_a_fleet_under_the_rate_is_never_held_back(processes: int) -> None:
    """50 completions/s against a rate of 80 Commits/s: latencies as unpaced (within the
    odd pause where a measured second of the fleet came close to the rate)."""
    paced = simulate(processes, 50.0, RATE)
    unpaced = simulate(processes, 50.0, None)
    assert paced.p50 == pytest.approx(unpaced.p50, rel=0.2)
    assert paced.p99 == pytest.approx(unpaced.p99, rel=0.2)


def test_nothing_is_held_before_the_fleet_is_measured() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock)
    for _ in range(100):
        pacer.arrived()
    pacer.started()
    assert (0.0, 0.0) == (pacer.group, pacer.delay(1))
    pacer.landed(0, 0)
    clock.advance(0.1)
    pacer.landed(500, 0)  # under the measuring window: not yet a rate
    assert 0.0 == pacer.delay(1)


def test_the_fleets_rate_sets_the_group_and_the_own_rate_the_interval() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock)
    pacer.landed(0, 0)
    clock.advance(0.5)
    pacer.landed(500, 0)  # the fleet: 1,000 completions/s -> groups of 10 for 100 Commits/s
    assert pacer.group == pytest.approx(10.0)
    for _ in range(100):  # this process: about 100 completions/s -> 10 every 0.1 s
        pacer.arrived()
        clock.advance(0.01)
    pacer.started()
    assert pacer.group == pytest.approx(10.0)  # refreshed 1 s ago: not faded yet
    assert pacer.interval == pytest.approx(0.1, rel=0.2)  # own rate: 86/s after 1 s
    assert pacer.delay(3) == pytest.approx(pacer.interval)
    assert 0.0 == pacer.delay(20)  # twice the group: arrivals outran the estimate


def test_refused_commits_count_as_the_documents_writes() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock)
    pacer.landed(0, 0)
    for _ in range(50):  # every write needs two Commits
        clock.advance(0.5)
        pacer.sent(2)
        pacer.landed(int(clock.monotonic() * 1000), 0)
    assert pacer.group == pytest.approx(20.0, rel=0.01)


def test_redeliveries_queued_here_count_in_the_group() -> None:
    """11 completions queued for every 10 counted (a redelivery each): groups 10 % larger,
    so the Commits stay at the rate although every group carries its redeliveries."""
    clock = FakeClock()
    pacer = Pacer(100.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    for _ in range(110):
        pacer.arrived()
    pacer.landed(1_000, 100)
    assert pacer.group == pytest.approx(11.0)


def test_answers_that_say_nothing_new_change_nothing() -> None:
    """No count (a write found again after a lost answer) or a batch made again under
    the same id (its count restarts): no rate is measured from them."""
    clock = FakeClock()
    pacer = Pacer(100.0, clock)
    pacer.landed(1_000, 0)
    clock.advance(1.0)
    pacer.landed(None, 0)
    pacer.landed(5, 0)  # made again: measured from here
    assert 0.0 == pacer.group
    clock.advance(1.0)
    pacer.landed(205, 0)
    assert pacer.group == pytest.approx(2.0, rel=0.1)


def test_a_batch_that_went_quiet_holds_nothing_back() -> None:
    """Hot (groups of 24), then 60 s without a write of this process, then a trickle far
    under the rate: its writes go at once (the old rate fades; the span replaces it)."""
    clock = FakeClock()
    pacer = Pacer(100.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(2_400, 0)
    assert pacer.group == pytest.approx(24.0)
    clock.advance(60.0)
    pacer.arrived()
    pacer.started()
    assert pacer.group < 1e-6
    assert 0.0 == pacer.delay(1)
    clock.advance(0.3)
    pacer.landed(2_420, 1)  # 20 completions in 60 s
    pacer.arrived()
    assert pacer.group < 0.01
    assert 0.0 == pacer.delay(1)


def test_a_clock_below_zero_is_no_overflow() -> None:
    clock = FakeClock(start=-1_000.0)
    pacer = Pacer(10.0, clock)
    pacer.arrived()
    pacer.arrived()
    assert pacer.interval == 0.0


def test_a_slow_process_waits_at_most_max_interval() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(10_000, 0)
    pacer.arrived()
    pacer.started()
    assert pacer.delay(1) == MAX_INTERVAL


def paced_lane(runner: FakeRunner, clock: Clock, pacer: Pacer, *, linger: float = 0.0) -> Lane:
    return Lane(
        "b",
        runner,
        max_group_size=100,
        limit=AdaptiveLimit(1, initial=1),
        linger=linger,
        on_idle=lambda lane: None,
        clock=clock,
        pacer=pacer,
    )


async def test_a_paced_lane_holds_its_next_write_and_the_completions_join_it() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(100, 0)  # the fleet: 100 completions/s -> groups of 10 for 10 Commits/s
    for _ in range(20):  # this process: about 20/s -> 10 every 0.5 s
        pacer.arrived()
        clock.advance(0.05)
    runner = FakeRunner(hold=False)
    lane = paced_lane(runner, clock, pacer)
    submit(lane, "a")
    await runner.started(1)
    start = clock.monotonic()
    submit(lane, "b")
    submit(lane, "c")
    await lane.drain()

    assert [["a"], ["b", "c"]] == runner.groups
    assert 0.3 < clock.monotonic() - start <= MAX_INTERVAL  # about 10 / 20 per s


async def test_a_paced_lane_writes_at_once_when_twice_its_group_is_queued() -> None:
    """Its arrivals outran its estimate of them: the pause ends."""
    clock = FakeClock()
    pacer = Pacer(10.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(50, 0)  # groups of 5 for 10 Commits/s
    runner = FakeRunner(hold=False)
    lane = paced_lane(runner, clock, pacer)
    submit(lane, "a")
    await runner.started(1)
    start = clock.monotonic()
    submit(lane, "b", "c")
    await asyncio.sleep(0)
    assert 1 == len(runner.groups)  # pausing: 2 of 5
    more = [f"q{i}" for i in range(8)]
    submit(lane, *more)
    await lane.drain()

    assert [["a"], ["b", "c", *more]] == runner.groups
    assert start == clock.monotonic()


class StuckClock(FakeClock):
    """A clock whose sleeps never end: only a wake-up ends a pause."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


async def test_hurry_starts_a_paced_write_now() -> None:
    """A close does not wait for pacing: a writer pausing starts at once."""
    clock = StuckClock()
    pacer = Pacer(1.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(100, 0)
    runner = FakeRunner(hold=False)
    lane = paced_lane(runner, clock, pacer)
    pacer.started()
    waiting = submit(lane, "a")
    await asyncio.sleep(0)
    assert [] == runner.groups
    lane.hurry()
    async with asyncio.timeout(5):  # the pause would never end by itself
        await lane.drain()

    assert [["a"]] == runner.groups
    assert CompletionStatus.RECORDED is waiting[0].future.result().status


async def test_linger_still_gathers_a_group_with_pacing_on() -> None:
    """Pacing on but not binding (nothing measured): linger waits its whole time, as
    without pacing, and ten completions 5 ms apart go out as one group."""
    runner = FakeRunner(hold=False)
    clock = SystemClock()
    lane = paced_lane(runner, clock, Pacer(80.0, clock), linger=0.5)
    for i in range(10):
        submit(lane, f"p{i}")
        await asyncio.sleep(0.005)
    await lane.drain()

    assert [[f"p{i}" for i in range(10)]] == runner.groups


async def test_a_pause_leaves_the_earliest_caller_half_its_time() -> None:
    """Paced for 1 s, a caller with 0.2 s left: the writer waits 0.1 s, not 1 s."""
    clock = FakeClock()
    pacer = Pacer(1.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(100, 0)  # groups of 100 for 1 Commit/s: an interval of 1 s
    runner = FakeRunner(hold=False)
    lane = paced_lane(runner, clock, pacer)
    submit(lane, "a")
    await runner.started(1)
    start = clock.monotonic()
    lane.submit(Pending(PlayerCompletion("b", 1), deadline=start + 60.0))
    lane.submit(Pending(PlayerCompletion("c", 1), deadline=start + 0.2))  # the earliest
    await lane.drain()

    assert [["a"], ["b", "c"]] == runner.groups
    assert clock.monotonic() - start == pytest.approx(0.1)


async def test_a_caller_arriving_during_a_pause_with_little_time_left_ends_it() -> None:
    """Paused for 1 s for a caller with a minute left; one with 0.3 s left arrives: the
    pause would take more than half its time, so the group goes now (the clock's sleeps
    never end here: only a wake-up ends the pause)."""
    clock = StuckClock()
    pacer = Pacer(1.0, clock)
    pacer.landed(0, 0)
    clock.advance(1.0)
    pacer.landed(100, 0)  # an interval of 1 s
    runner = FakeRunner(hold=False)
    lane = paced_lane(runner, clock, pacer)
    submit(lane, "a")
    await runner.started(1)
    now = clock.monotonic()
    lane.submit(Pending(PlayerCompletion("b", 1), deadline=now + 60.0))
    for _ in range(5):
        await asyncio.sleep(0)  # the writer is pausing
    assert 1 == len(runner.groups)
    lane.submit(Pending(PlayerCompletion("c", 1), deadline=now + 0.3))
    async with asyncio.timeout(5):
        await lane.drain()

    assert [["a"], ["b", "c"]] == runner.groups


def test_the_pacer_of_a_batch_being_written_outlives_the_bound() -> None:
    """Past 10,000 batches the runner forgets pacers, but never one a lane is using."""
    runner = GroupRunner(
        None,  # type: ignore[arg-type]  # no write happens here
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        retry=RetryPolicy(),
        clock=FakeClock(),
        rng=random.Random(0),
        rate=None,
        max_group_size=10,
        max_in_flight=1,
        linger=0.0,
        expected_count=None,  # type: ignore[arg-type]
        write_rate=10.0,
    )
    lane = runner._lane("hot")
    for i in range(10_000):
        runner._pacer(f"b{i}")
    assert lane.pacer is runner._pacers["hot"]
    assert len(runner._pacers) < 10_000
