"""Start, reset and stop the official Firestore emulator on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .._errors import BatchStateError, ConfigurationError

__all__ = ["EmulatorNotFoundError", "EmulatorStartError", "FirestoreEmulator", "find_emulator_jar"]

JAR_ENV = "ASYNC_BATCHSTATE_EMULATOR_JAR"
_MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
_JAR_IN_SDK = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
_SDK_GUESSES = (
    Path("/usr/lib/google-cloud-sdk"),
    Path("/usr/share/google-cloud-sdk"),
    Path("/opt/google-cloud-sdk"),
    Path.home() / "google-cloud-sdk",
)


class EmulatorNotFoundError(ConfigurationError):
    """Java or the emulator jar is not installed on this machine."""


class EmulatorStartError(BatchStateError, RuntimeError):
    """The emulator was found but did not start answering in time."""


def find_emulator_jar() -> Path:
    """Locate ``cloud-firestore-emulator.jar``.

    Order: ``$ASYNC_BATCHSTATE_EMULATOR_JAR``, common Cloud SDK locations,
    then ``gcloud info``'s SDK root.

    Raises:
        EmulatorNotFoundError: No jar, or no ``java`` on ``PATH``.
    """
    if shutil.which("java") is None:
        raise EmulatorNotFoundError("java is not on PATH (the Firestore emulator needs Java 11+)")
    override = os.environ.get(JAR_ENV)
    if override:
        if not Path(override).is_file():
            raise EmulatorNotFoundError(f"{JAR_ENV}={override} is not a file")
        return Path(override)
    found = find_in_sdk(_JAR_IN_SDK)
    if found is not None:
        return found
    raise EmulatorNotFoundError(
        "the Firestore emulator is not installed: install google-cloud-cli with "
        "google-cloud-cli-firestore-emulator, or set " + JAR_ENV
    )


def find_in_sdk(relative: Path) -> Path | None:
    """``relative`` in the Cloud SDK: common locations first, then ``gcloud info``'s SDK root."""
    for root in _SDK_GUESSES:
        if (root / relative).is_file():
            return root / relative
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            root_text = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
            if root_text and (Path(root_text) / relative).is_file():
                return Path(root_text) / relative
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalEmulator:
    """An emulator process of our own on loopback, stopped by its process group.

    Started in its own process group, ready when ``GET /`` answers ``Ok``, stopped
    by that group (never by process name).

    Subclasses name the command (``_command``) and what they are (``_name``).
    """

    _name = "emulator"

    def __init__(
        self, port: int | None = None, *, host: str = "127.0.0.1", start_timeout: float = 60.0
    ) -> None:
        self.bind = host
        self.port = port if port is not None else free_port(host)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        """``host:port``, the value for the client's ``*_EMULATOR_HOST``."""
        return f"{self.bind}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The emulator's process id while this object runs it."""
        return self._process.pid if self._process is not None else None

    def _url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the emulator and wait until it answers.

        Raises:
            EmulatorNotFoundError: No Java or emulator.
            EmulatorStartError: It exited or did not answer within ``start_timeout``.
        """
        command = self._command()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._read_log()
                self._close_log()
                self._process = None
                raise EmulatorStartError(f"the {self._name} exited at start:\n{output}")
            if self.is_ready():
                return self
            time.sleep(0.05)
        output = self._read_log()
        self.stop()
        raise EmulatorStartError(
            f"the {self._name} did not answer on {self.host} in {self._start_timeout}s:\n{output}"
        )

    def is_ready(self) -> bool:
        """Whether ``GET /`` answers ``Ok``."""
        try:
            with urllib.request.urlopen(self._url("/"), timeout=1) as response:
                return bool(response.read().strip() == b"Ok")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop an emulator this object started: SIGTERM to its process group, then SIGKILL."""
        self._end_group(graceful=False)

    def _end_group(self, *, graceful: bool) -> None:
        """Wait for the process (``graceful``: it was asked to exit), else SIGTERM, SIGKILL."""
        process = self._process
        if process is None:
            return
        # None: no signal, wait for the exit it was asked for.
        signals = [None] if graceful else []
        for sig in [*signals, signal.SIGTERM, signal.SIGKILL]:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        # The emulator's Java may leave children in its group; end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._process = None
        self._close_log()

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


class FirestoreEmulator(LocalEmulator):
    """One emulator process of our own, on loopback.

    Use as a context manager, or call ``start()``/``stop()``:

        with FirestoreEmulator() as emulator:
            os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host

    It is started with Java directly (about 1 s; through gcloud about 2 s, and
    gcloud's Java child survives a SIGTERM to gcloud), in its own process group,
    and stopped with ``POST /shutdown``, then by its own process group: never by
    process name.

    Args:
        port: Port to listen on; a free one by default.
        host: Loopback address to bind.
        jar: Emulator jar; found by ``find_emulator_jar`` by default.
        start_timeout: Seconds to wait for ``GET /`` to answer ``Ok``.
    """

    _name = "Firestore emulator"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        jar: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(port, host=host, start_timeout=start_timeout)
        self._jar = jar

    def _command(self) -> list[str]:
        jar = self._jar or find_emulator_jar()
        return [
            "java",
            "-Duser.language=en",
            "-cp",
            str(jar),
            _MAIN_CLASS,
            "start",
            f"--host={self.bind}",
            f"--port={self.port}",
        ]

    def reset(self, project: str) -> None:
        """Delete every document of ``project``'s default database."""
        request = urllib.request.Request(
            self._url(f"/emulator/v1/projects/{project}/databases/(default)/documents"),
            method="DELETE",
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def kill(self) -> None:
        """Kill the emulator outright (SIGKILL to its process group), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)

    def stop(self) -> None:
        """Shut down gracefully (``POST /shutdown``), else terminate its process group."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, urllib.error.URLError):
                request = urllib.request.Request(self._url("/shutdown"), method="POST")
                urllib.request.urlopen(request, timeout=5).close()
        self._end_group(graceful=True)

    def __repr__(self) -> str:
        state = (
            "running" if self._process is not None and self._process.poll() is None else "stopped"
        )
        return f"<FirestoreEmulator {self.host} pid={self.pid} {state}>"
