"""async-batchstate: exactly-once, atomic batch completion tracking on Firestore for asyncio."""

from importlib.metadata import PackageNotFoundError, version

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
    WriteFailedError,
)
from ._layout import Layout
from ._limits import AdaptiveLimit
from ._manager import AsyncBatchStateManager, OnComplete
from ._metrics import (
    AttemptFailed,
    BatchFinalised,
    Event,
    GroupCommitted,
    GroupFailed,
    Hook,
    Stats,
)
from ._otel import OpenTelemetryHook
from ._prometheus import PrometheusCollector
from ._retry import ErrorKind, RetryPolicy, classify
from ._types import BatchProgress, CompletionResult, CompletionStatus
from ._writer import FaultInjector, FaultPoint

try:
    __version__ = version("async-batchstate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AdaptiveLimit",
    "AsyncBatchStateManager",
    "AttemptFailed",
    "BatchExistsError",
    "BatchFinalised",
    "BatchNotFoundError",
    "BatchProgress",
    "BatchStateError",
    "Clock",
    "CompletionResult",
    "CompletionStatus",
    "CompletionTimeoutError",
    "ConfigurationError",
    "DuplicatePlayerError",
    "ErrorKind",
    "Event",
    "FaultInjector",
    "FaultPoint",
    "GroupCommitted",
    "GroupFailed",
    "Hook",
    "InvalidCountError",
    "InvalidIdError",
    "InvalidInputError",
    "Layout",
    "LegacyArrayLimitError",
    "ManagerClosedError",
    "MigrationMode",
    "OnComplete",
    "OpenTelemetryHook",
    "PrometheusCollector",
    "RetryExhaustedError",
    "RetryPolicy",
    "Stats",
    "SystemClock",
    "WriteFailedError",
    "__version__",
    "classify",
]
