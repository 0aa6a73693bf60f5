"""Prometheus: the collector exposes a real manager's ``stats()`` on a registry the test owns."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Sequence

import pytest

pytest.importorskip("prometheus_client")

from google.api_core import exceptions as gexc
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from async_batchstate import ConfigurationError, RetryPolicy, Stats
from async_batchstate.instrumentation import PrometheusCollector
from async_batchstate.testing import FaultPoint

from ..helpers import ManagerFactory


class FixedStats:
    """A stats source with fixed values."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def stats(self) -> Stats:
        return self._stats


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape, parsed back: ``{(sample name, sorted labels): value}``."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_scrape_reflects_a_real_managers_stats(make_manager: ManagerFactory) -> None:
    """Counters, aborts by cause and latency quantiles match ``stats()`` after real writes."""
    fired = False

    async def abort_once(point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        nonlocal fired
        if point is FaultPoint.BEFORE_COMMIT and not fired:
            fired = True
            raise gexc.Aborted("injected contention")

    manager = make_manager(
        fault_injector=abort_once, retry=RetryPolicy(base_delay=0.001, max_delay=0.001)
    )
    registry = CollectorRegistry()
    PrometheusCollector(manager).register(registry)
    await manager.create_batch("b", expected_players=["p1", "p2"])
    await asyncio.gather(*(manager.record_completion("b", p, 1) for p in ("p1", "p2")))
    await manager.record_completion("b", "p2", 1)

    stats = manager.stats()
    found = samples(registry)
    ns = "async_batchstate"
    assert 2.0 == found[(f"{ns}_completions_recorded_total", ())]
    assert 1.0 == found[(f"{ns}_completions_duplicate_total", ())]
    assert 0.0 == found[(f"{ns}_completions_failed_total", ())]
    assert 1.0 == found[(f"{ns}_batches_finalized_total", ())]
    assert 1.0 == found[(f"{ns}_failures_total", (("cause", "aborted"),))]
    assert 1.0 == found[(f"{ns}_retries_total", ())]
    assert float(stats.commits) == found[(f"{ns}_commits_total", ())]
    assert float(stats.attempts) == found[(f"{ns}_attempts_total", ())]
    latency = f"{ns}_completion_latency_seconds"
    assert stats.latency_p99 == found[(latency, (("quantile", "0.99"),))]
    assert 0.0 < found[(latency, (("quantile", "0.5"),))]


def test_each_scrape_reads_fresh_stats() -> None:
    """The collector holds no copy: a later scrape sees the manager's newer counters."""

    class Growing:
        def __init__(self) -> None:
            self.recorded = 0

        def stats(self) -> Stats:
            self.recorded += 1
            return Stats(recorded=self.recorded)

    registry = CollectorRegistry()
    PrometheusCollector(Growing()).register(registry)

    first = samples(registry)[("async_batchstate_completions_recorded_total", ())]
    second = samples(registry)[("async_batchstate_completions_recorded_total", ())]

    assert first + 1 == second


def test_namespace_and_labels_let_two_managers_share_a_registry() -> None:
    """Two collectors with distinct namespaces register side by side, each with its labels."""
    registry = CollectorRegistry()
    PrometheusCollector(FixedStats(Stats(recorded=1)), namespace="a", labels={"env": "x"}).register(
        registry
    )
    PrometheusCollector(FixedStats(Stats(recorded=2)), namespace="b").register(registry)

    found = samples(registry)

    assert 1.0 == found[("a_completions_recorded_total", (("env", "x"),))]
    assert 2.0 == found[("b_completions_recorded_total", ())]


def test_same_namespace_twice_is_refused() -> None:
    """The registry refuses a second collector with the same metric names: a typed error."""
    registry = CollectorRegistry()
    PrometheusCollector(FixedStats(Stats())).register(registry)

    with pytest.raises(ConfigurationError, match=r"Duplicated timeseries.*namespace="):
        PrometheusCollector(FixedStats(Stats())).register(registry)


def test_unregister_removes_the_metrics_and_the_global_registry_is_untouched() -> None:
    """After ``unregister`` the scrape is empty; nothing was ever added to the global registry."""
    registry = CollectorRegistry()
    collector = PrometheusCollector(FixedStats(Stats())).register(registry)

    collector.unregister()

    assert {} == samples(registry)
    assert b"async_batchstate" not in generate_latest(REGISTRY)


def test_without_prometheus_client_installed() -> None:
    """Not installed: constructing the collector raises ImportError naming the extra."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if not installed
        from async_batchstate.instrumentation._prometheus import PrometheusCollector
        try:
            PrometheusCollector(object())
        except ImportError as exc:
            print("ERROR", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "async-batchstate[prometheus]" in done.stdout
