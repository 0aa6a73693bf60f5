"""The per-batch lanes (group commit), with a fake group runner: no emulator, no I/O.

The fake runner records each group it is handed and, unless told to answer at
once, holds it "in flight" until the test releases it, so every interleaving
below is decided by events, never by timing.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from async_batchstate import CompletionResult, CompletionStatus
from async_batchstate._write.group import PlayerCompletion
from async_batchstate._write.lanes import Lane, Pending
from async_batchstate._write.limits import AdaptiveLimit


class FakeRunner:
    """A ``RunGroup`` that records groups and holds each until ``release``d."""

    def __init__(self, *, hold: bool = True, fail: bool = False) -> None:
        self.hold = hold
        self.fail = fail
        self.groups: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled = 0
        self._gates: list[asyncio.Event] = []
        self._arrived = asyncio.Event()

    async def __call__(self, batch_id: str, group: list[Pending], limit: AdaptiveLimit) -> None:
        self.groups.append([p.completion.player for p in group])
        gate = asyncio.Event()
        self._gates.append(gate)
        self._arrived.set()
        if self.fail:
            raise RuntimeError("a bug in the group runner")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold:
                await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        for p in group:
            p.resolve(
                CompletionResult(
                    batch_id, p.completion.player, CompletionStatus.RECORDED, group_size=len(group)
                )
            )

    async def started(self, n: int) -> None:
        """Until ``n`` groups have been handed to the runner."""
        async with asyncio.timeout(5):
            while len(self.groups) < n:
                self._arrived.clear()
                await self._arrived.wait()

    def release(self, index: int) -> None:
        """Let group ``index`` (0-based, in start order) finish."""
        self._gates[index].set()


def make_lane(
    runner: FakeRunner,
    *,
    limit: int = 1,
    max_group_size: int = 100,
    idle: list[Lane] | None = None,
) -> Lane:
    return Lane(
        "b",
        runner,
        max_group_size=max_group_size,
        limit=AdaptiveLimit(limit, initial=limit),
        linger=0.0,
        on_idle=(idle if idle is not None else []).append,
    )


def pending(player: str) -> Pending:
    return Pending(PlayerCompletion(player, 1), deadline=float("inf"))


def submit(lane: Lane, *players: str) -> list[Pending]:
    made = [pending(p) for p in players]
    for p in made:
        lane.submit(p)
    return made


async def test_completions_queued_during_a_write_go_out_together_in_the_next_group() -> None:
    """One write in flight: everything that queues meanwhile is the next group, in order."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=1)
    submit(lane, "p0")
    await runner.started(1)
    later = submit(lane, "p1", "p2", "p3", "p4")
    runner.release(0)
    await runner.started(2)
    runner.release(1)
    await lane.drain()

    assert [["p0"], ["p1", "p2", "p3", "p4"]] == runner.groups
    assert [4, 4, 4, 4] == [p.future.result().group_size for p in later]


async def test_groups_never_exceed_max_group_size() -> None:
    """Seven queued completions with max_group_size=3 go out as 3, 3 and 1."""
    runner = FakeRunner(hold=False)
    lane = make_lane(runner, limit=1, max_group_size=3)
    submit(lane, *(f"p{i}" for i in range(7)))
    await lane.drain()

    assert [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]] == runner.groups


async def test_in_flight_writes_never_exceed_the_limit() -> None:
    """Limit 3, ten single-completion groups: three in flight, the rest queued, never more."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=3, max_group_size=1)
    callers = submit(lane, *(f"p{i}" for i in range(10)))
    await runner.started(3)

    assert (3, 7) == (lane.in_flight, len(lane.queue))
    for i in range(10):
        runner.release(i)
        await runner.started(min(i + 4, 10))
    await lane.drain()

    assert 3 == runner.most_in_flight
    assert [f"p{i}" for i in range(10)] == [p for g in runner.groups for p in g]
    assert all(p.future.done() for p in callers)


async def start_one_group(lane: Lane, runner: FakeRunner, player: str) -> None:
    """Submit ``player`` and wait until its group is in flight.

    One queued completion starts one writer, whatever the limit: no spare writer
    holds a slot of the limit.
    """
    submit(lane, player)
    await runner.started(1)
    assert 1 == lane.in_flight


async def test_a_redelivery_of_a_player_in_flight_waits_for_the_next_group() -> None:
    """The same player never rides two groups at once: its redelivery is deferred, others
    queued behind it are not held up, and it goes out once the first group is done."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=2, max_group_size=1)  # "q" alone fills a group
    await start_one_group(lane, runner, "p")
    submit(lane, "p", "q")
    await runner.started(2)

    assert [["p"], ["q"]] == runner.groups
    assert ["p"] == [x.completion.player for x in lane.queue]
    runner.release(1)
    runner.release(0)
    await runner.started(3)
    runner.release(2)
    await lane.drain()

    assert [["p"], ["q"], ["p"]] == runner.groups


async def test_only_deferred_work_starts_no_writer() -> None:
    """Only a redelivery of the player in flight queued: no writer starts for it (none could
    take it, and none spins); it goes out once the first group is done."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=2, max_group_size=1)  # one takeable would be a group
    await start_one_group(lane, runner, "p")
    before = set(lane.tasks)
    submit(lane, "p")

    assert set() == lane.tasks - before
    assert (1, 1, 1) == (len(runner.groups), lane.in_flight, len(lane.queue))
    runner.release(0)
    await runner.started(2)
    runner.release(1)
    await lane.drain()

    assert [["p"], ["p"]] == runner.groups


async def test_less_than_a_group_waits_for_the_write_in_flight() -> None:
    """Limit 2, one group in flight: completions that fit in one group start no second
    write (it would only queue at the same document); they are the next group."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=2, max_group_size=3)
    await start_one_group(lane, runner, "p")
    submit(lane, "q", "r")

    assert (1, 2) == (lane.in_flight, len(lane.queue))
    runner.release(0)
    await runner.started(2)
    runner.release(1)
    await lane.drain()

    assert [["p"], ["q", "r"]] == runner.groups


async def test_a_full_group_queued_beside_a_write_starts_without_waiting() -> None:
    """Limit 2, one group in flight: a whole group's worth queued takes the free slot."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=2, max_group_size=2)
    await start_one_group(lane, runner, "p")
    submit(lane, "q", "r")
    async with asyncio.timeout(0.5):  # no I/O here: a free slot would be taken at once
        await runner.started(2)

    assert [["p"], ["q", "r"]] == runner.groups
    runner.release(0)
    runner.release(1)
    await lane.drain()


async def test_withdraw_removes_a_caller_no_group_has_taken() -> None:
    """A queued caller withdrawn is never written and its future is cancelled; one already
    taken by a group cannot be withdrawn (it may be written)."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=1)
    [a] = submit(lane, "a")
    await runner.started(1)
    b, _ = submit(lane, "b", "c")

    assert (True, False) == (lane.withdraw(b), lane.withdraw(a))
    assert False is lane.withdraw(b)  # not queued any more
    assert b.future.cancelled()
    runner.release(0)
    await runner.started(2)
    runner.release(1)
    await lane.drain()

    assert [["a"], ["c"]] == runner.groups


async def test_drain_waits_for_writes_started_while_draining() -> None:
    """drain() returns only when the queue is empty and nothing is in flight, including
    groups started after it began waiting."""
    runner = FakeRunner(hold=False)
    lane = make_lane(runner, limit=1, max_group_size=2)
    callers = submit(lane, *(f"p{i}" for i in range(5)))
    await lane.drain()

    assert (0, 0) == (lane.in_flight, len(lane.queue))
    assert [["p0", "p1"], ["p2", "p3"], ["p4"]] == runner.groups
    assert all(p.future.result().status is CompletionStatus.RECORDED for p in callers)


async def test_cancel_all_fails_queued_callers_and_cancels_writes_in_flight() -> None:
    """Queued callers get the error; the write in flight is cancelled and nothing new starts."""
    runner = FakeRunner()
    lane = make_lane(runner, limit=1)
    submit(lane, "a")
    await runner.started(1)
    queued = submit(lane, "b", "c")
    error = RuntimeError("closing")

    lane.cancel_all(error)
    await lane.drain()

    assert [error, error] == [p.future.exception() for p in queued]
    assert 1 == runner.cancelled
    assert [["a"]] == runner.groups


async def test_idle_callback_once_the_lane_is_empty() -> None:
    """on_idle(lane) runs when the queue is empty and no write is in flight, not before."""
    runner = FakeRunner()
    idle: list[Lane] = []
    lane = make_lane(runner, limit=1, idle=idle)
    submit(lane, "a")
    await runner.started(1)
    submit(lane, "b")
    runner.release(0)
    await runner.started(2)

    assert [] == idle
    runner.release(1)
    await lane.drain()

    assert [lane] == idle


async def test_withdrawing_the_last_caller_before_any_write_leaves_the_lane_idle() -> None:
    """Withdrawn before its writer ran: nothing is written and the lane reports idle."""
    runner = FakeRunner()
    idle: list[Lane] = []
    lane = make_lane(runner, limit=1, idle=idle)
    [a] = submit(lane, "a")

    assert lane.withdraw(a)
    await lane.drain()

    assert ([], [lane]) == (runner.groups, idle)


async def test_a_failing_group_runner_is_logged_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner must resolve every member itself; if it raises anyway (a bug), the lane
    logs it and keeps writing what is queued."""
    runner = FakeRunner(fail=True)
    lane = make_lane(runner, limit=1, max_group_size=1)
    with caplog.at_level(logging.ERROR, logger="async_batchstate.coalesce"):
        submit(lane, "a", "b")
        await lane.drain()

    assert [["a"], ["b"]] == runner.groups
    assert 2 == sum("lane writer of batch 'b' failed" in r.getMessage() for r in caplog.records)
