"""Start and stop the official Pub/Sub emulator on a free loopback port; make topics over REST."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from ._emulator import EmulatorNotFoundError, LocalEmulator, find_in_sdk

__all__ = ["PUBSUB_HOST_ENV", "LoopbackAsgiServer", "PubSubEmulator", "find_pubsub_emulator"]

PUBSUB_HOST_ENV = "PUBSUB_EMULATOR_HOST"
BINARY_ENV = "ASYNC_BATCHSTATE_PUBSUB_EMULATOR"
_BINARY_IN_SDK = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def find_pubsub_emulator() -> Path:
    """Locate ``cloud-pubsub-emulator``: ``$ASYNC_BATCHSTATE_PUBSUB_EMULATOR``, then the Cloud SDK.

    Raises:
        EmulatorNotFoundError: No emulator, or no ``java`` on ``PATH``.
    """
    if shutil.which("java") is None:
        raise EmulatorNotFoundError("java is not on PATH (the Pub/Sub emulator needs Java)")
    override = os.environ.get(BINARY_ENV)
    if override:
        if not Path(override).is_file():
            raise EmulatorNotFoundError(f"{BINARY_ENV}={override} is not a file")
        return Path(override)
    found = find_in_sdk(_BINARY_IN_SDK)
    if found is None:
        raise EmulatorNotFoundError(
            "the Pub/Sub emulator is not installed: install google-cloud-cli with "
            "google-cloud-cli-pubsub-emulator, or set " + BINARY_ENV
        )
    return found


class PubSubEmulator(LocalEmulator):
    """One Pub/Sub emulator process of our own on loopback, or one already running.

        with PubSubEmulator() as emulator:
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
            emulator.create_topic("demo-project", "completions")

    Started in its own process group and stopped by that group (never by process
    name). ``PubSubEmulator.attach(host)`` wraps one started elsewhere (``stop``
    then leaves it running). The REST helpers need no Pub/Sub client library.
    Project, topic and subscription names need at least 6 characters.

    Args:
        port: Port to listen on; a free one by default.
        host: Loopback address to bind.
        binary: ``cloud-pubsub-emulator``; ``find_pubsub_emulator()`` by default.
        start_timeout: Seconds to wait for ``GET /`` to answer ``Ok``.
    """

    _name = "Pub/Sub emulator"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(port, host=host, start_timeout=start_timeout)
        self._binary = binary

    @classmethod
    def attach(cls, host: str) -> PubSubEmulator:
        """An emulator already listening at ``host:port`` (e.g. ``$PUBSUB_EMULATOR_HOST``)."""
        bind, _, port = host.rpartition(":")
        return cls(int(port), host=bind)

    def _command(self) -> list[str]:
        binary = self._binary or find_pubsub_emulator()
        return [str(binary), f"--host={self.bind}", f"--port={self.port}"]

    # -- REST helpers ----------------------------------------------------------------

    def create_topic(self, project: str, topic: str) -> str:
        """Create ``topic`` (idempotent); returns ``projects/{project}/topics/{topic}``."""
        path = f"projects/{project}/topics/{topic}"
        self._put(path, {})
        return path

    def create_subscription(
        self,
        project: str,
        subscription: str,
        topic: str,
        *,
        ack_deadline: int = 10,
        push_endpoint: str | None = None,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
        retry_backoff: tuple[float, float] | None = None,
    ) -> str:
        """Create a pull (or, with ``push_endpoint``, push) subscription to ``topic``.

        Args:
            project: The project of both.
            subscription: The subscription's short name.
            topic: The topic's short name.
            ack_deadline: Seconds (10-600).
            push_endpoint: URL the emulator POSTs each message to.
            dead_letter_topic: Short name of a dead-letter topic.
            max_delivery_attempts: Deliveries before dead-lettering (5-100).
            retry_backoff: ``(minimum, maximum)`` seconds of the retry policy.

        Returns:
            ``projects/{project}/subscriptions/{subscription}``.
        """
        path = f"projects/{project}/subscriptions/{subscription}"
        body: dict[str, Any] = {
            "topic": f"projects/{project}/topics/{topic}",
            "ackDeadlineSeconds": ack_deadline,
        }
        if push_endpoint is not None:
            body["pushConfig"] = {"pushEndpoint": push_endpoint}
        if dead_letter_topic is not None:
            body["deadLetterPolicy"] = {
                "deadLetterTopic": f"projects/{project}/topics/{dead_letter_topic}",
                "maxDeliveryAttempts": max_delivery_attempts,
            }
        if retry_backoff is not None:
            body["retryPolicy"] = {
                "minimumBackoff": f"{retry_backoff[0]}s",
                "maximumBackoff": f"{retry_backoff[1]}s",
            }
        self._put(path, body)
        return path

    def publish(
        self, project: str, topic: str, messages: list[bytes], **attributes: str
    ) -> list[str]:
        """Publish ``messages`` (1,000 per request) to ``topic``; returns their message ids."""
        ids: list[str] = []
        for start in range(0, len(messages), 1000):
            body = {
                "messages": [
                    {"data": base64.b64encode(m).decode(), "attributes": attributes}
                    for m in messages[start : start + 1000]
                ]
            }
            answer = self._call("POST", f"projects/{project}/topics/{topic}:publish", body)
            ids += answer.get("messageIds", [])
        return ids

    def _put(self, path: str, body: dict[str, Any]) -> None:
        try:
            self._call("PUT", path, body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already exists
                raise

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://{self.host}/v1/{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read() or b"{}")
        return answer if isinstance(answer, dict) else {}

    def __repr__(self) -> str:
        running = self._process is not None and self._process.poll() is None
        owner = "running" if running else "attached" if self._process is None else "stopped"
        return f"<PubSubEmulator {self.host} pid={self.pid} {owner}>"


class LoopbackAsgiServer:
    """A minimal HTTP/1.1 server for one ASGI app on loopback, for push tests and the demo.

        async with LoopbackAsgiServer(endpoint) as server:
            emulator.create_subscription(..., push_endpoint=server.url + "/push")

    Enough for Pub/Sub's push requests (a POST with a ``Content-Length`` body,
    keep-alive); not a production server: serve production apps with uvicorn,
    hypercorn or Cloud Run's own.

    Args:
        app: The ASGI app (``http`` scopes only).
        host: Loopback address to bind.
        port: Port; a free one by default.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests = 0

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self._host}:{self._port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._connection, self._host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # keep-alive connections (no close_clients in 3.11)
                writer.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not reader.at_eof():
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [
                    (k.strip().lower().encode(), v.strip().encode())
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                ]
                length = int(dict(headers).get(b"content-length", b"0"))
                body = await reader.readexactly(length)
                self.requests += 1
                await self._serve(method, target, headers, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> None:
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": headers,
            "client": None,
            "server": (self._host, self._port),
        }
        sent = False
        status = 500
        out_headers: list[tuple[bytes, bytes]] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                data = message.get("body", b"")
                head = [f"HTTP/1.1 {status} X", f"content-length: {len(data)}"]
                head += [f"{k.decode()}: {v.decode()}" for k, v in out_headers]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()

        await self._app(scope, receive, send)
