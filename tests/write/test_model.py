"""Model-based: random create/record/redeliver/progress sequences against an in-memory model.

A hypothesis ``RuleBasedStateMachine`` drives a real manager per migration
mode (one client, one event loop and one collection per example) and keeps
the expected state of every batch in plain dicts: who is recorded with which
count (first write wins), whether the batch is finalized, how many callers
were told ``batch_completed`` and how often ``on_complete`` ran. After every
step the touched batch is read back directly and compared with the model.
``validate``/``reconcile`` rules run only if the manager has them.
"""

from __future__ import annotations

import asyncio
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
    rule,
    run_state_machine_as_test,
)

from async_batchstate import (
    AsyncBatchStateManager,
    BatchProgress,
    CompletionStatus,
    MigrationMode,
)
from async_batchstate.testing import EmulatorInfo, aclose_client, batch_violations, make_client

pytestmark = pytest.mark.guarantee("at-most-once-counting-exactly-once-reporting")

EMULATOR: EmulatorInfo | None = None  # set by the test before the machine runs


@dataclass
class ModelBatch:
    mode: MigrationMode
    players: list[str]
    recorded: dict[str, int] = field(default_factory=dict)
    told_complete: int = 0

    @property
    def complete(self) -> bool:
        return len(self.recorded) == len(self.players)


class BatchModel(RuleBasedStateMachine):
    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        assert EMULATOR is not None
        self.loop = asyncio.new_event_loop()
        self.collection = f"model_{uuid.uuid4().hex[:10]}"
        self.client: AsyncClient = self.run(self._client(EMULATOR))
        self.on_complete: Counter[str] = Counter()
        self.managers = {
            mode: AsyncBatchStateManager(
                self.client,
                collection=self.collection,
                mode=mode,
                on_complete=lambda b, _p: self.on_complete.update([b]),
            )
            for mode in MigrationMode
        }
        self.model: dict[str, ModelBatch] = {}
        self.numbers = iter(range(10_000))

    @staticmethod
    async def _client(info: EmulatorInfo) -> AsyncClient:
        return make_client(info)  # made on the machine's loop: clients are loop-bound

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))

    def teardown(self) -> None:
        async def close() -> None:
            for manager in self.managers.values():
                await manager.aclose()
            await aclose_client(self.client)

        try:
            self.run(close())
        finally:
            self.loop.close()

    # -- helpers -----------------------------------------------------------------------

    def check(self, batch_id: str) -> None:
        """The stored batch equals the model, and the library's invariants hold."""
        batch = self.model[batch_id]
        manager = self.managers[batch.mode]
        problems = self.run(
            batch_violations(
                self.client,
                self.collection,
                batch_id,
                batch.mode,
                expected=batch.recorded,
                require_finalized=True,
            )
        )
        assert [] == problems
        assert (1 if batch.complete else 0) == self.on_complete[batch_id]
        assert (1 if batch.complete else 0) == batch.told_complete
        progress: BatchProgress = self.run(manager.get_progress(batch_id))
        assert (len(batch.players), len(batch.recorded), sum(batch.recorded.values())) == (
            progress.expected_count,
            progress.completed_count,
            progress.total_predictions,
        )
        assert tuple(sorted(batch.recorded)) == progress.completed_players
        assert ("complete" if batch.complete else "in_progress") == progress.status

    def record(self, batch_id: str, player: str, count: int) -> None:
        batch = self.model[batch_id]
        manager = self.managers[batch.mode]
        result = self.run(manager.record_completion(batch_id, player, count))
        if player in batch.recorded:
            assert CompletionStatus.DUPLICATE is result.status
        else:
            assert CompletionStatus.RECORDED is result.status
            batch.recorded[player] = count
        batch.told_complete += result.batch_completed
        self.check(batch_id)

    # -- rules -------------------------------------------------------------------------

    @initialize(target=batches, mode=st.sampled_from(list(MigrationMode)))
    def first_batch(self, mode: MigrationMode) -> str:
        return self.new_batch(mode, 3)

    @rule(target=batches, mode=st.sampled_from(list(MigrationMode)), size=st.integers(1, 5))
    def create(self, mode: MigrationMode, size: int) -> str:
        return self.new_batch(mode, size)

    def new_batch(self, mode: MigrationMode, size: int) -> str:
        batch_id = f"b{next(self.numbers)}.{mode.value}"  # a dot: ids are literal
        players = [f"p{i}" if i % 2 else f"p.{i}`" for i in range(size)]
        created = self.run(self.managers[mode].create_batch(batch_id, expected_players=players))
        assert created
        self.model[batch_id] = ModelBatch(mode, players)
        self.check(batch_id)
        return batch_id

    @rule(batch_id=batches, which=st.integers(0, 4), count=st.integers(0, 9))
    def record_one(self, batch_id: str, which: int, count: int) -> None:
        players = self.model[batch_id].players
        self.record(batch_id, players[which % len(players)], count)

    @rule(batch_id=batches, data=st.data())
    def redeliver(self, batch_id: str, data: st.DataObject) -> None:
        """A recorded player again, with another count: DUPLICATE, first count kept."""
        batch = self.model[batch_id]
        assume(batch.recorded)
        player = data.draw(st.sampled_from(sorted(batch.recorded)))
        self.record(batch_id, player, batch.recorded[player] + data.draw(st.integers(1, 5)))

    @rule(batch_id=batches, picks=st.lists(st.integers(0, 4), min_size=2, max_size=6))
    def concurrent_group(self, batch_id: str, picks: list[int]) -> None:
        """Several completions at once (one group commit), repeats included."""
        batch = self.model[batch_id]
        manager = self.managers[batch.mode]
        players = [batch.players[i % len(batch.players)] for i in picks]

        async def all_at_once() -> list[Any]:
            return list(
                await asyncio.gather(*(manager.record_completion(batch_id, p, 7) for p in players))
            )

        results = self.run(all_at_once())
        new = [p for p in dict.fromkeys(players) if p not in batch.recorded]
        recorded = [r.player for r in results if r.status is CompletionStatus.RECORDED]
        assert sorted(new) == sorted(recorded)
        batch.recorded.update(dict.fromkeys(new, 7))
        batch.told_complete += sum(r.batch_completed for r in results)
        self.check(batch_id)

    @rule(batch_id=batches)
    def finalize_again(self, batch_id: str) -> None:
        """An explicit finalize() never finalizes twice."""
        batch = self.model[batch_id]
        assert not self.run(self.managers[batch.mode].finalize(batch_id))
        self.check(batch_id)

    @rule(batch_id=batches)
    def validate(self, batch_id: str) -> None:
        """validate() finds every batch the model built consistent."""
        batch = self.model[batch_id]
        report = self.run(self.managers[batch.mode].validate(batch_id))
        assert () == report.problems
        assert report.is_consistent
        self.check(batch_id)

    @rule(batch_id=batches)
    def reconcile(self, batch_id: str) -> None:
        """Reconciling a consistent batch changes nothing."""
        batch = self.model[batch_id]
        result = self.run(self.managers[batch.mode].reconcile(batch_id))
        assert not result.changed, result
        self.check(batch_id)


def test_random_sequences_match_the_model(firestore_emulator: EmulatorInfo) -> None:
    """Random create/record/redeliver/concurrent/finalize(/validate/reconcile) sequences across
    all four modes leave every batch exactly as the in-memory model says, after every step."""
    global EMULATOR
    EMULATOR = firestore_emulator
    try:
        run_state_machine_as_test(
            BatchModel,
            settings=settings(  # max_examples: the Hypothesis profile (tests/conftest.py)
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        EMULATOR = None
