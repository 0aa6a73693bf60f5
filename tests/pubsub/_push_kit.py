"""What the push tests share: a local signing key and its certificate server, raw JWTs,
push envelopes, and two ways to send a request: straight to the ASGI app, or over HTTP
to uvicorn serving it (where an exception out of the app would show as a 500)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from async_batchstate.testing import free_port

AUDIENCE = "https://coordinator.example/push"
EMAIL = "push-invoker@demo-project.iam.gserviceaccount.com"
KID = "local-1"


def _key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


PRIVATE, PUBLIC = _key()
OTHER_PRIVATE, _ = _key()
_SIGNERS: dict[str, crypt.RSASigner] = {}


def signer(private: str = PRIVATE) -> crypt.RSASigner:
    """One signer per key (loading a PEM key checks it: tens of milliseconds)."""
    if private not in _SIGNERS:
        _SIGNERS[private] = crypt.RSASigner.from_string(private, key_id=KID)
    return _SIGNERS[private]


def good_claims(**claims: Any) -> dict[str, Any]:
    """Claims Google would send for this audience and account, valid for 10 minutes."""
    now = int(time.time())
    return {
        "aud": AUDIENCE,
        "iss": "https://accounts.google.com",
        "email": EMAIL,
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
        "sub": "1234",
    } | claims


def token(private: str = PRIVATE, **claims: Any) -> str:
    """A token signed by google-auth, as Pub/Sub's would be."""
    encoded: bytes = jwt.encode(signer(private), good_claims(**claims))
    return encoded.decode()


def b64(raw: bytes) -> str:
    """base64url without padding, as in a JWT."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(header: str, claims: str, *, signature: str | None = None) -> str:
    """A JWT from raw JSON texts, signed with PRIVATE unless ``signature`` is given."""
    signed = f"{b64(header.encode())}.{b64(claims.encode())}"
    if signature is None:
        signature = b64(signer().sign(signed.encode()))
    return f"{signed}.{signature}"


class CertsApp:
    """Serves ``{KID: PUBLIC}``; ``gate`` holds answers; ``cache_control`` and ``age`` as given."""

    def __init__(self, cache_control: str | None = None, *, age: str | None = None) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.cache_control = cache_control
        self.age = age

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.gate.wait()
        headers = [(b"content-type", b"application/json")]
        if self.cache_control is not None:
            headers.append((b"cache-control", self.cache_control.encode()))
        if self.age is not None:
            headers.append((b"age", self.age.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({KID: PUBLIC}).encode()})


def envelope(data: bytes, publish_time: str | None = None, **message: Any) -> bytes:
    """A push request body carrying ``data``."""
    fields: dict[str, Any] = {"data": base64.b64encode(data).decode(), "messageId": "m1"}
    if publish_time is not None:
        fields["publishTime"] = publish_time
    fields |= message
    return json.dumps({"message": fields, "subscription": "projects/p/subscriptions/s"}).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status and JSON body."""

    status: int
    body: Any


async def asgi_call(
    app: Any, body: bytes, *, authorization: str | None = None, method: str = "POST"
) -> Answer:
    """One request straight to the ASGI app (an exception out of it fails the test)."""
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

    headers = [(b"content-type", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode("latin-1")))
    await app({"type": "http", "method": method, "path": "/", "headers": headers}, receive, send)
    assert ["http.response.start", "http.response.body"] == [m["type"] for m in sent]
    return Answer(sent[0]["status"], json.loads(sent[1]["body"]))


def http_post(url: str, body: bytes, authorization: str | None = None) -> int:
    """One POST over a fresh HTTP/1.1 connection (blocking: call it in a thread)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization
        connection.request("POST", "/push", body, headers)
        response = connection.getresponse()
        response.read()
        return int(response.status)
    finally:
        connection.close()


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on loopback in this event loop; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
