"""The async-batchstate pytest plugin (entry point ``pytest11``): Firestore emulator fixtures.

Installing async-batchstate registers this plugin in every pytest run of that
environment, so loading it must never break or slow down a test suite that
does not use it. It is therefore a top-level module outside the
``async_batchstate`` package (as hypothesis's ``_hypothesis_pytestplugin`` is):
importing it imports pytest and the standard library only, never the library
(google-cloud-firestore, grpc) nor pytest-asyncio. Each fixture imports what it
needs when a test first asks for it.

Fixtures:
    firestore_emulator: session; the emulator's ``host:port`` and project
        (an ``async_batchstate.testing.EmulatorInfo``), started on a free
        loopback port or reused from ``FIRESTORE_EMULATOR_HOST``.
    firestore_client: per test; an ``AsyncClient`` on the emulator, bound to
        the test's event loop and closed after it. An async fixture, provided
        through pytest-asyncio; where pytest-asyncio is not installed (or is
        disabled) a test that asks for it errors with a message saying what to
        install, and the rest of the session runs.
    firestore_namespace: per test; a unique prefix for collection names.
    batch_collection: per test; ``"<namespace>_batches"``, a collection no other test uses.
    pubsub_emulator: session; an ``async_batchstate.testing.PubSubEmulator`` started
        on a free loopback port (and ``PUBSUB_EMULATOR_HOST`` set to it) or reused
        from ``PUBSUB_EMULATOR_HOST``; stopped by its own process group.

When no emulator can be found the fixtures skip the test with the reason,
unless ``--require-firestore-emulator`` (or ``ASYNC_BATCHSTATE_REQUIRE_EMULATOR=1``)
makes it an error; likewise for ``pubsub_emulator`` with ``--require-pubsub-emulator``
(or ``ASYNC_BATCHSTATE_REQUIRE_PUBSUB_EMULATOR=1``). The ini option
``firestore_project`` names the clients' project; the marker ``emulator`` is registered.
"""

from __future__ import annotations

import os
import re
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from google.cloud.firestore_v1.async_client import AsyncClient

    from async_batchstate.testing import EmulatorInfo, PubSubEmulator

REQUIRE_ENV = "ASYNC_BATCHSTATE_REQUIRE_EMULATOR"
HOST_ENV = "FIRESTORE_EMULATOR_HOST"
PUBSUB_REQUIRE_ENV = "ASYNC_BATCHSTATE_REQUIRE_PUBSUB_EMULATOR"
PUBSUB_HOST_ENV = "PUBSUB_EMULATOR_HOST"
DEFAULT_PROJECT = "demo-async-batchstate"
CLIENT_FIXTURES_PLUGIN = "async_batchstate.firestore_client"
NEEDS_PYTEST_ASYNCIO = (
    "the firestore_client fixture is async and needs pytest-asyncio, which is not installed "
    "or is disabled: pip install pytest-asyncio. (With anyio's pytest plugin instead, build "
    "the client in an async fixture of your own: make_client(firestore_emulator), then "
    "aclose_client(client), both from async_batchstate.testing.)"
)


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
    group.addoption(
        "--require-pubsub-emulator",
        action="store_true",
        default=False,
        help=f"fail instead of skipping when no Pub/Sub emulator can be started "
        f"(also: {PUBSUB_REQUIRE_ENV}=1)",
    )
    parser.addini("firestore_project", "project id for emulator clients", default=DEFAULT_PROJECT)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``emulator`` marker and the ``firestore_client`` fixture that fits.

    ``firestore_client`` is a pytest-asyncio fixture when pytest-asyncio is
    active, else a fixture that fails with ``NEEDS_PYTEST_ASYNCIO``. By now every
    plugin (entry points, ``-p``, initial conftests) is registered, so this is
    where it can be told; ``pytest_asyncio`` is only imported if already loaded.
    """
    config.addinivalue_line("markers", "emulator: needs the Firestore emulator")
    if _pytest_asyncio_active(config):
        fixture = _async_client_fixture()
    else:
        fixture = _missing_client_fixture()
    holder = types.ModuleType(CLIENT_FIXTURES_PLUGIN)
    vars(holder)["firestore_client"] = fixture
    config.pluginmanager.register(holder, name=CLIENT_FIXTURES_PLUGIN)


def _pytest_asyncio_active(config: pytest.Config) -> bool:
    return any(
        getattr(plugin, "__name__", None) == "pytest_asyncio.plugin"
        for plugin in config.pluginmanager.get_plugins()
    )


def _async_client_fixture() -> Callable[..., Any]:
    import pytest_asyncio  # already imported: its plugin is registered

    @pytest_asyncio.fixture
    async def firestore_client(firestore_emulator: EmulatorInfo) -> AsyncIterator[AsyncClient]:
        """A fresh ``AsyncClient`` on the emulator for one test (clients are loop-bound)."""
        from async_batchstate.testing import aclose_client, make_client

        client = make_client(firestore_emulator)
        try:
            yield client
        finally:
            await aclose_client(client)

    return firestore_client


def _missing_client_fixture() -> Callable[..., Any]:
    @pytest.fixture
    def firestore_client() -> NoReturn:
        """Stands in for the async ``firestore_client`` where pytest-asyncio is not active."""
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)

    return firestore_client


def _required(
    config: pytest.Config,
    env: str = REQUIRE_ENV,
    option: str = "--require-firestore-emulator",
) -> bool:
    flag = os.environ.get(env, "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(config.getoption(option))


@pytest.fixture(scope="session")
def firestore_emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorInfo]:
    """The session's emulator: reused from ``FIRESTORE_EMULATOR_HOST`` or started here."""
    from async_batchstate.testing import (
        EmulatorInfo,
        EmulatorNotFoundError,
        EmulatorStartError,
        FirestoreEmulator,
    )

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


@pytest.fixture(scope="session")
def pubsub_emulator(request: pytest.FixtureRequest) -> Iterator[PubSubEmulator]:
    """The session's Pub/Sub emulator: reused from ``PUBSUB_EMULATOR_HOST`` or started here."""
    from async_batchstate.testing import EmulatorNotFoundError, EmulatorStartError, PubSubEmulator

    existing = os.environ.get(PUBSUB_HOST_ENV)
    if existing:
        yield PubSubEmulator.attach(existing)
        return
    try:
        emulator = PubSubEmulator().start()
    except (EmulatorNotFoundError, EmulatorStartError) as exc:
        message = f"Pub/Sub emulator unavailable: {exc}"
        if _required(request.config, PUBSUB_REQUIRE_ENV, "--require-pubsub-emulator"):
            pytest.fail(message + f" (required by --require-pubsub-emulator/{PUBSUB_REQUIRE_ENV})")
        pytest.skip(message)
    os.environ[PUBSUB_HOST_ENV] = emulator.host
    try:
        yield emulator
    finally:
        os.environ.pop(PUBSUB_HOST_ENV, None)
        emulator.stop()


@pytest.fixture
def firestore_namespace(request: pytest.FixtureRequest) -> str:
    """A prefix for collection names that no other test (or run) uses."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:40].strip("_")
    return f"t_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def batch_collection(firestore_namespace: str) -> str:
    """A batch collection of this test's own."""
    return f"{firestore_namespace}_batches"
