"""OpenTelemetry instrumentation: the ``async-batchstate[otel]`` extra (``opentelemetry-api``).

Two pieces:

* ``OpenTelemetryHook``: a ``Hook`` turning the manager's events into metrics
  (completions, failed attempts by kind, groups, finalisations, commit
  latency) and a span per transaction outcome.
* ``completion_span``: the span around one ``record_completion`` call. Without
  ``opentelemetry-api`` installed it is a shared no-op object.

Nothing here configures a provider or exporter: without an SDK configured the
API's no-op providers make every call cheap.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._types import CompletionResult
from ._events import AttemptFailed, BatchFinalised, Event, GroupCommitted, GroupFailed

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

INSTRUMENTATION_NAME: Final = "async_batchstate"
"""The instrumentation scope of every meter and tracer here."""

_MISSING = (
    "OpenTelemetry instrumentation needs opentelemetry-api: pip install 'async-batchstate[otel]'"
)


def _version() -> str:
    from .. import __version__

    return __version__


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
    * ``async_batchstate.batches.finalised`` (counter): batches this process finalised.
    * ``async_batchstate.group.duration`` (histogram, seconds): from a group's
      first attempt to its commit.

    Spans: ``async_batchstate.transaction`` for every transaction outcome, with
    attributes ``async_batchstate.batch_id``, ``.group_size``, ``.attempt`` and
    ``.outcome`` (``committed``, ``failed`` or the error kind of a failed
    attempt). A committed group's span covers its whole write, retries
    included; a failed attempt's span is an instant with ERROR status and the
    exception recorded. These spans are roots: one transaction serves many
    callers, so no single caller's span is its parent.

    Args:
        meter_provider: Where metrics go; None: the global meter provider.
        tracer_provider: Where spans go; None: the global tracer provider.
        spans: Emit the transaction spans (metrics are always recorded).

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
        version = _version()
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
        self._finalised = meter.create_counter(
            "async_batchstate.batches.finalised",
            unit="{batch}",
            description="Batches this process finalised.",
        )
        self._duration = meter.create_histogram(
            "async_batchstate.group.duration",
            unit="s",
            description="Seconds from a group's first transaction attempt to its commit.",
        )

    def __repr__(self) -> str:
        return f"<OpenTelemetryHook spans={self._tracer is not None}>"

    def __call__(self, event: Event) -> None:
        """Record one event."""
        if isinstance(event, GroupCommitted):
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
        elif isinstance(event, BatchFinalised):
            self._finalised.add(1)

    def _span(
        self,
        event: AttemptFailed | GroupCommitted | GroupFailed,
        outcome: str,
        attempt: int | None,
        *,
        seconds: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        if self._tracer is None:
            return
        # Real epoch time, not the manager's Clock: a tracing backend places spans
        # by it. Their length is the event's seconds, which the Clock measured.
        end = time.time_ns()
        attributes: dict[str, Any] = {
            "async_batchstate.batch_id": event.batch_id,
            "async_batchstate.group_size": event.group_size,
            "async_batchstate.outcome": outcome,
        }
        if attempt is not None:
            attributes["async_batchstate.attempt"] = attempt
        span = self._tracer.start_span(
            "async_batchstate.transaction",
            context=self._root,
            attributes=attributes,
            start_time=end - int(seconds * 1e9),
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(self._error)
        span.end(end_time=end)


class CompletionSpan(Protocol):
    """What ``completion_span`` yields: lets the caller attach the result."""

    def set_result(self, result: CompletionResult) -> None:
        """Record the outcome of ``record_completion`` on the span."""
        ...


class _NoopCompletionSpan:
    """The shared do-nothing span handle and context manager."""

    __slots__ = ()

    async def __aenter__(self) -> _NoopCompletionSpan:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set_result(self, result: CompletionResult) -> None:
        """Do nothing."""


_NOOP: Final = _NoopCompletionSpan()


class _RecordingCompletionSpan:
    """A span around one ``record_completion`` call, current while it runs."""

    __slots__ = ("_batch_id", "_manager", "_player", "_span", "_tracer")

    def __init__(self, tracer: Tracer, batch_id: str, player: str) -> None:
        self._tracer = tracer
        self._batch_id = batch_id
        self._player = player
        self._manager: Any = None
        self._span: Span | None = None

    async def __aenter__(self) -> _RecordingCompletionSpan:
        self._manager = self._tracer.start_as_current_span(
            "async_batchstate.record_completion",
            attributes={
                "async_batchstate.batch_id": self._batch_id,
                "async_batchstate.player": self._player,
            },
        )
        self._span = self._manager.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._span is not None and self._span.is_recording():
            self._span.set_attribute("async_batchstate.outcome", exc_type.__name__)
        self._manager.__exit__(exc_type, exc, tb)

    def set_result(self, result: CompletionResult) -> None:
        """Record the outcome of ``record_completion`` on the span."""
        span = self._span
        if span is None or not span.is_recording():
            return
        span.set_attributes(
            {
                "async_batchstate.outcome": result.status.value,
                "async_batchstate.group_size": result.group_size,
                "async_batchstate.attempt": result.attempts,
                "async_batchstate.batch_completed": result.batch_completed,
            }
        )


_trace_api: Any = None
"""The ``opentelemetry.trace`` module once imported; False if it is not installed."""
_global_tracer: Tracer | None = None


def _default_tracer() -> Tracer | None:
    """The global provider's tracer; None without OTel or while no provider is configured."""
    global _trace_api, _global_tracer
    if _trace_api is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _trace_api = False
            return None
        _trace_api = trace
    if _trace_api is False or isinstance(
        _trace_api.get_tracer_provider(), _trace_api.ProxyTracerProvider
    ):
        return None
    if _global_tracer is None:
        _global_tracer = _trace_api.get_tracer(INSTRUMENTATION_NAME, _version())
    return _global_tracer


def completion_span(
    tracer: Tracer | None, batch_id: str, player: str
) -> AbstractAsyncContextManager[CompletionSpan]:
    """An async context manager: a span around one ``record_completion`` call.

    ``async with completion_span(tracer, batch_id, player) as span:`` then
    ``span.set_result(result)``. The span ``async_batchstate.record_completion``
    carries ``async_batchstate.batch_id``, ``.player`` and, once the result is
    set, ``.outcome`` (``recorded``/``duplicate``, or the exception's class
    name), ``.group_size``, ``.attempt`` and ``.batch_completed``. An exception
    leaving the block is recorded on the span with ERROR status.

    Args:
        tracer: The tracer to use; None: the global tracer provider's, or no
            span at all when ``opentelemetry-api`` is not installed or no
            tracer provider has been set (``trace.set_tracer_provider``).
        batch_id: The batch.
        player: The player.

    Returns:
        A context manager yielding an object with ``set_result``. Without
        OpenTelemetry, or with no tracer provider set, it is a shared no-op
        object (no allocation per call).
    """
    if tracer is None:
        tracer = _default_tracer()
        if tracer is None:
            return _NOOP
    return _RecordingCompletionSpan(tracer, batch_id, player)
