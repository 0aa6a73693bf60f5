"""Sampled validation on the emulator: one read per check, alerts only for confirmed mismatches."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest
from google.cloud.firestore_v1 import DELETE_FIELD, ArrayRemove, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from async_batchstate import AsyncBatchStateManager, Layout, MigrationMode
from async_batchstate.consistency import ConsistencyReport
from async_batchstate.consistency._alerts import MISMATCH_PREFIX
from async_batchstate.consistency._sampled import SampledValidator
from async_batchstate.instrumentation import ValidationRan
from async_batchstate.instrumentation._events import Recorder
from async_batchstate.testing import EmulatorInfo, FakeClock, aclose_client, make_client

from ..helpers import ManagerFactory
from .test_consistency import corrupt, healthy_batch

DUAL = MigrationMode.DUAL_WRITE
CONFIRMED = "document re-read + 2 deep reads"
# A sampled check of the corrupted batch (2 completion docs): the document, its re-read,
# then twice the document + one aggregation + 2 ids + the document's version again.
CONFIRMING_READS = 1 + 1 + 2 * (1 + 1 + 2 + 1)


def _validator(
    client: AsyncClient, collection: str, **kwargs: object
) -> tuple[SampledValidator, list[ConsistencyReport], list[ValidationRan]]:
    alerts: list[ConsistencyReport] = []
    events: list[ValidationRan] = []
    kwargs.setdefault("confirm_delay", 0.01)
    validator = SampledValidator(
        client,
        Layout(collection),
        DUAL,
        rate=1.0,
        alert_hooks=[alerts.append],
        emit=events.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return validator, alerts, events


def _mismatch_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(MISMATCH_PREFIX)]


async def test_consistent_batch_costs_one_read_and_no_alert(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A sampled check of an exact batch reads the batch document once, and nothing else."""
    await healthy_batch(make_manager)
    validator, alerts, events = _validator(firestore_client, batch_collection)

    validator.maybe_validate("b")
    await validator.aclose()

    assert [] == alerts
    assert [ValidationRan("b", reads=1)] == events


async def test_real_mismatch_is_confirmed_then_logged_and_alerted_once(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A torn write planted with a raw client: re-read, 2 deep reads, then ONE ERROR record and
    one alert, both saying how it was confirmed and naming the player."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    validator, alerts, events = _validator(firestore_client, batch_collection)
    caplog.set_level(logging.ERROR, logger="async_batchstate.consistency")

    scheduled = validator.maybe_validate("b")
    await validator.aclose()

    records = _mismatch_records(caplog)
    assert scheduled
    assert 1 == len(records) == len(alerts) == len(events)
    assert (CONFIRMED, ("ghost",)) == (alerts[0].confirmation, alerts[0].players_only_in_array)
    assert CONFIRMED == records[0].confirmation  # type: ignore[attr-defined]
    assert CONFIRMED in records[0].getMessage()
    assert ["ghost"] == records[0].players_only_in_array  # type: ignore[attr-defined]
    assert (True, True, CONFIRMING_READS) == (
        events[0].confirmed,
        events[0].suspected,
        events[0].reads,
    )
    assert alerts[0].problems == events[0].problems


class _FixOnFirstSleep(FakeClock):
    """A clock that runs ``fix`` when the validator first waits to confirm."""

    def __init__(self, fix: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._fix: Callable[[], Awaitable[None]] | None = fix

    async def sleep(self, seconds: float) -> None:
        fix, self._fix = self._fix, None
        if fix is not None:
            await fix()
        await super().sleep(seconds)


async def test_transient_disagreement_fixed_before_the_re_read_is_not_alerted(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disagreement undone before the re-read: suspected, 2 reads, no deep read, no alert."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)

    async def undo() -> None:
        ref = firestore_client.collection(batch_collection).document("b")
        await ref.update(
            {
                "completed_players": ArrayRemove(["ghost"]),
                FieldPath("predictions_by_player", "ghost").to_api_repr(): DELETE_FIELD,
                "total_predictions": Increment(-5),
                "completed_count": Increment(-1),
            }
        )

    validator, alerts, _events = _validator(
        firestore_client, batch_collection, clock=_FixOnFirstSleep(undo), confirm_delay=1.0
    )
    caplog.set_level(logging.ERROR, logger="async_batchstate.consistency")

    outcome = await validator.check("b")

    assert ValidationRan("b", reads=2, suspected=True) == outcome
    assert [] == alerts
    assert [] == _mismatch_records(caplog)


async def test_finished_batch_is_checked_once_against_its_aggregation(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """on_finished on an exact batch: the document, one aggregation and the document's version
    again, 3 reads, no ids."""
    await healthy_batch(make_manager)
    validator, alerts, events = _validator(firestore_client, batch_collection)

    scheduled = validator.on_finished("b")
    await validator.aclose()

    assert scheduled
    assert ([], [ValidationRan("b", reads=3)]) == (alerts, events)


async def test_finished_batch_with_mismatch_is_alerted_with_its_confirmation(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """on_finished finds the planted mismatch by its counts and confirms it with 2 deep reads."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    validator, alerts, events = _validator(firestore_client, batch_collection)

    validator.on_finished("b")
    await validator.aclose()

    assert ["count re-read + 2 deep reads"] == [a.confirmation for a in alerts]
    assert [3 + 3 + 2 * (1 + 1 + 2 + 1)] == [e.reads for e in events]


async def test_partly_legacy_batch_awaits_backfill_and_is_not_alerted(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A dual-write batch to which a LEGACY writer added a player (no completion doc, the
    backfilled mark dropped): neither the sample nor the finish check alerts."""
    await healthy_batch(make_manager)
    await make_manager(mode=MigrationMode.LEGACY).record_completion("b", "old", predictions_count=2)
    validator, alerts, _events = _validator(firestore_client, batch_collection)

    sampled = await validator.check("b")
    finished = await validator.check("b", finished=True)

    assert [] == alerts
    assert (False, False) == (sampled.suspected, finished.suspected)


async def test_sync_alert_hooks_are_called_too(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A plain function is a valid alert hook."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    seen: list[str] = []
    validator = SampledValidator(
        firestore_client,
        Layout(batch_collection),
        DUAL,
        rate=1.0,
        alert_hooks=[lambda report: seen.append(report.batch_id)],
        confirm_delay=0.0,
    )

    validator.maybe_validate("b")
    await validator.aclose()

    assert ["b"] == seen


async def test_failing_alert_hook_is_logged_not_raised(
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises does not stop the validation nor the hooks after it."""
    await healthy_batch(make_manager)
    await corrupt(firestore_client, batch_collection)
    seen: list[str] = []

    def broken(report: ConsistencyReport) -> None:
        raise RuntimeError("webhook down")

    validator = SampledValidator(
        firestore_client,
        Layout(batch_collection),
        DUAL,
        rate=1.0,
        alert_hooks=[broken, lambda r: seen.append(r.batch_id)],
        confirm_delay=0.0,
    )

    outcome = await validator.check("b")

    assert outcome.confirmed
    assert ["b"] == seen
    assert any("alert hook" in r.getMessage() for r in caplog.records)


async def test_sampling_follows_the_injected_random_source(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """With rate r, exactly the calls whose rng draw is below r are scheduled."""
    draws = random.Random(7)
    expected = [draws.random() < 0.3 for _ in range(40)]
    validator = SampledValidator(
        firestore_client,
        Layout(batch_collection),
        DUAL,
        rate=0.3,
        rng=random.Random(7),
        max_outstanding=100,
    )

    scheduled = [validator.maybe_validate(f"b{i}") for i in range(40)]
    await validator.aclose()

    assert expected == scheduled


async def test_sampled_validation_failure_never_reaches_caller(
    firestore_client: AsyncClient, batch_collection: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Validating a batch that does not exist is logged as a warning, never raised."""
    validator = SampledValidator(firestore_client, Layout(batch_collection), DUAL, rate=1.0)
    caplog.set_level(logging.WARNING, logger="async_batchstate.consistency")

    validator.maybe_validate("missing")
    await validator.aclose()

    assert any("sampled validation" in r.getMessage() for r in caplog.records)


async def test_sampled_validation_of_one_batch_waits_its_interval(
    make_manager: ManagerFactory, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A hot batch is validated at most once per min_interval here, whatever the rate."""
    await healthy_batch(make_manager)
    clock = FakeClock()
    validator = SampledValidator(
        firestore_client, Layout(batch_collection), DUAL, rate=1.0, min_interval=5.0, clock=clock
    )

    first = validator.maybe_validate("b")
    await validator.wait_idle()
    clock.advance(4.0)
    second = validator.maybe_validate("b")
    clock.advance(1.0)
    third = validator.maybe_validate("b")
    await validator.aclose()

    assert (True, False, True) == (first, second, third)


def test_recorder_counts_validations_and_their_reads() -> None:
    """ValidationRan events feed Stats.validations, validation_reads and their per-completion
    average."""
    recorder = Recorder(())
    recorder.recorded = 10

    recorder.emit(ValidationRan("b", reads=1))
    recorder.emit(ValidationRan("b", reads=10, suspected=True, confirmed=True))

    stats = recorder.snapshot()
    assert (2, 11, 1.1) == (
        stats.validations,
        stats.validation_reads,
        stats.validation_reads_per_completion,
    )


async def test_manager_stats_count_validations_and_their_reads(
    make_manager: ManagerFactory,
) -> None:
    """Every commit validated (rate 1, interval 0): stats() counts the checks and their reads."""
    manager = make_manager(validation_rate=1.0, validation_interval=0.0)
    await manager.create_batch("b", expected_count=10)
    for i in range(3):
        await manager.record_completion("b", f"p{i}", predictions_count=1)
    await manager.aclose()

    stats = manager.stats()
    assert stats.validations >= 1
    assert stats.validations == stats.validation_reads  # one document read each
    assert stats.validation_reads / 3 == stats.validation_reads_per_completion


async def test_full_speed_writers_beside_validation_never_alert(
    firestore_emulator: EmulatorInfo,
    firestore_client: AsyncClient,
    batch_collection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two clients x 6 tasks record as fast as they can into two batches for ~3 s (with
    redeliveries across the clients) while every commit is validated (rate 1, interval 0):
    no CONSISTENCY MISMATCH, no alert, and a final check of each batch agrees."""
    second = make_client(firestore_emulator)
    alerts: list[ConsistencyReport] = []
    managers = [
        AsyncBatchStateManager(
            client,
            collection=batch_collection,
            mode=DUAL,
            validation_rate=1.0,
            validation_interval=0.0,
            alert_hooks=[alerts.append],
        )
        for client in (firestore_client, second)
    ]
    batches = ("hot", "warm")
    for batch in batches:
        await managers[0].create_batch(batch, expected_count=10_000)
    caplog.set_level(logging.ERROR, logger="async_batchstate.consistency")
    loop = asyncio.get_running_loop()
    stop = loop.time() + 3.0
    rng = random.Random(18)

    async def writer(index: int) -> None:
        manager, other = managers[index % 2], managers[1 - index % 2]
        done: list[tuple[str, str]] = []
        while loop.time() < stop:
            if done and rng.random() < 0.1:  # a redelivery, to the other process
                await other.record_completion(*rng.choice(done), predictions_count=1)
            batch = batches[index % 3 == 0]
            player = f"w{index}-{len(done)}"
            await manager.record_completion(batch, player, predictions_count=1)
            done.append((batch, player))

    try:
        await asyncio.gather(*(writer(i) for i in range(12)))
    finally:
        for manager in managers:
            await manager.aclose()
        await aclose_client(second)
    validator, final_alerts, _events = _validator(firestore_client, batch_collection)
    finals = [await validator.check(batch, finished=True) for batch in batches]

    stats = [manager.stats() for manager in managers]
    assert ([], [], []) == (alerts, final_alerts, _mismatch_records(caplog))
    assert [False, False] == [final.suspected for final in finals]
    assert sum(s.validations for s in stats) > 0
    assert sum(s.recorded for s in stats) > 100
