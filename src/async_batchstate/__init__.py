"""async-batchstate: exactly-once, atomic batch completion tracking on Firestore for asyncio."""

from importlib.metadata import PackageNotFoundError, version

from ._alerts import SlackWebhookAlerter
from ._clock import Clock, SystemClock
from ._config import MigrationMode
from ._consistency import AlertHook, ConsistencyReport, ReconcileResult, SampledValidator, Source
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
from ._finaliser import OnComplete
from ._layout import Layout
from ._limits import AdaptiveLimit
from ._manager import AsyncBatchStateManager
from ._metrics import (
    AttemptFailed,
    BatchFinalised,
    Event,
    GroupCommitted,
    GroupFailed,
    Hook,
    Stats,
)
from ._migration import (
    BackfillSummary,
    BatchState,
    CleanupSummary,
    FileCheckpoint,
    FirestoreCheckpoint,
    MigrationError,
    MigrationProgress,
    StatusSummary,
    VerifySummary,
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
    "AlertHook",
    "AsyncBatchStateManager",
    "AttemptFailed",
    "BackfillSummary",
    "BatchExistsError",
    "BatchFinalised",
    "BatchNotFoundError",
    "BatchProgress",
    "BatchState",
    "BatchStateError",
    "CleanupSummary",
    "Clock",
    "CompletionResult",
    "CompletionStatus",
    "CompletionTimeoutError",
    "ConfigurationError",
    "ConsistencyReport",
    "DuplicatePlayerError",
    "ErrorKind",
    "Event",
    "FaultInjector",
    "FaultPoint",
    "FileCheckpoint",
    "FirestoreCheckpoint",
    "GroupCommitted",
    "GroupFailed",
    "Hook",
    "InvalidCountError",
    "InvalidIdError",
    "InvalidInputError",
    "Layout",
    "LegacyArrayLimitError",
    "ManagerClosedError",
    "MigrationError",
    "MigrationMode",
    "MigrationProgress",
    "OnComplete",
    "OpenTelemetryHook",
    "PrometheusCollector",
    "ReconcileResult",
    "RetryExhaustedError",
    "RetryPolicy",
    "SampledValidator",
    "SlackWebhookAlerter",
    "Source",
    "Stats",
    "StatusSummary",
    "SystemClock",
    "UnexpectedPlayerError",
    "VerifySummary",
    "WriteFailedError",
    "__version__",
    "classify",
]
