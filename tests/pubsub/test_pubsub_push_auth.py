"""Authenticated push: OIDC tokens signed by a local key, certificates served on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from async_batchstate.pubsub import PushAuth, PushEndpoint
from async_batchstate.testing import LoopbackAsgiServer

from ..helpers import ManagerFactory
from ..pubsub_helpers import payload
from ._push_kit import AUDIENCE, EMAIL, KID, OTHER_PRIVATE, PUBLIC, token


async def certs_app(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({KID: PUBLIC}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def post(url: str, data: bytes, authorization: str | None) -> int:
    envelope = {
        "message": {"data": base64.b64encode(data).decode(), "messageId": "1"},
        "subscription": "projects/demo-project/subscriptions/s",
    }
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    request = urllib.request.Request(url, json.dumps(envelope).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Basic dXNlcjpwdw==", 401),
        ("Bearer not-a-jwt", 401),
        (f"Bearer {token(OTHER_PRIVATE)}", 401),
        (f"Bearer {token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)}", 401),
        (f"Bearer {token(aud='https://elsewhere.example/push')}", 403),
        (f"Bearer {token(iss='https://evil.example')}", 403),
        (f"Bearer {token(email='someone@else.iam.gserviceaccount.com')}", 403),
        (f"Bearer {token(email_verified=False)}", 403),
    ],
    ids=[
        "missing",
        "not-bearer",
        "malformed",
        "other-key",
        "expired",
        "audience",
        "issuer",
        "email",
        "unverified",
    ],
)
async def test_a_refused_token_is_answered_401_or_403_and_writes_nothing(
    make_manager: ManagerFactory, authorization: str | None, status: int
) -> None:
    """Missing/forged/expired: 401; valid but for someone else: 403; the batch stays empty."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["p1"])
    async with LoopbackAsgiServer(certs_app) as certs:
        auth = PushAuth(AUDIENCE, service_account_email=EMAIL, certs_url=certs.url + "/certs")
        endpoint = PushEndpoint(manager, auth=auth)
        async with LoopbackAsgiServer(endpoint) as server:
            answer = await asyncio.to_thread(post, server.url, payload("b", "p1", 3), authorization)
    assert status == answer
    assert (0, 1) == (
        (await manager.get_progress("b")).completed_count,
        endpoint.stats().unauthorized,
    )


async def test_a_valid_token_is_recorded(make_manager: ManagerFactory) -> None:
    """The right key, audience, issuer and service account: 200 and the completion written."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["p1"])
    async with LoopbackAsgiServer(certs_app) as certs:
        auth = PushAuth(AUDIENCE, service_account_email=EMAIL, certs_url=certs.url)
        endpoint = PushEndpoint(manager, auth=auth)
        async with LoopbackAsgiServer(endpoint) as server:
            answer = await asyncio.to_thread(
                post, server.url, payload("b", "p1", 3), f"Bearer {token()}"
            )
            assert 1 == certs.requests
    assert 200 == answer
    assert 1 == (await manager.get_progress("b")).completed_count


async def test_unreachable_certificates_answer_503_so_pubsub_retries(
    make_manager: ManagerFactory,
) -> None:
    """No certificates to check against is not the sender's fault: 503, nothing written."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["p1"])
    async with LoopbackAsgiServer(certs_app) as gone:
        url = gone.url
    endpoint = PushEndpoint(manager, auth=PushAuth(AUDIENCE, certs_url=url))
    async with LoopbackAsgiServer(endpoint) as server:
        answer = await asyncio.to_thread(
            post, server.url, payload("b", "p1", 3), f"Bearer {token()}"
        )
    assert 503 == answer
    assert 0 == (await manager.get_progress("b")).completed_count
