"""Smoke test of ``benchmarks/``: every scenario at tiny size on the emulator, plus the budget."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from benchmarks import TINY, Bench, target_lines, targets, write
from benchmarks._load import drive, players
from benchmarks._strategies import MULTIPROCESS, OVERHEAD, STRATEGIES, SWEEP, Strategy
from rich.progress import Progress

from async_batchstate.testing import EmulatorInfo

CELL_KEYS = {
    "scenario": str,
    "strategy": str,
    "label": str,
    "processes": int,
    "concurrency": int,
    "ops": int,
    "succeeded": int,
    "failed": int,
    "unfinished": int,
    "stalled": bool,
    "elapsed_s": float,
    "completions_per_s": float,
    "fraction_of_ceiling": float,
    "p50_ms": float,
    "p95_ms": float,
    "p99_ms": float,
    "max_ms": float,
    "attempts": int,
    "attempts_per_completion": float,
    "aborts": int,
    "aborts_by_cause": dict,
    "commits": int,
    "commits_per_completion": float,
    "attempts_histogram": dict,
    "errors": dict,
    "error_examples": dict,
    "consistency": dict,
    "latencies_ms": list,
}


@pytest.fixture(scope="module")
def run(
    firestore_emulator: EmulatorInfo, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Path]]:
    """One tiny run of every scenario, written to a temporary directory."""
    with Progress(disable=True) as progress:
        bench = Bench(TINY, firestore_emulator.host, firestore_emulator.project, progress)
        results = asyncio.run(bench.run())
    paths = write(results, tmp_path_factory.mktemp("bench"))
    return json.loads(paths["json"].read_text()), paths


def test_json_has_the_documented_schema(run: tuple[dict[str, Any], dict[str, Path]]) -> None:
    """The JSON holds machine facts, the ceiling and every cell with every field, typed."""
    results, _ = run
    assert {"cores", "python", "emulator_jar", "emulator_version"} <= results["machine"].keys()
    assert {"started_at", "finished_at", "duration_s", "config", "warmup"} <= results.keys()
    assert all(w.startswith("WARNING: ") for w in results["warnings"])
    assert results["ceiling"]["docs_per_s"] > 0
    for cell in results["overhead"] + results["sweep"] + results["multiprocess"]:
        for key, kind in CELL_KEYS.items():
            value = cell[key]
            assert isinstance(value, kind) or (kind is float and isinstance(value, int)), key


def test_every_scenario_and_strategy_ran(run: tuple[dict[str, Any], dict[str, Path]]) -> None:
    """Each scenario has a cell per strategy and point of the configuration."""
    results, _ = run
    assert [c["strategy"] for c in results["overhead"]] == list(OVERHEAD)
    assert [(c["concurrency"], c["strategy"]) for c in results["sweep"]] == [
        (n, s) for n, _ in TINY.sweep for s in SWEEP
    ]
    assert [(c["processes"], c["strategy"]) for c in results["multiprocess"]] == [
        (n, s) for n in TINY.processes for s in MULTIPROCESS
    ]


def test_every_cell_passed_its_consistency_check(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """Final documents agree exactly in every cell and the ceiling: nothing lost or doubled."""
    results, _ = run
    cells = results["overhead"] + results["sweep"] + results["multiprocess"]
    cells += results["ceiling"]["runs"]
    assert [c["consistency"]["failed_checks"] for c in cells if not c["consistency"]["ok"]] == []


def test_markdown_and_plots_are_written(run: tuple[dict[str, Any], dict[str, Path]]) -> None:
    """The Markdown quotes the target lines and the three plots are PNG files."""
    results, paths = run
    text = paths["markdown"].read_text()
    assert all(t["target"] in text for t in results["targets"])
    for key in ("throughput", "latency", "attempts"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_report_a_miss_instead_of_failing(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """A slow manager turns the overhead target into a MISS line; nothing raises."""
    results = copy.deepcopy(run[0])
    for cell in results["overhead"]:
        if cell["strategy"] == "manager":
            cell["p50_ms"] = 1e6
    results["targets"] = targets(results)
    assert target_lines(results)[0].startswith("MISS uncontended")


class _Hang:
    """A recorder whose writes never finish."""

    async def record(self, batch_id: str, player: str, count: int) -> int:
        await asyncio.Event().wait()
        return 1

    def counters(self) -> tuple[int, int, dict[str, int]]:
        return 0, 0, {}

    async def aclose(self) -> None:
        return None


async def test_a_stalled_strategy_is_cut_at_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy that never completes is cancelled after the budget and reported stalled."""
    monkeypatch.setitem(STRATEGIES, "hang", Strategy("hang", "hang", lambda c, col: _Hang()))
    load = await drive(None, "c", "hang", "b", players(5), concurrency=2, budget=0.05)  # type: ignore[arg-type]
    assert (load.stalled, len(load.succeeded), load.elapsed < 1.0) == (True, 0, True)
