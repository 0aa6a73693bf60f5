"""Testing helpers: the emulator, its fixtures' values, faults, a fake clock, a write ceiling.

Importing this package needs no pytest. The pytest plugin with the fixtures
(``firestore_emulator``, ``firestore_client``, ``firestore_namespace``,
``batch_collection``, ``pubsub_emulator``) loads automatically when async-batchstate
is installed (entry point ``pytest11``); it is the top-level module
``_async_batchstate_pytest_plugin``, so that loading it imports nothing but pytest.
"""

from .._store.connect import aclose_client
from .._write.writer import FaultInjector, FaultPoint
from ._ceiling import WriteCeilingProxy
from ._clock import FakeClock
from ._emulator import (
    EmulatorNotFoundError,
    EmulatorStartError,
    FirestoreEmulator,
    find_emulator_jar,
    free_port,
)
from ._fixtures_support import EmulatorInfo, make_client
from ._invariants import batch_violations
from ._proxy import FaultyProxy, ProxyState
from ._pubsub import LoopbackAsgiServer, PubSubEmulator, find_pubsub_emulator
from ._rpc import LostAnswers, RpcCounter

__all__ = [
    "EmulatorInfo",
    "EmulatorNotFoundError",
    "EmulatorStartError",
    "FakeClock",
    "FaultInjector",
    "FaultPoint",
    "FaultyProxy",
    "FirestoreEmulator",
    "LoopbackAsgiServer",
    "LostAnswers",
    "ProxyState",
    "PubSubEmulator",
    "RpcCounter",
    "WriteCeilingProxy",
    "aclose_client",
    "batch_violations",
    "find_emulator_jar",
    "find_pubsub_emulator",
    "free_port",
    "make_client",
]
