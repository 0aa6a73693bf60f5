"""Prometheus export of ``stats()``: the ``async-batchstate[prometheus]`` extra."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Self

from .._errors import ConfigurationError
from ._events import Stats

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

_MISSING = "Prometheus export needs prometheus-client: pip install 'async-batchstate[prometheus]'"

_QUANTILES = (("0.5", "latency_p50"), ("0.95", "latency_p95"), ("0.99", "latency_p99"))


class StatsSource(Protocol):
    """Anything with a ``stats()`` snapshot, such as ``AsyncBatchStateManager``."""

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        ...


class PrometheusCollector:
    """A Prometheus collector reading a manager's ``stats()`` at every scrape.

    Register it on a registry you choose:

        registry = prometheus_client.CollectorRegistry()
        PrometheusCollector(manager).register(registry)

    (pass ``prometheus_client.REGISTRY`` to expose it with the default registry).
    Metric names start with ``namespace`` (default ``async_batchstate``):

    * ``<ns>_completions_recorded_total``, ``<ns>_completions_duplicate_total``,
      ``<ns>_completions_failed_total`` (counters).
    * ``<ns>_commits_total``, ``<ns>_attempts_total``, ``<ns>_retries_total``
      (counters): commits count lock-free commits and transactions alike.
    * ``<ns>_failures_total{cause="aborted"|"unavailable"|...}`` (counter): failed
      attempts by error kind (every kind, not only aborts).
    * ``<ns>_batches_finalized_total`` (counter).
    * ``<ns>_completion_latency_seconds{quantile="0.5"|"0.95"|"0.99"}`` and
      ``<ns>_completion_latency_max_seconds`` (gauges over the recent window).
    * ``<ns>_commits_per_completion`` (gauge).

    Args:
        manager: The source of ``stats()``.
        namespace: Prefix of every metric name; give each manager its own
            when several share a registry.
        labels: Constant labels added to every sample.

    Raises:
        ImportError: ``prometheus-client`` is not installed (install the
            ``async-batchstate[prometheus]`` extra).
    """

    def __init__(
        self,
        manager: StatsSource,
        *,
        namespace: str = "async_batchstate",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        try:
            from prometheus_client import core
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        self._core: Any = core
        self._manager = manager
        self._ns = namespace
        self._label_names = list(labels or {})
        self._label_values = [str(v) for v in (labels or {}).values()]
        self._registry: CollectorRegistry | None = None

    def __repr__(self) -> str:
        where = "registered" if self._registry is not None else "unregistered"
        return f"<PrometheusCollector namespace={self._ns!r} {where}>"

    def register(self, registry: CollectorRegistry) -> Self:
        """Register on ``registry`` (required: never the global one implicitly).

        Returns:
            This collector, for chaining.

        Raises:
            ConfigurationError: The registry already has metrics with these names
                (use another ``namespace``), or this collector is registered already.
        """
        if self._registry is not None:
            raise ConfigurationError(f"{self!r} is already registered")
        try:
            registry.register(self)
        except ValueError as exc:  # prometheus_client: "Duplicated timeseries"
            raise ConfigurationError(
                f"{exc}; give this collector another namespace= (now {self._ns!r})"
            ) from exc
        self._registry = registry
        return self

    def unregister(self) -> None:
        """Remove this collector from the registry it was registered on (if any)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def describe(self) -> Iterator[Any]:
        """The metric families, without samples (lets the registry check names cheaply)."""
        return iter(self._families(None))

    def collect(self) -> Iterator[Any]:
        """The metric families with values from a fresh ``stats()`` snapshot."""
        return iter(self._families(self._manager.stats()))

    def _families(self, stats: Stats | None) -> list[Any]:
        core = self._core
        ns = self._ns
        names = self._label_names
        values = self._label_values
        families: list[Any] = []

        def counter(name: str, doc: str, value: float) -> None:
            family = core.CounterMetricFamily(f"{ns}_{name}", doc, labels=names)
            if stats is not None:
                family.add_metric(values, value)
            families.append(family)

        def gauge(name: str, doc: str, value: float) -> None:
            family = core.GaugeMetricFamily(f"{ns}_{name}", doc, labels=names)
            if stats is not None:
                family.add_metric(values, value)
            families.append(family)

        s = stats or Stats()
        counter("completions_recorded", "Completions counted for the first time.", s.recorded)
        counter("completions_duplicate", "Completions that were already recorded.", s.duplicates)
        counter("completions_failed", "Completions whose caller got an error.", s.failed)
        counter("commits", "Committed group writes (lock-free or transactional).", s.commits)
        counter("attempts", "Write attempts, committed or not.", s.attempts)
        counter("retries", "Write attempts after a failed one.", s.retries)
        counter("batches_finalized", "Batches this process finalized.", s.batches_finalized)

        failures = core.CounterMetricFamily(
            f"{ns}_failures", "Failed write attempts by cause.", labels=[*names, "cause"]
        )
        if stats is not None:
            for cause, count in sorted(stats.failures_by_cause.items()):
                failures.add_metric([*values, cause], count)
        families.append(failures)

        latency = core.GaugeMetricFamily(
            f"{ns}_completion_latency_seconds",
            "Seconds from record_completion to its result, by quantile (recent window).",
            labels=[*names, "quantile"],
        )
        if stats is not None:
            for quantile, attribute in _QUANTILES:
                latency.add_metric([*values, quantile], getattr(stats, attribute))
        families.append(latency)
        gauge(
            "completion_latency_max_seconds",
            "Largest record_completion latency in the recent window, seconds.",
            s.latency_max,
        )
        gauge(
            "commits_per_completion",
            "Commits per recorded or duplicate completion.",
            s.commits_per_completion,
        )
        return families
