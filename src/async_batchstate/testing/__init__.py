"""Testing helpers: the Firestore emulator, its pytest fixtures, fault injection, a fake clock.

The pytest plugin loads automatically when async-batchstate is installed (entry
point ``pytest11``); see ``async_batchstate.testing._plugin`` for the fixtures.
"""

from .._connect import aclose_client
from .._emulator import (
    EmulatorNotFoundError,
    EmulatorStartError,
    FirestoreEmulator,
    find_emulator_jar,
    free_port,
)
from ._clock import FakeClock
from ._invariants import batch_violations
from ._plugin import EmulatorInfo, make_client
from ._proxy import FaultyProxy, ProxyState
from ._rpc import LostAnswers, RpcCounter

__all__ = [
    "EmulatorInfo",
    "EmulatorNotFoundError",
    "EmulatorStartError",
    "FakeClock",
    "FaultyProxy",
    "FirestoreEmulator",
    "LostAnswers",
    "ProxyState",
    "RpcCounter",
    "aclose_client",
    "batch_violations",
    "find_emulator_jar",
    "free_port",
    "make_client",
]
