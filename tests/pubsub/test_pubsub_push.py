"""The push endpoint on the real Pub/Sub emulator pushing to a loopback server, Firestore emulator behind."""

from __future__ import annotations

from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate.pubsub import PoisonMessage, PushEndpoint
from async_batchstate.testing import LoopbackAsgiServer, PubSubEmulator

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


async def test_push_records_every_completion_once_despite_publisher_duplicates(
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """3 batches x 30 players, every 5th message published twice: exact, each finalized once."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(3, 30)
    await create_batches(manager, expected)
    endpoint = PushEndpoint(manager)
    async with LoopbackAsgiServer(endpoint) as server:
        topic, sub = names()
        pubsub_emulator.create_topic(PROJECT, topic)
        pubsub_emulator.create_subscription(PROJECT, sub, topic, push_endpoint=server.url + "/push")
        published = messages(expected, duplicate_every=5)
        pubsub_emulator.publish(PROJECT, topic, published)
        await wait_finalized(manager, expected)
        await wait_for(lambda: endpoint.stats().acked >= len(published), what="every ack")
    stats = endpoint.stats()
    assert stats.duplicates >= len(published) - 90 == 18
    assert (0, 0) == (stats.poison, stats.retried)
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_a_failed_write_answers_503_and_the_redelivery_records_it(
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """The first write of 5 players is refused (WriteFailedError): 503, redelivered, recorded."""
    refuse = RefuseFirstWrites()
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete, fault_injector=refuse, coalesce=False)
    expected = plan(1, 12)
    await create_batches(manager, expected)
    endpoint = PushEndpoint(manager)
    async with LoopbackAsgiServer(endpoint) as server:
        topic, sub = names()
        pubsub_emulator.create_topic(PROJECT, topic)
        pubsub_emulator.create_subscription(PROJECT, sub, topic, push_endpoint=server.url)
        pubsub_emulator.publish(PROJECT, topic, messages(expected))
        await wait_finalized(manager, expected)
        await wait_for(lambda: endpoint.stats().acked >= 12, what="every ack")
    assert 5 == len(refuse.refused)
    assert endpoint.stats().retried >= 5
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_poison_under_ack_is_acknowledged_hooked_and_counted(
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """Junk, an unexpected player and a bad count: 200, the hook once each, nothing written."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(1, 5)
    batch_id = next(iter(expected))
    await create_batches(manager, expected)
    poisoned: list[PoisonMessage] = []
    endpoint = PushEndpoint(manager, poison="ack", on_poison=poisoned.append)
    async with LoopbackAsgiServer(endpoint) as server:
        topic, sub = names()
        pubsub_emulator.create_topic(PROJECT, topic)
        pubsub_emulator.create_subscription(PROJECT, sub, topic, push_endpoint=server.url)
        bad = [b"junk", payload(batch_id, "stranger", 1), payload(batch_id, "p000", -1)]
        pubsub_emulator.publish(PROJECT, topic, bad + messages(expected))
        await wait_finalized(manager, expected)
        await wait_for(lambda: endpoint.stats().acked + endpoint.stats().poison >= 8)
    assert 3 == endpoint.stats().poison == len(poisoned)
    assert all(p.acknowledged for p in poisoned)
    assert {"MessageParseError", "UnexpectedPlayerError", "InvalidCountError"} == {
        type(p.error).__name__ for p in poisoned
    }
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)


async def test_poison_under_nack_goes_to_the_dead_letter_topic(
    pubsub_emulator: PubSubEmulator,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """poison="nack": 422 each time; after max_delivery_attempts the dead-letter topic has it."""
    finalized, on_complete = on_complete_recorder()
    manager = make_manager(on_complete=on_complete)
    expected = plan(1, 5)
    await create_batches(manager, expected)
    endpoint = PushEndpoint(manager, poison="nack")
    dead: list[bytes] = []

    async def dead_letters(scope, receive, send):  # type: ignore[no-untyped-def]
        from async_batchstate.pubsub import decode_envelope

        body = (await receive())["body"]
        dead.append(decode_envelope(body).data)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with LoopbackAsgiServer(endpoint) as server, LoopbackAsgiServer(dead_letters) as dlq:
        topic, sub = names()
        pubsub_emulator.create_topic(PROJECT, topic)
        pubsub_emulator.create_topic(PROJECT, topic + "-dead")
        pubsub_emulator.create_subscription(
            PROJECT, sub + "-dead", topic + "-dead", push_endpoint=dlq.url
        )
        pubsub_emulator.create_subscription(
            PROJECT,
            sub,
            topic,
            push_endpoint=server.url,
            dead_letter_topic=topic + "-dead",
            max_delivery_attempts=5,
        )
        pubsub_emulator.publish(PROJECT, topic, [b"{not json", *messages(expected)])
        await wait_finalized(manager, expected)
        await wait_for(lambda: dead == [b"{not json"], timeout=60, what="the dead letter")
    assert endpoint.stats().poison >= 5
    await assert_exact(firestore_client, batch_collection, manager, expected, finalized)
