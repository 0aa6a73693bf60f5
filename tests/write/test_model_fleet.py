"""The fleet model: processes of a rolling deploy, lost answers, time and migration, one model.

``test_model.py`` drives one manager per mode, each batch written by the mode that
created it. Production mixes what that model never does, and that is where
exactly-once broke before (issue 28): this machine explores it.

* **Processes**: ``SLOTS`` managers, each with its own client, cache and event-loop
  tasks, standing for the processes of a rolling deploy. Any of them writes any
  batch; ``restart`` replaces a process with a fresh one (cache lost) in any mode:
  rollouts and rollbacks, SUBCOLLECTION_ONLY back to DUAL_WRITE and LEGACY included.
* **Faults**: answers of Commits (and transactions' BeginTransaction/Rollback) are
  lost (``LostAnswers``): the server applied the write, the client never heard.
* **Time**: one ``FakeClock`` shared by every process; batches with deadlines;
  ``advance`` passes them, after which a completion, a progress read or an explicit
  ``expire`` (possibly racing the last completions in other processes) expires them.
* **Migration**: backfill, verify, validate and reconcile interleaved with writes.
* **Callbacks**: ``on_complete``/``on_expired`` in every process; a process restarted
  while one runs leaves it owed, and another delivers it after the lease.

After every step the touched batch is read back directly and compared with the
model; every invariant is in ``Fleet.check``. The CI budget is fixed and
derandomised; the long budget is ``ASYNC_BATCHSTATE_MODEL_MINUTES=N`` (a new seed
each run, see docs/testing.md). Every failure it finds becomes a pinned test in
``test_exactly_once_pins.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from async_batchstate import (
    AsyncBatchStateManager,
    BatchProgress,
    BatchStateError,
    CompletionStatus,
    Layout,
    MigrationMode,
    RetryPolicy,
    UnexpectedPlayerError,
)
from async_batchstate.migration import backfill, verify
from async_batchstate.testing import (
    EmulatorInfo,
    FakeClock,
    LostAnswers,
    aclose_client,
    make_client,
)

pytestmark = [
    pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting"),
    pytest.mark.guarantee("rolling-deploys-and-rollbacks"),
    pytest.mark.guarantee("extra-players-a-batch-without-a-roster"),
]

EMULATOR: EmulatorInfo | None = None  # set by the test before the machine runs
SLOTS = 3
LEASE = 5.0
MODES = list(MigrationMode)
STAGGER = st.sampled_from([0.0, 0.001, 0.003])
"""Seconds between the starts of a race's calls: at once, or one after another while the
earlier ones' writes (a first touch's Commit beside its settings read) are in flight."""
PACED_RATE = 1e6
"""A paced process's ``document_write_rate``: so high that no write is ever held (a pause
would move the fake time every process shares, and with it the deadlines the model
checks). The model runs pacing's bookkeeping on every write of a paced process, lost
answers and refused Commits included; the pauses themselves are pinned by
``test_pacing.py`` and ``test_pacing_emulator.py``."""
FAST = RetryPolicy(base_delay=0.001, max_delay=0.01, deadline=120.0, attempt_timeout=30.0)
LOSABLE = ("Commit", "BeginTransaction", "Rollback")


@dataclass
class Explored:
    """What one run explored (reported by the long budget)."""

    steps: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    mixed: int = 0  # batches written by more than one mode
    lost: int = 0
    expiries: int = 0
    late: int = 0

    def line(self) -> str:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(self.steps.items()))
        return (
            f"{sum(self.steps.values())} steps ({rules}); {self.batches} batches, "
            f"{self.mixed} written by several modes; {self.lost} answers lost; "
            f"{self.expiries} expiries; {self.late} LATE"
        )


EXPLORED = Explored()


@dataclass
class Process:
    client: AsyncClient
    manager: AsyncBatchStateManager
    mode: MigrationMode
    write_path: str
    paced: bool


@dataclass
class Batch:
    roster: tuple[str, ...] | None
    expected: int
    pool: tuple[str, ...]
    deadline: dt.datetime | None
    recorded: dict[str, int] = field(default_factory=dict)
    status: str = "in_progress"
    told_complete: int = 0
    expire_true: int = 0
    modes: set[MigrationMode] = field(default_factory=set)

    def completes(self) -> bool:
        if self.roster is not None:
            return set(self.roster) <= set(self.recorded)
        return len(self.recorded) >= self.expected


class Fleet(RuleBasedStateMachine):
    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        assert EMULATOR is not None
        self.loop = asyncio.new_event_loop()
        self.collection = f"fleet_{uuid.uuid4().hex[:10]}"
        self.layout = Layout(collection=self.collection)
        self.clock = FakeClock(wall_start=dt.datetime.now(dt.UTC))
        self.callbacks: dict[str, list[tuple[str, str | None]]] = {}
        self.model: dict[str, Batch] = {}
        self.numbers = iter(range(100_000))
        self.reader: AsyncClient = self.run(self._client())
        self.procs: list[Process] = [
            self.run(self._process(MODES[i % len(MODES)], "auto", paced=i == 1))
            for i in range(SLOTS)
        ]

    # -- plumbing --------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=120))

    async def _client(self) -> AsyncClient:
        assert EMULATOR is not None
        return make_client(EMULATOR)  # made on the machine's loop: clients are loop-bound

    async def _process(self, mode: MigrationMode, write_path: str, *, paced: bool) -> Process:
        client = await self._client()

        def on(kind: str) -> Any:
            def callback(batch_id: str, progress: BatchProgress) -> None:
                self.callbacks.setdefault(batch_id, []).append((kind, progress.finalization_key))

            return callback

        manager = AsyncBatchStateManager(
            client,
            collection=self.collection,
            mode=mode,
            retry=FAST,
            clock=self.clock,
            validation_rate=0.0,
            on_complete=on("complete"),
            on_expired=on("expired"),
            callback_lease=LEASE,
            callback_sweep_interval=None,
            write_path=write_path,  # type: ignore[arg-type]
            document_write_rate=PACED_RATE if paced else None,
        )
        return Process(client, manager, mode, write_path, paced)

    def teardown(self) -> None:
        async def close() -> None:
            for proc in self.procs:
                await proc.manager.aclose(drain_timeout=5.0)
                await aclose_client(proc.client)
            await aclose_client(self.reader)

        try:
            self.run(self.deliver_everything())
            self.run(close())
        finally:
            self.loop.close()

    def lose(self, proc: Process, answers: int) -> LostAnswers | None:
        if not answers:
            return None

        async def attach() -> LostAnswers:  # on the loop: the client's channel is bound to it
            return LostAnswers(LOSABLE, times=answers).attach(proc.client)

        lost: LostAnswers = self.run(attach())
        return lost

    @staticmethod
    def done_losing(lost: LostAnswers | None) -> None:
        if lost is not None:
            lost.armed = False
            EXPLORED.lost += lost.total_lost

    # -- the invariants ---------------------------------------------------------------

    async def stored(self, batch_id: str) -> tuple[dict[str, Any], dict[str, int]]:
        ref = self.reader.collection(self.collection).document(batch_id)
        snap = await ref.get()
        assert snap.exists, batch_id
        docs = {
            d.id: (d.to_dict() or {}).get("predictions_count", -1)
            async for d in ref.collection("completions").stream()
        }
        return snap.to_dict() or {}, docs

    def check(self, batch_id: str) -> None:
        """Every structure the batch's writers maintain counts every player once, exactly."""
        batch = self.model[batch_id]
        data, docs = self.run(self.stored(batch_id))
        array = data.get("completed_players")
        by_player = data.get("predictions_by_player")
        players = set(docs)
        if array is not None:
            assert len(array) == len(set(array)), f"the array repeats a player: {array}"
            assert set(array) == set(by_player or {}), "array and map disagree"
            assert data.get("total_predictions", 0) == sum(by_player.values())
            players |= set(array)
            for player, count in by_player.items():
                assert batch.recorded.get(player) == count, (player, count)
            legacy_only = set(array) - set(docs)
            assert data.get("legacy_only_count", 0) == len(legacy_only), (
                data.get("legacy_only_count"),
                legacy_only,
            )
            if data.get("completions_backfilled") is True:
                assert not legacy_only, f"guarded, yet only in the array: {legacy_only}"
        assert data.get("completed_count", 0) == len(docs)
        assert data.get("total_predictions_subcoll", 0) == sum(docs.values())
        for player, count in docs.items():
            assert batch.recorded.get(player) == count, (player, count)
        assert set(batch.recorded) == players, (sorted(batch.recorded), sorted(players))
        assert batch.status == data.get("status"), (batch.status, data.get("status"))
        if batch.status == "complete":
            assert batch.completes()
        assert (1 if batch.status == "complete" else 0) == batch.told_complete
        assert batch.expire_true <= 1
        kinds = {kind for kind, _ in self.callbacks.get(batch_id, ())}
        keys = {key for _, key in self.callbacks.get(batch_id, ())}
        assert kinds <= ({batch.status} if batch.status != "in_progress" else set()), kinds
        assert len(keys) <= 1, f"callbacks with several keys: {keys}"

    @invariant()
    def no_callback_for_an_open_batch(self) -> None:
        for batch_id, calls in self.callbacks.items():
            if batch_id in self.model:
                assert calls == [] or self.model[batch_id].status != "in_progress"

    # -- what the model expects of one call ------------------------------------------

    def overdue(self, batch: Batch) -> bool:
        return (
            batch.status == "in_progress"
            and batch.deadline is not None
            and self.clock.now() >= batch.deadline
        )

    def expect_record(self, batch: Batch, player: str, count: int, result: Any) -> None:
        """Advance the model by one sequential completion and check what the caller was told."""
        if self.overdue(batch):
            batch.status = "expired"  # the call expires it before it writes
            EXPLORED.expiries += 1
        if player in batch.recorded:
            assert CompletionStatus.DUPLICATE is result.status, (player, result)
        elif batch.status == "expired":
            assert CompletionStatus.LATE is result.status, (player, result)
            batch.recorded[player] = count
            EXPLORED.late += 1
        else:
            assert CompletionStatus.RECORDED is result.status, (player, result)
            batch.recorded[player] = count
        # Whoever finds the batch complete and unflipped flips it, and one caller is told
        # (a redelivery's DUPLICATE included): exactly one across every process.
        finishing = batch.status == "in_progress" and batch.completes()
        assert finishing == result.batch_completed, (player, result, batch)
        if finishing:
            batch.status = "complete"
            batch.told_complete += 1

    # -- rules: batches ----------------------------------------------------------------

    @initialize(target=batches, slot=st.integers(0, SLOTS - 1))
    def first_batch(self, slot: int) -> str:
        EXPLORED.steps["first_batch"] += 1
        return self.new_batch(slot, roster=True, size=3, deadline=None)

    @rule(
        target=batches,
        slot=st.integers(0, SLOTS - 1),
        roster=st.booleans(),
        size=st.integers(1, 4),
        deadline=st.one_of(st.none(), st.integers(5, 60)),
    )
    def create(self, slot: int, roster: bool, size: int, deadline: int | None) -> str:
        EXPLORED.steps["create"] += 1
        return self.new_batch(slot, roster=roster, size=size, deadline=deadline)

    def new_batch(self, slot: int, *, roster: bool, size: int, deadline: int | None) -> str:
        proc = self.procs[slot]
        batch_id = f"b{next(self.numbers)}.x"  # a dot: ids are literal
        names = tuple(f"p{i}" if i % 2 else f"p.{i}`" for i in range(size + 1))
        when = None if deadline is None else dt.timedelta(seconds=deadline)
        if roster:
            created = self.run(
                proc.manager.create_batch(
                    batch_id, expected_players=iter(names[:size]), deadline=when
                )
            )
        else:
            created = self.run(
                proc.manager.create_batch(batch_id, expected_count=size, deadline=when)
            )
        assert created
        self.model[batch_id] = Batch(
            roster=names[:size] if roster else None,
            expected=size,
            pool=names,  # one outsider: refused with a roster, an extra without
            deadline=None if when is None else self.clock.now() + when,
        )
        EXPLORED.batches += 1
        self.check(batch_id)
        return batch_id

    def writing(self, batch_id: str, proc: Process) -> Batch:
        batch = self.model[batch_id]
        if proc.mode not in batch.modes and len(batch.modes) == 1:
            EXPLORED.mixed += 1
        batch.modes.add(proc.mode)
        return batch

    @rule(
        batch_id=batches,
        slot=st.integers(0, SLOTS - 1),
        which=st.integers(0, 4),
        count=st.integers(0, 9),
        answers=st.integers(0, 3),
    )
    def record(self, batch_id: str, slot: int, which: int, count: int, answers: int) -> None:
        """One completion in one process, some of its answers lost."""
        EXPLORED.steps["record"] += 1
        proc = self.procs[slot]
        batch = self.writing(batch_id, proc)
        player = batch.pool[which % len(batch.pool)]
        lost = self.lose(proc, answers)
        try:
            if batch.roster is not None and player not in batch.roster:
                with pytest.raises(UnexpectedPlayerError):
                    self.run(proc.manager.record_completion(batch_id, player, count))
                return
            result = self.run(proc.manager.record_completion(batch_id, player, count))
        finally:
            self.done_losing(lost)
        self.expect_record(batch, player, count, result)
        self.check(batch_id)

    @rule(
        batch_id=batches,
        calls=st.lists(
            st.tuples(st.integers(0, SLOTS - 1), st.integers(0, 4), st.integers(0, 9)),
            min_size=2,
            max_size=8,
        ),
        expirer=st.one_of(st.none(), st.integers(0, SLOTS - 1)),
        answers=st.integers(0, 3),
        stagger=STAGGER,
    )
    def race(
        self,
        batch_id: str,
        calls: list[tuple[int, int, int]],
        expirer: int | None,
        answers: int,
        stagger: float = 0.0,
    ) -> None:
        """Completions at once in several processes (redeliveries to any process), maybe with
        an expiry racing them; answers lost in the first process. Which call wins a player
        is not the model's to say: exactly one, and LATE exactly per the expiry's own view.
        ``stagger``: each call starts that many seconds after the one before (real time), so
        a later caller can arrive while an earlier one's first touch is still in flight."""
        EXPLORED.steps["race"] += 1
        batch = self.model[batch_id]
        picked = [
            (self.procs[s], batch.pool[w % len(batch.pool)], c)
            for s, w, c in calls
            if batch.roster is None or batch.pool[w % len(batch.pool)] in batch.roster
        ]
        assume(picked)
        for proc, _, _ in picked:
            self.writing(batch_id, proc)
        before = dict(batch.recorded)
        was = batch.status
        overdue = self.overdue(batch)
        lost = self.lose(picked[0][0], answers)

        async def call(index: int, proc: Any, player: str, count: int) -> Any:
            await asyncio.sleep(index * stagger)
            return await proc.manager.record_completion(batch_id, player, count)

        async def together() -> tuple[list[Any], bool | None]:
            tasks = [call(i, p, player, c) for i, (p, player, c) in enumerate(picked)]
            if expirer is None:
                return list(await asyncio.gather(*tasks)), None
            expiry = self.procs[expirer].manager.expire(batch_id, reason="race")
            *results, expired = await asyncio.gather(*tasks, expiry)
            return list(results), bool(expired)

        try:
            results, expired = self.run(together())
        finally:
            self.done_losing(lost)
        data, _ = self.run(self.stored(batch_id))
        stored_status = data.get("status")
        winners: dict[str, Any] = {}
        for (_, player, count), result in zip(picked, results, strict=True):
            if result.status is CompletionStatus.DUPLICATE:
                continue
            assert player not in before and player not in winners, (player, results)
            winners[player] = (count, result)
        assert set(winners) == {p for _, p, _ in picked} - set(before)
        for player, (count, _) in winners.items():
            batch.recorded[player] = count
        late = {p for p, (_, r) in winners.items() if r.status is CompletionStatus.LATE}
        EXPLORED.late += len(late)
        if stored_status == "expired" and was != "expired":
            EXPLORED.expiries += 1
            assert expirer is not None or overdue
            # What the expiry itself saw decides LATE: the missing roster players, or the
            # count it read (expected - missing_count) for a batch without a roster.
            if batch.roster is not None:
                assert late == set(winners) & set(data.get("missing_players", ())), (
                    late,
                    winners,
                    data.get("missing_players"),
                )
            else:
                at_expiry = batch.expected - int(data["missing_count"])
                assert len(before) + len(set(winners) - late) == at_expiry
        elif was == "expired":
            assert late == set(winners)
        else:
            assert not late
        if expired is not None:
            batch.expire_true += bool(expired)
            newly = stored_status == "expired" and was != "expired"
            # An overdue batch may be expired by a completion first; otherwise this call.
            assert bool(expired) == newly if not overdue else (not expired or newly)
        told = sum(r.batch_completed for r in results)
        batch.told_complete += told
        if stored_status == "complete" and was != "complete":
            assert 1 == told
        else:
            assert 0 == told
        batch.status = str(stored_status)
        self.check(batch_id)

    @rule(
        batch_id=batches,
        calls=st.lists(
            st.tuples(st.integers(0, SLOTS - 1), st.integers(0, 4), st.integers(0, 9)),
            min_size=3,
            max_size=12,
        ),
        expirer=st.integers(0, SLOTS - 1),
        answers=st.integers(1, 4),
        stagger=STAGGER,
    )
    def race_an_expiry(
        self,
        batch_id: str,
        calls: list[tuple[int, int, int]],
        expirer: int,
        answers: int,
        stagger: float,
    ) -> None:
        """The race above, always with an expiry and lost answers (the riskiest mix)."""
        self.race(batch_id, calls, expirer, answers, stagger)

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1), answers=st.integers(0, 2))
    def expire(self, batch_id: str, slot: int, answers: int) -> None:
        """An explicit expiry: True once, only for an unfinished batch."""
        EXPLORED.steps["expire"] += 1
        batch = self.model[batch_id]
        lost = self.lose(self.procs[slot], answers)
        try:
            expired = self.run(self.procs[slot].manager.expire(batch_id))
        finally:
            self.done_losing(lost)
        assert expired == (batch.status == "in_progress"), (expired, batch)
        if expired:
            batch.status = "expired"
            batch.expire_true += 1
            EXPLORED.expiries += 1
        self.check(batch_id)

    @rule(seconds=st.sampled_from([1.0, 10.0, 30.0, 61.0]))
    def advance(self, seconds: float) -> None:
        """Time passes for every process: deadlines and callback leases with it."""
        EXPLORED.steps["advance"] += 1
        self.clock.advance(seconds)

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1))
    def progress(self, batch_id: str, slot: int) -> None:
        """get_progress in any mode: an overdue batch expires; counts as the model says."""
        EXPLORED.steps["progress"] += 1
        batch = self.model[batch_id]
        proc = self.procs[slot]
        if self.overdue(batch):
            batch.status = "expired"
            EXPLORED.expiries += 1
        progress = self.run(proc.manager.get_progress(batch_id, include_players=False))
        assert batch.status == progress.status
        assert min(len(batch.recorded), batch.expected) == progress.completed_count
        assert batch.expected == progress.expected_count
        self.check(batch_id)

    # -- rules: processes ------------------------------------------------------------

    @rule(
        slot=st.integers(0, SLOTS - 1),
        mode=st.sampled_from(MODES),
        path=st.sampled_from(["auto", "auto", "transaction"]),
        paced=st.booleans(),
    )
    def restart(self, slot: int, mode: MigrationMode, path: str, paced: bool) -> None:
        """A process is replaced (rollout, rollback, crash-restart): its cache and any
        callback it was running are gone; what it owed stays owed in the batch."""
        EXPLORED.steps["restart"] += 1
        assume(not (mode is MigrationMode.LEGACY and path == "transaction"))
        old = self.procs[slot]
        self.run(old.manager.aclose(drain_timeout=1.0))
        self.run(aclose_client(old.client))
        self.procs[slot] = self.run(self._process(mode, path, paced=paced))

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1), which=st.integers(0, 4))
    def closed_channel(self, batch_id: str, slot: int, which: int) -> None:
        """A process whose client's channel is closed under it: a typed error, nothing
        written; then it is replaced."""
        EXPLORED.steps["closed_channel"] += 1
        proc = self.procs[slot]
        batch = self.model[batch_id]
        self.run(proc.client.collection(self.collection).document(batch_id).get())  # a channel
        self.run(aclose_client(proc.client))
        with pytest.raises(BatchStateError):
            self.run(
                proc.manager.record_completion(batch_id, batch.pool[which % 5 % len(batch.pool)], 1)
            )
        self.run(proc.manager.aclose(drain_timeout=1.0))
        self.procs[slot] = self.run(self._process(proc.mode, proc.write_path, paced=proc.paced))
        self.check(batch_id)

    # -- rules: migration, consistency, callbacks ------------------------------------

    @rule(batch_id=batches)
    def backfill_it(self, batch_id: str) -> None:
        """Backfill creates the array-only players' documents and states the guard."""
        EXPLORED.steps["backfill_it"] += 1
        summary = self.run(
            backfill(self.reader, self.layout, MigrationMode.DUAL_WRITE, batch_ids=[batch_id])
        )
        assert ((), 0) == (tuple(summary.failures), summary.finalized)
        data, _ = self.run(self.stored(batch_id))
        assert data.get("completions_backfilled") is True
        self.check(batch_id)

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1))
    def validate(self, batch_id: str, slot: int) -> None:
        """validate() in any mode finds no fault in a batch the model finds exact."""
        EXPLORED.steps["validate"] += 1
        report = self.run(self.procs[slot].manager.validate(batch_id))
        # Players LEGACY recorded before the batch was guarded are backfill's work, which
        # sampled validation never alerts on; anything else is a fault.
        assert () == report.problems or report.awaiting_backfill, report
        self.check(batch_id)

    @rule(batch_id=batches)
    def verify_it(self, batch_id: str) -> None:
        EXPLORED.steps["verify_it"] += 1
        summary = self.run(
            verify(self.reader, self.layout, MigrationMode.DUAL_WRITE, batch_ids=[batch_id])
        )
        assert () == tuple(summary.failures)
        assert all(report.awaiting_backfill for report in summary.inconsistent), summary

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1))
    def reconcile(self, batch_id: str, slot: int) -> None:
        """Reconciling an exact, guarded batch changes nothing (reconcile is a repair: on a
        batch with players only in the array or only in the subcollection, by design of
        a rollout, it would complete the other structure; see its docstring)."""
        EXPLORED.steps["reconcile"] += 1
        proc = self.procs[slot]
        data, _ = self.run(self.stored(batch_id))
        assume(proc.mode.writes_subcollection and data.get("completions_backfilled") is True)
        assume("completed_count" in data and not data.get("array_partial"))
        result = self.run(proc.manager.reconcile(batch_id))
        assert not result.changed, result
        self.check(batch_id)

    @rule(batch_id=batches, slot=st.integers(0, SLOTS - 1))
    def deliver(self, batch_id: str, slot: int) -> None:
        """Past the lease, any process delivers what a finished batch still owes."""
        EXPLORED.steps["deliver"] += 1
        self.clock.advance(LEASE + 1)
        self.run(self.procs[slot].manager.deliver_owed_callbacks(batch_id))
        self.check(batch_id)

    async def deliver_everything(self) -> None:
        """At the end: every finished batch's callback ran, with one key and the right kind."""
        self.clock.advance(LEASE + 1)
        for batch_id, batch in self.model.items():
            if batch.status == "in_progress":
                continue
            await self.procs[0].manager.deliver_owed_callbacks(batch_id)
            calls = self.callbacks.get(batch_id, [])
            assert calls, f"{batch_id} {batch.status}: its callback never ran"
            assert {batch.status} == {kind for kind, _ in calls}
            assert 1 == len({key for _, key in calls})


def run_fleet(max_examples: int, *, derandomize: bool, steps: int = 30) -> None:
    global EMULATOR
    run_state_machine_as_test(
        Fleet,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            derandomize=derandomize,
            deadline=None,
            database=None,  # a failure is pinned as a test, not replayed from a cache
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.timeout(600)
def test_the_fleet_matches_the_model(firestore_emulator: EmulatorInfo) -> None:
    """The CI budget: a fixed, derandomised exploration (about a minute) of processes in
    every mode, restarts, lost answers, deadlines and expiries racing completions,
    backfill/verify/validate/reconcile and callbacks, checked after every step."""
    global EMULATOR
    EMULATOR = firestore_emulator
    try:
        run_fleet(int(os.environ.get("ASYNC_BATCHSTATE_FLEET_EXAMPLES", "100")), derandomize=True)
    finally:
        EMULATOR = None
        print(f"\nfleet model (CI budget): {EXPLORED.line()}")


@pytest.mark.skipif(
    not os.environ.get("ASYNC_BATCHSTATE_MODEL_MINUTES"),
    reason="the long budget: set ASYNC_BATCHSTATE_MODEL_MINUTES=N (docs/testing.md)",
)
@pytest.mark.timeout(0)  # the budget is its own: the minutes, then the round in flight
def test_the_fleet_matches_the_model_for_minutes(firestore_emulator: EmulatorInfo) -> None:
    """The long budget: new seeds until the minutes run out; prints what it explored."""
    global EMULATOR
    EMULATOR = firestore_emulator
    until = time.monotonic() + 60 * float(os.environ["ASYNC_BATCHSTATE_MODEL_MINUTES"])
    rounds = 0
    try:
        while time.monotonic() < until:
            run_fleet(10, derandomize=False, steps=50)
            rounds += 1
    finally:
        EMULATOR = None
        print(f"\nfleet model, {rounds} rounds of 10 examples: {EXPLORED.line()}")
