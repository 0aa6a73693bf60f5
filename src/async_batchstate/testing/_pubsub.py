"""Start and stop the official Pub/Sub emulator on a free loopback port; make topics over REST."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ._emulator import EmulatorNotFoundError, EmulatorStartError, find_in_sdk, free_port

__all__ = ["PUBSUB_HOST_ENV", "PubSubEmulator", "find_pubsub_emulator"]

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


class PubSubEmulator:
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

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.bind = host
        self.port = port if port is not None else free_port(host)
        self._binary = binary
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def attach(cls, host: str) -> PubSubEmulator:
        """An emulator already listening at ``host:port`` (e.g. ``$PUBSUB_EMULATOR_HOST``)."""
        bind, _, port = host.rpartition(":")
        return cls(int(port), host=bind)

    @property
    def host(self) -> str:
        """``host:port``, the value for ``PUBSUB_EMULATOR_HOST``."""
        return f"{self.bind}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The emulator's process id while this object runs it."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the emulator and wait until it answers.

        Raises:
            EmulatorNotFoundError: No Java or emulator.
            EmulatorStartError: It exited or did not answer within ``start_timeout``.
        """
        binary = self._binary or find_pubsub_emulator()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self._process = subprocess.Popen(
            [str(binary), f"--host={self.bind}", f"--port={self.port}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._read_log()
                self._process = None
                self._close_log()
                raise EmulatorStartError(f"the Pub/Sub emulator exited at start:\n{output}")
            if self.is_ready():
                return self
            time.sleep(0.05)
        output = self._read_log()
        self.stop()
        raise EmulatorStartError(
            f"the Pub/Sub emulator did not answer on {self.host} in {self._start_timeout}s:\n"
            f"{output}"
        )

    def is_ready(self) -> bool:
        """Whether ``GET /`` answers ``Ok``."""
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
                return bool(response.read().strip() == b"Ok")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop an emulator this object started: SIGTERM to its process group, then SIGKILL."""
        process = self._process
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # children left in its group
        self._process = None
        self._close_log()

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

    def _put(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"http://{self.host}/v1/{path}",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"content-type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already exists
                raise

    # -- plumbing --------------------------------------------------------------------

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = self._process is not None and self._process.poll() is None
        owner = "running" if running else "attached" if self._process is None else "stopped"
        return f"<PubSubEmulator {self.host} pid={self.pid} {owner}>"
