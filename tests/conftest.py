"""Shared fixtures. The emulator fixtures come from the async_batchstate plugin itself."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
import pytest_asyncio
from google.api_core.exceptions import PermissionDenied, ServiceUnavailable
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate.migration import _run as _migration

ManagerFactory = Callable[..., AsyncBatchStateManager]


class FakeClock:
    """Monotonic time that only the code under test's sleeps advance (each yields once)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest_asyncio.fixture
async def make_manager(
    firestore_client: AsyncClient, batch_collection: str
) -> AsyncIterator[ManagerFactory]:
    """Build managers on this test's collection; all are closed after the test."""
    made: list[AsyncBatchStateManager] = []

    def factory(**kwargs: Any) -> AsyncBatchStateManager:
        kwargs.setdefault("collection", batch_collection)
        kwargs.setdefault("mode", MigrationMode.DUAL_WRITE)
        manager = AsyncBatchStateManager(firestore_client, **kwargs)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.aclose()


async def read_batch(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """The batch document's fields, read directly (not through the manager)."""
    snap = await client.collection(collection).document(batch_id).get()
    return snap.to_dict() or {}


async def read_completions(client: AsyncClient, collection: str, batch_id: str) -> dict[str, Any]:
    """Completion documents by id, read directly."""
    docs = client.collection(collection).document(batch_id).collection("completions").stream()
    return {d.id: d.to_dict() async for d in docs}


def fail_one_batch(monkeypatch: pytest.MonkeyPatch, batch_id: str) -> list[BaseException]:
    """Make the migration's transactions on ``batch_id`` fail, transiently then permanently.

    Patches the library's ``run_transactional`` as the migration module calls it
    (backfill and cleanup-legacy), not Firestore: every other batch runs its real
    transactions on the emulator. The first attempt on ``batch_id`` raises
    UNAVAILABLE (the library retries it), the next ones PERMISSION_DENIED (not
    retried). Returns the errors raised, in order.
    """
    real = _migration.run_transactional
    raised: list[BaseException] = []

    async def flaky(function: Any, transaction: Any, *args: Any) -> Any:
        if batch_id in args:
            error: BaseException = (
                ServiceUnavailable("injected: connection reset")
                if not raised
                else PermissionDenied("injected: missing permission\non the batch")
            )
            raised.append(error)
            raise error
        return await real(function, transaction, *args)

    monkeypatch.setattr(_migration, "run_transactional", flaky)
    return raised


_BLOCK_IMPORTS = """
import sys

class _Blocked:
    \"\"\"Refuse to import the top-level packages in BLOCKED, as if they were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run_python(
    pytester: pytest.Pytester, code: str, *, blocked: Iterable[str] = ()
) -> pytest.RunResult:
    """Run ``code`` in a fresh interpreter of this environment, in pytester's directory.

    The top-level packages in ``blocked`` cannot be imported there, as if not installed.
    """
    prelude = f"BLOCKED = {sorted(blocked)!r}\n{_BLOCK_IMPORTS}" if blocked else ""
    return pytester.run(sys.executable, "-c", prelude + textwrap.dedent(code))
