"""async-batchstate: exactly-once, atomic batch completion tracking on Firestore for asyncio.

The manager, its results, its settings and its errors live here. The rest is in
public subpackages: ``async_batchstate.consistency`` (validate, reconcile,
alerts), ``async_batchstate.migration`` (backfill, verify, status, cleanup),
``async_batchstate.instrumentation`` (events, hooks, OpenTelemetry,
Prometheus) and ``async_batchstate.testing`` (emulator, fault injection).
"""

import typing
from typing import Any

from ._clock import Clock, SystemClock
from ._config import MigrationMode
from ._errors import (
    BatchExistsError,
    BatchNotFoundError,
    BatchStateError,
    CompletionTimeoutError,
    ConfigurationError,
    DuplicatePlayerError,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    LegacyArrayLimitError,
    ManagerClosedError,
    RetryExhaustedError,
    UnexpectedPlayerError,
    WriteFailedError,
)
from ._retry import RetryPolicy
from ._store.ids import Layout
from ._types import BatchProgress, CompletionResult, CompletionStatus
from ._version import __version__
from ._write.finalizer import OnComplete
from ._write.manager import AsyncBatchStateManager
from .instrumentation._events import Stats

__all__ = [
    "AsyncBatchStateManager",
    "BatchExistsError",
    "BatchNotFoundError",
    "BatchProgress",
    "BatchStateError",
    "Clock",
    "CompletionResult",
    "CompletionStatus",
    "CompletionTimeoutError",
    "ConfigurationError",
    "DuplicatePlayerError",
    "InvalidCountError",
    "InvalidIdError",
    "InvalidInputError",
    "Layout",
    "LegacyArrayLimitError",
    "ManagerClosedError",
    "MigrationMode",
    "OnComplete",
    "RetryExhaustedError",
    "RetryPolicy",
    "Stats",
    "SystemClock",
    "UnexpectedPlayerError",
    "WriteFailedError",
    "__version__",
]

_MOVED = {
    **dict.fromkeys(
        [
            "AlertHook",
            "ConsistencyReport",
            "ReconcileResult",
            "SlackWebhookAlerter",
            "Source",
        ],
        "async_batchstate.consistency",
    ),
    **dict.fromkeys(
        [
            "BackfillSummary",
            "BatchState",
            "CleanupSummary",
            "FileCheckpoint",
            "FirestoreCheckpoint",
            "MigrationError",
            "MigrationProgress",
            "StatusSummary",
            "VerifySummary",
        ],
        "async_batchstate.migration",
    ),
    **dict.fromkeys(
        [
            "AttemptFailed",
            "ErrorKind",
            "Event",
            "GroupCommitted",
            "GroupFailed",
            "Hook",
            "OpenTelemetryHook",
            "PrometheusCollector",
        ],
        "async_batchstate.instrumentation",
    ),
    **dict.fromkeys(["FaultInjector", "FaultPoint"], "async_batchstate.testing"),
}
_REMOVED = {
    "BatchFinalised": "it is async_batchstate.instrumentation.BatchFinalized now",
    "AdaptiveLimit": "it is internal: tune it with max_in_flight_per_batch",
    "SampledValidator": "it is internal: use validation_rate= and alert_hooks=",
    "classify": "it is internal: AttemptFailed.kind carries the classification",
}


# Only at run time: to a type checker the module has no __getattr__, so an import
# of a moved or removed name is an error there too (not an Any).
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """Fail loudly, with the way out, for the names 0.1 exported from here."""
        if name in _MOVED:
            raise AttributeError(
                f"async_batchstate.{name} moved in 0.2: import it from {_MOVED[name]} "
                f"(from {_MOVED[name]} import {name})"
            )
        if name in _REMOVED:
            raise AttributeError(f"async_batchstate.{name} was removed in 0.2: {_REMOVED[name]}")
        raise AttributeError(f"module 'async_batchstate' has no attribute {name!r}")
