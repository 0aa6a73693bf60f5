"""The pull consumer on the real Pub/Sub emulator, Firestore emulator behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio
from google.cloud import pubsub_v1
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager
from async_batchstate.pubsub import PoisonMessage, PullConsumer, UnknownBatchPolicy
from async_batchstate.testing import FaultPoint, PubSubEmulator

from ..helpers import ManagerFactory
from ..pubsub_helpers import (
    PROJECT,
    RefuseFirstWrites,
    assert_exact,
    create_batches,
    messages,
    names,
    on_complete_recorder,
    payload,
    plan,
    wait_finalized,
    wait_for,
)


@pytest_asyncio.fixture
async def subscriber(pubsub_emulator: PubSubEmulator) -> AsyncIterator[pubsub_v1.SubscriberClient]:
    """A subscriber client on the emulator (PUBSUB_EMULATOR_HOST is set by the fixture)."""
    client = pubsub_v1.SubscriberClient()
    yield client
    await asyncio.to_thread(client.close)


def subscription(emulator: PubSubEmulator, **kwargs: object) -> tuple[str, str]:
    """A fresh topic and pull subscription (10 s ack deadline)."""
    topic, sub = names()
    emulator.create_topic(PROJECT, topic)
    return topic, emulator.create_subscription(PROJECT, sub, topic, **kwargs)  # type: ignore[arg-type]


async def test_pull_records_every_completion_once_despite_publisher_duplicates(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """3 batches x 30 players, every 5th published twice; at most 8 outstanding: exact."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(3, 30)
    await create_batches(manager, expected)
    topic, path = subscription(pubsub_emulator)
    published = messages(expected, duplicate_every=5)
    pubsub_emulator.publish(PROJECT, topic, published)
    peak = 0
    async with PullConsumer(manager, path, subscriber=subscriber, max_outstanding=8) as consumer:

        def done() -> bool:
            nonlocal peak
            peak = max(peak, consumer.stats().in_flight)
            return consumer.stats().acked >= len(published)

        await wait_for(done, what="every ack")
    assert 0 < peak <= 8
    stats = consumer.stats()
    assert (0, 0) == (stats.poison, stats.retried)
    assert stats.duplicates >= 18
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_a_failed_write_is_nacked_and_the_redelivery_records_it(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The first write of 5 players is refused (WriteFailedError): nack, redelivered, recorded."""
    refuse = RefuseFirstWrites()
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete, fault_injector=refuse, coalesce=False)
    expected = plan(1, 12)
    await create_batches(manager, expected)
    topic, path = subscription(pubsub_emulator)
    pubsub_emulator.publish(PROJECT, topic, messages(expected))
    async with PullConsumer(manager, path, subscriber=subscriber) as consumer:
        await wait_finalized(manager, expected)
        await wait_for(lambda: consumer.stats().acked >= 12, what="every ack")
    assert 5 == len(refuse.refused)
    assert consumer.stats().retried >= 5
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_a_completion_before_its_batch_comes_back_later_not_in_a_hot_loop(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Unknown batch: the ack deadline moves out (a delay, not 50 ms nacks); recorded once created."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(1, 3)
    batch_id = next(iter(expected))
    topic, path = subscription(pubsub_emulator)
    pubsub_emulator.publish(PROJECT, topic, messages(expected))
    policy = UnknownBatchPolicy(min_delay=2, max_delay=2)
    async with PullConsumer(manager, path, subscriber=subscriber, unknown_batch=policy) as consumer:
        await wait_for(lambda: consumer.stats().delayed >= 3, what="the first deliveries")
        await manager.create_batch(batch_id, expected_players=list(expected[batch_id]))
        await wait_finalized(manager, expected)
        await wait_for(lambda: consumer.stats().acked >= 3, what="every ack")
    assert consumer.stats().delayed <= 9  # about one per 2 s, not one per 50-90 ms
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


@pytest.mark.parametrize("policy", ["ack", "nack"])
async def test_poison_is_acknowledged_or_left_to_the_dead_letter_topic(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
    policy: str,
) -> None:
    """ack: the hook once per poison message; nack: redelivered until the dead-letter topic takes it."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(1, 5)
    batch_id = next(iter(expected))
    await create_batches(manager, expected)
    topic, _ = names()
    pubsub_emulator.create_topic(PROJECT, topic + "-dead")
    dead = pubsub_emulator.create_subscription(PROJECT, "dead-" + topic, topic + "-dead")
    topic, path = subscription(
        pubsub_emulator, dead_letter_topic=topic + "-dead", max_delivery_attempts=5
    )
    bad = [b"junk", payload(batch_id, "stranger", 1)]
    pubsub_emulator.publish(PROJECT, topic, bad + messages(expected))
    poisoned: list[PoisonMessage] = []
    async with PullConsumer(
        manager,
        path,
        subscriber=subscriber,
        poison=policy,  # type: ignore[arg-type]
        on_poison=poisoned.append,
    ) as consumer:
        await wait_finalized(manager, expected)
        if policy == "ack":
            await wait_for(lambda: len(poisoned) >= 2, what="the poison")
        else:
            seen: list[bytes] = []
            for _ in range(60):
                answer = await asyncio.to_thread(
                    subscriber.pull, request={"subscription": dead, "max_messages": 10}, timeout=30
                )
                seen += [m.message.data for m in answer.received_messages]
                if len(seen) >= 2:
                    break
            assert sorted(bad) == sorted(seen)
    if policy == "ack":
        assert 2 == len(poisoned) == consumer.stats().poison
    else:
        assert len(poisoned) >= 10  # 5 deliveries each
    assert all(p.acknowledged == (policy == "ack") for p in poisoned)
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


@pytest.mark.timeout(240)
async def test_drain_nacks_what_it_cannot_finish_and_acks_only_what_was_written(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A drain with writes held past the grace nacks them; a second consumer finishes exactly.

    (The emulator routes the messages nacked at the close to the closing stream,
    so the second consumer gets them only when that 10 s lease runs out.)
    """
    hold = asyncio.Event()

    async def held(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT:
            await hold.wait()

    finalized, on_complete = on_complete_recorder()
    blocked = make_manager(fault_injector=held)
    expected = plan(1, 10)
    await create_batches(blocked, expected)
    topic, path = subscription(pubsub_emulator)
    pubsub_emulator.publish(PROJECT, topic, messages(expected))
    first = await PullConsumer(blocked, path, subscriber=subscriber, max_outstanding=4).start()
    await wait_for(lambda: first.stats().in_flight == 4, what="4 writes in flight")
    assert 4 == await first.drain(grace=0.2)
    hold.set()
    assert 0 == first.stats().acked
    await first.aclose()
    manager: AsyncBatchStateManager = make_manager(on_complete=on_complete)
    async with PullConsumer(manager, path, subscriber=subscriber) as second:
        await wait_finalized(manager, expected, timeout=150)
        await wait_for(lambda: second.stats().acked >= 10, what="every ack")
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_wait_returns_normally_once_the_shutdown_is_over(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
) -> None:
    """The drain cancels the streaming pull; wait() still returns (no CancelledError) after it."""
    hold = asyncio.Event()

    async def held(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT:
            await hold.wait()

    manager = make_manager(fault_injector=held)
    expected = plan(1, 4)
    await create_batches(manager, expected)
    topic, path = subscription(pubsub_emulator)
    pubsub_emulator.publish(PROJECT, topic, messages(expected))
    consumer = await PullConsumer(manager, path, subscriber=subscriber).start()
    await wait_for(lambda: consumer.stats().in_flight == 4, what="4 writes in flight")
    waiter = asyncio.create_task(consumer.wait())
    shutdown = asyncio.create_task(consumer.shutdown(0.5))
    await asyncio.sleep(0.1)
    assert not waiter.done()  # the stream is closed, but the drain is not over
    assert 4 == await shutdown
    await waiter
    assert (0, 4) == (consumer.stats().acked, consumer.stats().retried)
    hold.set()
    await consumer.aclose()


async def test_deeply_nested_data_is_poison_not_redelivered(
    pubsub_emulator: PubSubEmulator,
    subscriber: pubsub_v1.SubscriberClient,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """JSON nested 100,000 deep (RecursionError in the parser) is poison once, not retried."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(1, 3)
    await create_batches(manager, expected)
    topic, path = subscription(pubsub_emulator)
    deep = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000]
    pubsub_emulator.publish(PROJECT, topic, deep + messages(expected))
    poisoned: list[PoisonMessage] = []
    async with PullConsumer(
        manager, path, subscriber=subscriber, poison="ack", on_poison=poisoned.append
    ) as consumer:
        await wait_finalized(manager, expected)
        await wait_for(lambda: len(poisoned) >= 2, what="the poison")
    assert (2, 0) == (consumer.stats().poison, consumer.stats().retried)
    assert {"MessageParseError"} == {type(p.error).__name__ for p in poisoned}
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)
