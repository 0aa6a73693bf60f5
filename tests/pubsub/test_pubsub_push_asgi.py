"""The push endpoint's answers, called as an ASGI app: 400/405/425/429/503, draining, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import Sequence
from typing import Any

import pytest

from async_batchstate import ManagerClosedError
from async_batchstate.pubsub import PushEndpoint, UnknownBatchPolicy, drain_on_sigterm
from async_batchstate.testing import FaultPoint

from ..helpers import ManagerFactory
from ..pubsub_helpers import payload


def envelope(data: bytes, publish_time: str | None = None) -> bytes:
    message: dict[str, Any] = {"data": base64.b64encode(data).decode(), "messageId": "m1"}
    if publish_time is not None:
        message["publishTime"] = publish_time
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


async def call(endpoint: PushEndpoint, body: bytes, method: str = "POST") -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.Event().wait()
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await endpoint({"type": "http", "method": method, "headers": []}, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


class Gate:
    """A fault injector that holds every write attempt until released."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if point is FaultPoint.BEFORE_COMMIT:
            self.reached.set()
            await self.release.wait()


async def test_bad_requests_are_refused_without_writing(make_manager: ManagerFactory) -> None:
    """GET: 405; a body that is no push envelope: 400."""
    endpoint = PushEndpoint(make_manager())
    assert 405 == (await call(endpoint, b"", method="GET"))[0]
    assert 400 == (await call(endpoint, b"{}"))[0]
    assert 0 == endpoint.stats().received


async def test_an_unknown_batch_is_too_early_until_the_grace_then_poison(
    make_manager: ManagerFactory,
) -> None:
    """A fresh message for a batch not created yet: 425; one past the grace: poison (422)."""
    endpoint = PushEndpoint(make_manager(), unknown_batch=UnknownBatchPolicy(grace=60))
    status, body = await call(endpoint, envelope(payload("nope", "p", 1), "2999-01-01T00:00:00Z"))
    assert (425, 10) == (status, body["retry_after"])
    status, _ = await call(endpoint, envelope(payload("nope", "p", 1), "2020-01-01T00:00:00Z"))
    assert 422 == status
    assert (1, 1) == (endpoint.stats().delayed, endpoint.stats().poison)


async def test_a_saturated_endpoint_answers_429(make_manager: ManagerFactory) -> None:
    """max_concurrency deliveries in flight: the next is answered 429 at once."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1", "p2"])
    endpoint = PushEndpoint(manager, max_concurrency=1)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    assert 429 == (await call(endpoint, envelope(payload("b", "p2", 1))))[0]
    gate.release.set()
    assert 200 == (await first)[0]
    assert 1 == endpoint.stats().saturated


async def test_drain_finishes_writes_within_the_grace(make_manager: ManagerFactory) -> None:
    """A write in flight when the drain starts is answered 200; new requests get 503."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1", "p2"])
    endpoint = PushEndpoint(manager)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    drain = asyncio.create_task(endpoint.drain(grace=30))
    await asyncio.sleep(0)
    assert 503 == (await call(endpoint, envelope(payload("b", "p2", 1))))[0]
    gate.release.set()
    assert (200, 0) == ((await first)[0], await drain)
    assert 1 == (await manager.get_progress("b")).completed_count


async def test_drain_answers_503_to_writes_past_the_grace(make_manager: ManagerFactory) -> None:
    """A write still held after the grace is cut short and answered 503, never 200."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    assert 1 == await endpoint.drain(grace=0.1)
    assert 503 == (await first)[0]
    gate.release.set()


async def test_lifespan_shutdown_drains(make_manager: ManagerFactory) -> None:
    """Served standalone (uvicorn), the lifespan shutdown drains the endpoint."""
    endpoint = PushEndpoint(make_manager())
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await endpoint({"type": "lifespan"}, receive, send)
    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == sent
    assert 503 == (await call(endpoint, envelope(b"{}")))[0]


@pytest.mark.parametrize("knob", [0, -1, 1.5, True])
async def test_max_concurrency_must_be_a_positive_int(
    make_manager: ManagerFactory, knob: Any
) -> None:
    """Refused before anything runs."""
    with pytest.raises(ValueError):
        PushEndpoint(make_manager(), max_concurrency=knob)


async def test_shutdown_cuts_writes_at_the_budget_and_closes_the_manager(
    make_manager: ManagerFactory,
) -> None:
    """A write held past the budget: 503, never 200; the manager is closed after it."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    assert 1 == await endpoint.shutdown(budget=0.2)
    assert 503 == (await first)[0]
    with pytest.raises(ManagerClosedError):
        await manager.record_completion("b", "p1", 1)
    gate.release.set()


async def test_lifespan_shutdown_runs_the_shutdown_within_its_budget(
    make_manager: ManagerFactory,
) -> None:
    """Served alone, the lifespan shutdown drains and closes the manager in shutdown_budget."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager, shutdown_budget=0.2)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        pass

    await endpoint({"type": "lifespan"}, receive, send)
    assert 503 == (await first)[0]
    with pytest.raises(ManagerClosedError):
        await manager.record_completion("b", "p1", 1)
    gate.release.set()


async def test_a_request_the_server_cancels_is_answered_503_and_writes_nothing(
    make_manager: ManagerFactory,
) -> None:
    """uvicorn cancels requests at its graceful timeout: the answer is 503 (so the message
    comes back) and nothing is written while the write is held; the held write may still
    land whole after the cut, so the redelivery is what makes the count exactly one."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": envelope(payload("b", "p1", 1))}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = asyncio.create_task(endpoint({"type": "http", "method": "POST"}, receive, send))
    await gate.reached.wait()
    request.cancel()
    await request
    assert 503 == sent[0]["status"]
    assert 0 == (await manager.get_progress("b")).completed_count  # held: nothing written
    assert (0, 1) == (endpoint.stats().in_flight, endpoint.stats().retried)
    gate.release.set()  # the cut write may now land (whole); the redelivery counts once
    assert 200 == (await call(endpoint, envelope(payload("b", "p1", 1))))[0]
    assert 1 == (await manager.get_progress("b")).completed_count


async def test_a_second_sigterm_during_the_shutdown_is_ignored(
    make_manager: ManagerFactory,
) -> None:
    """drain_on_sigterm runs one shutdown however many SIGTERMs come, and says how it went."""
    gate = Gate()
    manager = make_manager(fault_injector=gate)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    first = asyncio.create_task(call(endpoint, envelope(payload("b", "p1", 1))))
    await gate.reached.wait()
    done = drain_on_sigterm(endpoint, grace=0.3)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert 1 == await done
    assert 503 == (await first)[0]
    gate.release.set()


async def test_shutdown_hands_a_running_callback_off_within_the_budget(
    make_manager: ManagerFactory,
) -> None:
    """An on_complete still running at the end of the budget is cancelled (it stays owed)."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def on_complete(batch_id: str, progress: object) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    manager = make_manager(on_complete=on_complete)
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    assert 200 == (await call(endpoint, envelope(payload("b", "p1", 1))))[0]
    await started.wait()
    assert 0 == await endpoint.shutdown(budget=0.3)
    assert cancelled.is_set()
    assert "complete" == (await make_manager().get_progress("b")).status
