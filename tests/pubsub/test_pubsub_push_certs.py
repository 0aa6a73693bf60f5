"""Push authentication under load: certificates cached and rate-limited, and forged
requests that cannot take the concurrency slots of authenticated ones."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from async_batchstate import AsyncBatchStateManager
from async_batchstate.pubsub import PushAuth, PushEndpoint
from async_batchstate.testing import FakeClock, LoopbackAsgiServer

from ..helpers import ManagerFactory
from ..pubsub_helpers import payload, wait_for
from ._push_kit import AUDIENCE, EMAIL, CertsApp, asgi_call, envelope, good_claims, raw_token, token


def forged(kid: str) -> str:
    """A well-formed token naming a key id that the certificates do not have."""
    header = json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"})
    return "Bearer " + raw_token(header, json.dumps(good_claims()))


def valid() -> str:
    return f"Bearer {token()}"


async def endpoint_for(
    manager: AsyncBatchStateManager, certs_url: str, clock: FakeClock | None = None, **auth: float
) -> PushEndpoint:
    await manager.create_batch("b", expected_players=["p1", "p2"])
    push_auth = PushAuth(AUDIENCE, service_account_email=EMAIL, certs_url=certs_url, **auth)  # type: ignore[arg-type]
    if clock is None:
        return PushEndpoint(manager, auth=push_auth, max_concurrency=2)
    return PushEndpoint(manager, auth=push_auth, max_concurrency=2, clock=clock)


async def statuses(endpoint: PushEndpoint, authorizations: list[str]) -> list[int]:
    body = envelope(payload("b", "p1", 3))
    answers = await asyncio.gather(
        *(asgi_call(endpoint, body, authorization=a) for a in authorizations)
    )
    return [a.status for a in answers]


async def test_forged_key_ids_fetch_certificates_at_most_once_per_interval(
    make_manager: ManagerFactory,
) -> None:
    """40 unknown key ids at once: one fetch; again 29 s later: none; 31 s later: one more."""
    clock = FakeClock()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await endpoint_for(make_manager(), certs.url, clock)
        kids = [f"forged-{i}" for i in range(40)]
        assert [401] * 40 == await statuses(endpoint, [forged(k) for k in kids])
        assert 1 == certs.requests
        clock.advance(29)
        assert [401] * 40 == await statuses(endpoint, [forged(k + "x") for k in kids])
        assert 1 == certs.requests
        clock.advance(2)
        assert [401] * 40 == await statuses(endpoint, [forged(k + "y") for k in kids])
        assert 2 == certs.requests == endpoint.certificate_fetches


async def test_one_certificate_fetch_serves_every_request_waiting_for_it(
    make_manager: ManagerFactory,
) -> None:
    """20 valid requests on an empty cache while the fetch hangs: one fetch, then 20 answers."""
    app = CertsApp()
    app.gate.clear()
    async with LoopbackAsgiServer(app) as certs:
        endpoint = await endpoint_for(make_manager(), certs.url)
        answers = asyncio.ensure_future(statuses(endpoint, [valid()] * 20))
        await wait_for(lambda: certs.requests >= 1, what="the fetch")
        assert 1 == certs.requests  # the other 19 joined it before it even reached the server
        app.gate.set()
        got = await answers
    assert 20 == len(got)
    assert {200, 429} >= set(got)  # max_concurrency=2: at most 2 writes at once
    assert 1 == endpoint.certificate_fetches


@pytest.mark.parametrize(
    ("cache_control", "age", "lifetime"),
    [
        ("public, max-age=21116, must-revalidate, no-transform", None, 21116),
        ("max-age=100", "40", 60),
        (None, None, 300),  # no max-age: PushAuth.certs_ttl
        ("no-store", None, 30),  # not cacheable: refetched at the least interval
    ],
    ids=["google", "age", "none", "no-store"],
)
async def test_certificates_are_kept_for_the_response_s_cache_lifetime(
    make_manager: ManagerFactory, cache_control: str | None, age: str | None, lifetime: int
) -> None:
    """Known key ids use the cache until max-age (less Age) passes; then one fetch."""
    clock = FakeClock()
    app = CertsApp(cache_control, age=age)
    async with LoopbackAsgiServer(app) as certs:
        endpoint = await endpoint_for(make_manager(), certs.url, clock)
        assert [200] == await statuses(endpoint, [valid()])
        clock.advance(lifetime - 1)
        assert [200] == await statuses(endpoint, [valid()])
        assert 1 == certs.requests
        clock.advance(2)
        assert [200] == await statuses(endpoint, [valid()])
        assert 2 == certs.requests


async def test_forged_requests_pending_on_a_fetch_do_not_take_slots(
    make_manager: ManagerFactory,
) -> None:
    """60 forged requests wait on a hung certificate fetch; 10 valid ones still get 200, not 429."""
    app = CertsApp()
    async with LoopbackAsgiServer(app) as certs:
        endpoint = await endpoint_for(make_manager(), certs.url, certs_min_interval=0)
        assert [200] == await statuses(endpoint, [valid()])  # certificates cached
        app.gate.clear()
        pending = asyncio.ensure_future(statuses(endpoint, [forged(f"f{i}") for i in range(60)]))
        await wait_for(lambda: certs.requests >= 2, what="the refresh for unknown key ids")
        for _ in range(10):
            assert [200] == await statuses(endpoint, [valid()])
        assert not pending.done()
        app.gate.set()
        assert [401] * 60 == await pending
    assert (0, 11) == (endpoint.stats().saturated, endpoint.stats().acked)


async def test_a_failed_fetch_also_waits_out_the_interval(make_manager: ManagerFactory) -> None:
    """Certificates unreachable: 503 (Pub/Sub retries), one fetch however many requests come."""
    async with LoopbackAsgiServer(CertsApp()) as gone:
        url = gone.url
    endpoint = await endpoint_for(make_manager(), url)
    assert [503] * 10 == await statuses(endpoint, [valid()] * 10)
    assert 1 == endpoint.certificate_fetches
    assert (0, 0) == (endpoint.stats().received, endpoint.stats().unauthorized)


def test_push_auth_refuses_bad_durations() -> None:
    """Negative or non-numeric durations, or a zero fetch timeout, are refused."""
    table: list[dict[str, Any]] = [
        {"certs_ttl": -1},
        {"certs_min_interval": "30"},
        {"certs_timeout": 0},
    ]
    for bad in table:
        with pytest.raises(ValueError):
            PushAuth(AUDIENCE, **bad)
