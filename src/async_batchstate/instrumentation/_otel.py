"""OpenTelemetry instrumentation: the ``async-batchstate[otel]`` extra (``opentelemetry-api``).

``OpenTelemetryHook`` is a ``Hook`` like any other: it turns the manager's
events into metrics and spans. Nothing here configures a provider or exporter:
without an SDK configured the API's no-op providers make every call cheap.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from .._version import __version__
from ._events import (
    AttemptFailed,
    BatchFinalized,
    CompletionFinished,
    Event,
    GroupCommitted,
    GroupFailed,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Tracer, TracerProvider

INSTRUMENTATION_NAME: Final = "async_batchstate"
"""The instrumentation scope of every meter and tracer here."""

_MISSING = (
    "OpenTelemetry instrumentation needs opentelemetry-api: pip install 'async-batchstate[otel]'"
)


class OpenTelemetryHook:
    """A ``Hook`` recording the manager's events as OpenTelemetry metrics and spans.

    Pass it to the manager: ``AsyncBatchStateManager(client, hooks=[OpenTelemetryHook()])``.

    Metrics (attributes are low-cardinality: no batch or player ids):

    * ``async_batchstate.completions`` (counter): completions written, by
      ``status`` (``recorded`` or ``duplicate``).
    * ``async_batchstate.completions.failed`` (counter): completions whose
      caller got an error.
    * ``async_batchstate.attempts.failed`` (counter): failed transaction
      attempts, by ``kind`` (``aborted``, ``unavailable``, ...) and ``retried``.
    * ``async_batchstate.groups.committed`` (counter): committed transactions.
    * ``async_batchstate.groups.failed`` (counter): groups that failed for good.
    * ``async_batchstate.batches.finalized`` (counter): batches this process finalized.
    * ``async_batchstate.group.duration`` (histogram, seconds): from a group's
      first attempt to its commit.
    * ``async_batchstate.completion.duration`` (histogram, seconds): from a
      ``record_completion`` call to its answer, by ``outcome``.

    Spans: ``async_batchstate.record_completion`` for every call, a child of the
    caller's current span, with ``async_batchstate.batch_id``, ``.player``,
    ``.outcome`` (``recorded``, ``duplicate``, ``late``, or the exception's class
    name, with ERROR status and the exception recorded), and on success
    ``.group_size``, ``.attempt`` and ``.batch_completed``.
    ``async_batchstate.transaction`` for every transaction outcome, with
    attributes ``async_batchstate.batch_id``, ``.group_size``, ``.attempt`` and
    ``.outcome`` (``committed``, ``failed`` or the error kind of a failed
    attempt). A committed group's span covers its whole write, retries
    included; a failed attempt's span is an instant with ERROR status and the
    exception recorded. These spans are roots: one transaction serves many
    callers, so no single caller's span is its parent.

    Args:
        meter_provider: Where metrics go; None: the global meter provider.
        tracer_provider: Where spans go; None: the global tracer provider.
        spans: Emit the spans (metrics are always recorded).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (install the
            ``async-batchstate[otel]`` extra).
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        spans: bool = True,
    ) -> None:
        try:
            from opentelemetry import context, metrics, trace
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        version = __version__
        meter = metrics.get_meter(INSTRUMENTATION_NAME, version, meter_provider=meter_provider)
        self._tracer: Tracer | None = (
            trace.get_tracer(INSTRUMENTATION_NAME, version, tracer_provider=tracer_provider)
            if spans
            else None
        )
        self._root = context.Context()
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._completions = meter.create_counter(
            "async_batchstate.completions",
            unit="{completion}",
            description="Completions written, by status (recorded or duplicate).",
        )
        self._completions_failed = meter.create_counter(
            "async_batchstate.completions.failed",
            unit="{completion}",
            description="Completions whose caller got an error.",
        )
        self._attempts_failed = meter.create_counter(
            "async_batchstate.attempts.failed",
            unit="{attempt}",
            description="Failed transaction attempts, by error kind and whether retried.",
        )
        self._groups_committed = meter.create_counter(
            "async_batchstate.groups.committed",
            unit="{transaction}",
            description="Committed transactions (each carries a group of completions).",
        )
        self._groups_failed = meter.create_counter(
            "async_batchstate.groups.failed",
            unit="{group}",
            description="Groups of completions whose write failed for good.",
        )
        self._finalized = meter.create_counter(
            "async_batchstate.batches.finalized",
            unit="{batch}",
            description="Batches this process finalized.",
        )
        self._duration = meter.create_histogram(
            "async_batchstate.group.duration",
            unit="s",
            description="Seconds from a group's first transaction attempt to its commit.",
        )
        self._completion_duration = meter.create_histogram(
            "async_batchstate.completion.duration",
            unit="s",
            description="Seconds from a record_completion call to its answer, by outcome.",
        )

    def __repr__(self) -> str:
        return f"<OpenTelemetryHook spans={self._tracer is not None}>"

    def __call__(self, event: Event) -> None:
        """Record one event."""
        if isinstance(event, CompletionFinished):
            self._completion(event)
        elif isinstance(event, GroupCommitted):
            if event.recorded:
                self._completions.add(event.recorded, {"status": "recorded"})
            if event.duplicates:
                self._completions.add(event.duplicates, {"status": "duplicate"})
            self._groups_committed.add(1)
            self._duration.record(event.seconds)
            self._span(event, "committed", event.attempts, seconds=event.seconds)
        elif isinstance(event, AttemptFailed):
            retried = event.delay is not None
            self._attempts_failed.add(1, {"kind": event.kind.value, "retried": retried})
            self._span(event, event.kind.value, event.attempt, error=event.error)
        elif isinstance(event, GroupFailed):
            self._completions_failed.add(event.group_size)
            self._groups_failed.add(1, {"error": type(event.error).__name__})
            self._span(event, "failed", None, error=event.error)
        elif isinstance(event, BatchFinalized):
            self._finalized.add(1)

    def _completion(self, event: CompletionFinished) -> None:
        result, error = event.result, event.error
        outcome = result.status.value if result is not None else type(error).__name__
        self._completion_duration.record(event.seconds, {"outcome": outcome})
        attributes: dict[str, Any] = {"async_batchstate.player": event.player}
        if result is not None:
            attributes["async_batchstate.group_size"] = result.group_size
            attributes["async_batchstate.attempt"] = result.attempts
            attributes["async_batchstate.batch_completed"] = result.batch_completed
        # Emitted in the caller's task: its current span is the parent.
        self._emit("record_completion", event.batch_id, outcome, attributes, event.seconds, error)

    def _span(
        self,
        event: AttemptFailed | GroupCommitted | GroupFailed,
        outcome: str,
        attempt: int | None,
        *,
        seconds: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        attributes: dict[str, Any] = {"async_batchstate.group_size": event.group_size}
        if attempt is not None:
            attributes["async_batchstate.attempt"] = attempt
        # A root: one write serves many callers, none of whose spans is its parent.
        self._emit("transaction", event.batch_id, outcome, attributes, seconds, error, self._root)

    def _emit(
        self,
        name: str,
        batch_id: str,
        outcome: str,
        attributes: dict[str, Any],
        seconds: float,
        error: BaseException | None,
        context: Any = None,
    ) -> None:
        """A span that began ``seconds`` ago and ends now."""
        if self._tracer is None:
            return
        # Real epoch time, not the manager's Clock: a tracing backend places spans
        # by it. Their length is the event's seconds, which the Clock measured.
        end = time.time_ns()
        attributes["async_batchstate.batch_id"] = batch_id
        attributes["async_batchstate.outcome"] = outcome
        span = self._tracer.start_span(
            f"async_batchstate.{name}",
            context=context,
            attributes=attributes,
            start_time=end - int(seconds * 1e9),
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(self._error)
        span.end(end_time=end)
