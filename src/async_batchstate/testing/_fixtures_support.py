"""What the pytest fixtures hand out, importable without pytest.

``EmulatorInfo`` describes the session's emulator and ``make_client`` builds an
``AsyncClient`` on it. The pytest plugin (``_async_batchstate_pytest_plugin``)
imports them lazily, inside its fixtures; scripts, benchmarks and test suites
on other runners import them from ``async_batchstate.testing`` without pytest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.cloud.firestore_v1.async_client import AsyncClient

from .._store.connect import EMULATOR_ENV
from ._emulator import FirestoreEmulator

__all__ = ["EmulatorInfo", "make_client"]


@dataclass(frozen=True)
class EmulatorInfo:
    """Where the session's emulator listens.

    Attributes:
        host: ``host:port`` (the value of ``FIRESTORE_EMULATOR_HOST``).
        project: Project id the fixtures' clients use.
        process: The emulator this session started, or None if it reused one.
    """

    host: str
    project: str
    process: FirestoreEmulator | None


def make_client(emulator: EmulatorInfo) -> AsyncClient:
    """An ``AsyncClient`` talking to ``emulator`` (needs a running event loop to use)."""
    previous = os.environ.get(EMULATOR_ENV)
    os.environ[EMULATOR_ENV] = emulator.host  # the client reads it at construction
    try:
        return AsyncClient(project=emulator.project)
    finally:
        if previous is None:
            os.environ.pop(EMULATOR_ENV, None)
        else:
            os.environ[EMULATOR_ENV] = previous
