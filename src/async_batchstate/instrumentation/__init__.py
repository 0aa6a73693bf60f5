"""Observability: events for hooks, the ``stats()`` snapshot, OpenTelemetry and Prometheus.

Every hook receives every ``Event``; ``OpenTelemetryHook`` and
``PrometheusCollector`` need the ``[otel]`` / ``[prometheus]`` extras, imported
lazily.
"""

from .._write.retry import ErrorKind
from ._events import (
    AttemptFailed,
    BatchFinalised,
    Event,
    GroupCommitted,
    GroupFailed,
    Hook,
)
from ._otel import OpenTelemetryHook, completion_span
from ._prometheus import PrometheusCollector

__all__ = [
    "AttemptFailed",
    "BatchFinalised",
    "ErrorKind",
    "Event",
    "GroupCommitted",
    "GroupFailed",
    "Hook",
    "OpenTelemetryHook",
    "PrometheusCollector",
    "completion_span",
]
