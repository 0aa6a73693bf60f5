"""Observability: events for hooks, the ``stats()`` snapshot, OpenTelemetry and Prometheus.

Every hook receives every ``Event``; ``OpenTelemetryHook`` and
``PrometheusCollector`` need the ``[otel]`` / ``[prometheus]`` extras, imported
lazily.
"""

import typing

from .._retry import ErrorKind
from ._events import (
    AttemptFailed,
    BatchFinalized,
    CompletionFinished,
    Event,
    GroupCommitted,
    GroupFailed,
    Hook,
    ValidationRan,
)
from ._otel import OpenTelemetryHook
from ._prometheus import PrometheusCollector

__all__ = [
    "AttemptFailed",
    "BatchFinalized",
    "CompletionFinished",
    "ErrorKind",
    "Event",
    "GroupCommitted",
    "GroupFailed",
    "Hook",
    "OpenTelemetryHook",
    "PrometheusCollector",
    "ValidationRan",
]


if not typing.TYPE_CHECKING:  # so type checkers still flag the removed names

    def __getattr__(name: str) -> object:
        """Fail loudly, with the way out, for names 0.1 exported from here."""
        if name == "BatchFinalised":
            raise AttributeError(
                "async_batchstate.instrumentation.BatchFinalised was renamed in 0.2: use "
                "BatchFinalized (from async_batchstate.instrumentation import BatchFinalized)"
            )
        if name == "completion_span":
            raise AttributeError(
                "async_batchstate.instrumentation.completion_span was removed in 0.2: "
                "OpenTelemetryHook makes the record_completion spans (hooks=[OpenTelemetryHook()])"
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
