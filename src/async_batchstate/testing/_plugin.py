"""The pytest plugin (entry point ``pytest11``): Firestore emulator fixtures.

Fixtures:
    firestore_emulator: session; the emulator's ``host:port`` and project,
        started on a free loopback port or reused from ``FIRESTORE_EMULATOR_HOST``.
    firestore_client: per test; an ``AsyncClient`` on the emulator, bound to
        the test's event loop and closed after it.
    firestore_namespace: per test; a unique prefix for collection names.
    batch_collection: per test; ``"<namespace>_batches"``, a collection no other test uses.

When no emulator can be found the fixtures skip the test with the reason,
unless ``--require-firestore-emulator`` (or ``ASYNC_BATCHSTATE_REQUIRE_EMULATOR=1``)
makes it an error.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from .._connect import aclose_client
from .._emulator import EmulatorNotFoundError, EmulatorStartError, FirestoreEmulator
from ._fixtures_support import EmulatorInfo, make_client

REQUIRE_ENV = "ASYNC_BATCHSTATE_REQUIRE_EMULATOR"
HOST_ENV = "FIRESTORE_EMULATOR_HOST"
DEFAULT_PROJECT = "demo-async-batchstate"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--require-firestore-emulator`` and ``firestore_project``."""
    group = parser.getgroup("async_batchstate", "Firestore emulator (async-batchstate)")
    group.addoption(
        "--require-firestore-emulator",
        action="store_true",
        default=False,
        help=f"fail instead of skipping when no Firestore emulator can be started "
        f"(also: {REQUIRE_ENV}=1)",
    )
    parser.addini("firestore_project", "project id for emulator clients", default=DEFAULT_PROJECT)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``emulator`` marker."""
    config.addinivalue_line("markers", "emulator: needs the Firestore emulator")


def _required(config: pytest.Config) -> bool:
    flag = os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(config.getoption("--require-firestore-emulator"))


@pytest.fixture(scope="session")
def firestore_emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorInfo]:
    """The session's emulator: reused from ``FIRESTORE_EMULATOR_HOST`` or started here."""
    project = str(request.config.getini("firestore_project"))
    existing = os.environ.get(HOST_ENV)
    if existing:
        yield EmulatorInfo(existing, project, None)
        return
    try:
        emulator = FirestoreEmulator().start()
    except (EmulatorNotFoundError, EmulatorStartError) as exc:
        message = f"Firestore emulator unavailable: {exc}"
        if _required(request.config):
            pytest.fail(message + f" (required by --require-firestore-emulator/{REQUIRE_ENV})")
        pytest.skip(message)
    os.environ[HOST_ENV] = emulator.host
    try:
        yield EmulatorInfo(emulator.host, project, emulator)
    finally:
        os.environ.pop(HOST_ENV, None)
        emulator.stop()


@pytest_asyncio.fixture
async def firestore_client(firestore_emulator: EmulatorInfo) -> AsyncIterator[AsyncClient]:
    """A fresh ``AsyncClient`` on the emulator for one test (clients are loop-bound)."""
    client = make_client(firestore_emulator)
    try:
        yield client
    finally:
        await aclose_client(client)


@pytest.fixture
def firestore_namespace(request: pytest.FixtureRequest) -> str:
    """A prefix for collection names that no other test (or run) uses."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:40].strip("_")
    return f"t_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def batch_collection(firestore_namespace: str) -> str:
    """A batch collection of this test's own."""
    return f"{firestore_namespace}_batches"
