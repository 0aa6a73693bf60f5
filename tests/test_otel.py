"""OpenTelemetry: the hook's metrics and spans through a real manager, and ``completion_span``."""

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

from async_batchstate import CompletionResult, CompletionStatus, RetryPolicy, WriteFailedError
from async_batchstate.instrumentation import GroupFailed
from async_batchstate.instrumentation._otel import OpenTelemetryHook, completion_span
from async_batchstate.testing import FaultPoint

from .helpers import ManagerFactory

Points = dict[tuple[str, frozenset[tuple[str, Any]]], Any]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def hook(reader: InMemoryMetricReader, exporter: InMemorySpanExporter) -> OpenTelemetryHook:
    """A hook on private SDK providers (the global providers stay untouched)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryHook(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
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


async def test_hook_counts_completions_groups_attempts_and_finalisation(
    make_manager: ManagerFactory,
    hook: OpenTelemetryHook,
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
) -> None:
    """Through a real manager: recorded, duplicate, a failed attempt, commits and the finalisation."""
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
    assert stats.transactions == found[("async_batchstate.groups.committed", frozenset())]
    assert stats.transactions == found[("async_batchstate.group.duration", frozenset())]
    assert 1 == found[("async_batchstate.batches.finalised", frozenset())]

    spans = exporter.get_finished_spans()
    outcomes = sorted(str(attributes(s)["async_batchstate.outcome"]) for s in spans)
    assert ["aborted"] + ["committed"] * stats.transactions == outcomes
    assert {"b"} == {attributes(s)["async_batchstate.batch_id"] for s in spans}
    assert all(s.parent is None for s in spans)


def test_failed_attempt_span_has_error_status_and_exception() -> None:
    """A failed group becomes an ERROR span with the exception event and a failed-completions count."""
    reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = OpenTelemetryHook(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )

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


async def test_completion_span_records_the_result(exporter: InMemorySpanExporter) -> None:
    """The span carries the batch, the player and the result set inside the block."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    result = CompletionResult("b", "p", CompletionStatus.RECORDED, True, attempts=2, group_size=3)

    async with completion_span(tracer, "b", "p") as span:
        span.set_result(result)

    (finished,) = exporter.get_finished_spans()
    assert "async_batchstate.record_completion" == finished.name
    assert {
        "async_batchstate.batch_id": "b",
        "async_batchstate.player": "p",
        "async_batchstate.outcome": "recorded",
        "async_batchstate.group_size": 3,
        "async_batchstate.attempt": 2,
        "async_batchstate.batch_completed": True,
    } == dict(finished.attributes or {})


async def test_completion_span_marks_an_exception(exporter: InMemorySpanExporter) -> None:
    """An exception leaving the block sets ERROR status and names the exception as the outcome."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    with pytest.raises(WriteFailedError):
        async with completion_span(provider.get_tracer("test"), "b", "p"):
            raise WriteFailedError("refused")

    (finished,) = exporter.get_finished_spans()
    assert StatusCode.ERROR == finished.status.status_code
    assert "WriteFailedError" == attributes(finished)["async_batchstate.outcome"]


async def test_completion_span_is_a_shared_noop_without_a_tracer_provider() -> None:
    """With no global tracer provider set, ``completion_span`` allocates nothing per call."""
    first = completion_span(None, "b", "p1")
    async with first as span:
        span.set_result(CompletionResult("b", "p1", CompletionStatus.DUPLICATE))

    assert first is completion_span(None, "b", "p2")


def test_without_opentelemetry_installed() -> None:
    """Not installed: the hook raises ImportError naming the extra; completion_span is a no-op."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if not installed
        from async_batchstate.instrumentation._otel import OpenTelemetryHook, completion_span
        try:
            OpenTelemetryHook()
        except ImportError as exc:
            print("ERROR", exc)
        async def main():
            async with completion_span(None, "b", "p") as span:
                span.set_result(None)
        asyncio.run(main())
        print("NOOP", completion_span(None, "b", "p") is completion_span(None, "c", "q"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "async-batchstate[otel]" in done.stdout
    assert "NOOP True" in done.stdout
