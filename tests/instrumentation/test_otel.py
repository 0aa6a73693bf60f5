"""OpenTelemetry: the hook's metrics and spans, through a real manager and event by event."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from google.api_core import exceptions as gexc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from async_batchstate import (
    AsyncBatchStateManager,
    CompletionResult,
    CompletionStatus,
    InvalidIdError,
    RetryPolicy,
    WriteFailedError,
)
from async_batchstate.instrumentation import CompletionFinished, GroupFailed, OpenTelemetryHook
from async_batchstate.testing import FaultPoint

from ..helpers import ManagerFactory

Points = dict[tuple[str, frozenset[tuple[str, Any]]], Any]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A private SDK tracer provider exporting to ``exporter`` (the global one stays untouched)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


@pytest.fixture
def hook(reader: InMemoryMetricReader, provider: TracerProvider) -> OpenTelemetryHook:
    """A hook on private SDK providers (the global providers stay untouched)."""
    return OpenTelemetryHook(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=provider,
    )


def attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes (every span the hook ends has some)."""
    assert span.attributes is not None
    return span.attributes


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point as ``{(metric name, attributes): value or histogram count}``."""
    data = reader.get_metrics_data()
    found: Points = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    found[key] = point.value if isinstance(point, NumberDataPoint) else point.count
    return found


def abort_once() -> Any:
    """A fault injector aborting the first commit only."""
    fired = False

    async def inject(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        nonlocal fired
        if point is FaultPoint.BEFORE_COMMIT and not fired:
            fired = True
            raise gexc.Aborted("injected contention")

    return inject


async def test_hook_counts_completions_groups_attempts_and_finalization(
    make_manager: ManagerFactory,
    hook: OpenTelemetryHook,
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
) -> None:
    """Through a real manager: recorded, duplicate, a failed attempt, commits and the finalization."""
    manager = make_manager(
        hooks=[hook],
        fault_injector=abort_once(),
        retry=RetryPolicy(base_delay=0.001, max_delay=0.001),
    )
    await manager.create_batch("b", expected_players=["p1", "p2", "p3"])
    await asyncio.gather(*(manager.record_completion("b", p, 1) for p in ("p1", "p2", "p3")))
    await manager.record_completion("b", "p1", 1)

    stats = manager.stats()
    found = points(reader)
    assert 3 == found[("async_batchstate.completions", frozenset({("status", "recorded")}))]
    assert 1 == found[("async_batchstate.completions", frozenset({("status", "duplicate")}))]
    failed_key = frozenset({("kind", "aborted"), ("retried", True)})
    assert 1 == found[("async_batchstate.attempts.failed", failed_key)]
    assert stats.commits == found[("async_batchstate.groups.committed", frozenset())]
    assert stats.commits == found[("async_batchstate.group.duration", frozenset())]
    assert 1 == found[("async_batchstate.batches.finalized", frozenset())]

    spans = exporter.get_finished_spans()
    writes = [s for s in spans if s.name == "async_batchstate.transaction"]
    outcomes = sorted(str(attributes(s)["async_batchstate.outcome"]) for s in writes)
    assert ["aborted"] + ["committed"] * stats.commits == outcomes
    assert {"b"} == {attributes(s)["async_batchstate.batch_id"] for s in writes}
    assert all(s.parent is None for s in writes)
    calls = [s for s in spans if s.name == "async_batchstate.record_completion"]
    assert ["duplicate"] + ["recorded"] * 3 == sorted(
        str(attributes(s)["async_batchstate.outcome"]) for s in calls
    )
    duration = "async_batchstate.completion.duration"
    assert 3 == found[(duration, frozenset({("outcome", "recorded")}))]
    assert 1 == found[(duration, frozenset({("outcome", "duplicate")}))]


def test_failed_attempt_span_has_error_status_and_exception(
    hook: OpenTelemetryHook, reader: InMemoryMetricReader, exporter: InMemorySpanExporter
) -> None:
    """A failed group becomes an ERROR span with the exception event and a failed-completions count."""

    hook(GroupFailed("b", 4, WriteFailedError("refused")))

    (span,) = exporter.get_finished_spans()
    assert StatusCode.ERROR == span.status.status_code
    assert "failed" == attributes(span)["async_batchstate.outcome"]
    assert ["exception"] == [e.name for e in span.events]
    assert 4 == points(reader)[("async_batchstate.completions.failed", frozenset())]


def test_hook_without_spans_emits_none(
    reader: InMemoryMetricReader, exporter: InMemorySpanExporter
) -> None:
    """``spans=False`` records metrics only."""
    hook = OpenTelemetryHook(meter_provider=MeterProvider(metric_readers=[reader]), spans=False)

    hook(GroupFailed("b", 1, WriteFailedError("refused")))

    assert () == tuple(exporter.get_finished_spans())
    assert 1 == points(reader)[("async_batchstate.completions.failed", frozenset())]


async def test_record_completion_span_is_a_child_of_the_callers_span(
    make_manager: ManagerFactory,
    exporter: InMemorySpanExporter,
    provider: TracerProvider,
) -> None:
    """Each call's span has the caller's current span as parent, and carries the result."""
    manager = make_manager(hooks=[OpenTelemetryHook(tracer_provider=provider)])
    await manager.create_batch("b", expected_count=1)

    with provider.get_tracer("caller").start_as_current_span("handle message") as parent:
        result = await manager.record_completion("b", "p", 3)

    (call,) = [s for s in exporter.get_finished_spans() if s.name.endswith("record_completion")]
    assert call.parent is not None
    assert parent.get_span_context().span_id == call.parent.span_id
    assert {
        "async_batchstate.batch_id": "b",
        "async_batchstate.player": "p",
        "async_batchstate.outcome": "recorded",
        "async_batchstate.group_size": result.group_size,
        "async_batchstate.attempt": result.attempts,
        "async_batchstate.batch_completed": True,
    } == dict(call.attributes or {})
    assert call.start_time is not None and call.end_time is not None
    assert call.start_time < call.end_time


async def test_a_refused_call_gets_an_error_span(
    make_manager: ManagerFactory,
    exporter: InMemorySpanExporter,
    provider: TracerProvider,
) -> None:
    """A call refused before any write still gets its span: ERROR, outcome the error's class."""
    manager = make_manager(hooks=[OpenTelemetryHook(tracer_provider=provider)])

    with pytest.raises(InvalidIdError):
        await manager.record_completion("b", "a/b", 1)

    (call,) = exporter.get_finished_spans()
    assert StatusCode.ERROR == call.status.status_code
    assert "InvalidIdError" == attributes(call)["async_batchstate.outcome"]
    assert ["exception"] == [e.name for e in call.events]


def test_hook_turns_a_finished_call_into_a_span_event_by_event(
    exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    """Without a manager: the span starts ``seconds`` before it ends."""
    hook = OpenTelemetryHook(tracer_provider=provider)
    result = CompletionResult("b", "p", CompletionStatus.LATE, attempts=2, group_size=3)

    hook(CompletionFinished("b", "p", 1.5, result, None))

    (span,) = exporter.get_finished_spans()
    assert span.start_time is not None and span.end_time is not None
    assert 1.5e9 == pytest.approx(span.end_time - span.start_time, abs=1e6)
    assert "late" == attributes(span)["async_batchstate.outcome"]


def test_the_removed_tracer_api_fails_loudly() -> None:
    """0.1's ``completion_span`` and ``tracer=`` are gone, with the way out named."""
    import async_batchstate.instrumentation as instrumentation

    with pytest.raises(AttributeError, match="OpenTelemetryHook"):
        instrumentation.completion_span  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(TypeError, match="tracer"):
        AsyncBatchStateManager(None, tracer=object())  # type: ignore[arg-type,call-arg]


def test_without_opentelemetry_installed() -> None:
    """Not installed: the hook raises ImportError naming the extra; the manager needs none."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if not installed
        from async_batchstate.instrumentation import OpenTelemetryHook
        try:
            OpenTelemetryHook()
        except ImportError as exc:
            print("ERROR", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "async-batchstate[otel]" in done.stdout
