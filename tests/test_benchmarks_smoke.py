"""Smoke test of ``benchmarks/``: every scenario at tiny size on the emulator, plus the budget."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from benchmarks import TINY, Bench, target_lines, targets, write
from benchmarks._load import deliveries, drive, players
from benchmarks._strategies import (
    MULTIPROCESS,
    OVERHEAD,
    REDELIVERY,
    RPC_COST,
    STRATEGIES,
    SWEEP,
    Costs,
    Strategy,
)
from rich.progress import Progress

from async_batchstate.testing import EmulatorInfo

CELL_KEYS = {
    "scenario": str,
    "strategy": str,
    "label": str,
    "processes": int,
    "concurrency": int,
    "redeliver": float,
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
    "duplicates": int,
    "rpcs": dict,
    "rpcs_per_completion": float,
    "commit_rpcs_per_commit": float,
    "attempts_histogram": dict,
    "errors": dict,
    "error_examples": dict,
    "consistency": dict,
}
SCENARIOS = ("overhead", "sweep", "multiprocess", "redelivery", "rpc_cost")


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
    """The summary JSON holds machine facts, the ceiling and every cell with every field, typed."""
    results, _ = run
    assert {"cores", "python", "emulator_jar", "emulator_version"} <= results["machine"].keys()
    assert {"started_at", "finished_at", "duration_s", "config", "warmup"} <= results.keys()
    assert {"rtt_ms": 0.0, "profile": "local"} == results["network"]
    assert all(w.startswith("WARNING: ") for w in results["warnings"])
    assert results["ceiling"]["docs_per_s"] > 0
    for cell in (c for scenario in SCENARIOS for c in results[scenario]):
        for key, kind in CELL_KEYS.items():
            value = cell[key]
            assert isinstance(value, kind) or (kind is float and isinstance(value, int)), key


def test_per_operation_latencies_are_only_in_the_raw_file(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """``<name>.json`` has no per-operation arrays; ``<name>.raw.json`` has one per cell."""
    results, paths = run
    raw = json.loads(paths["raw"].read_text())
    summary_cells = [c for scenario in SCENARIOS for c in results[scenario]]
    raw_cells = [c for scenario in SCENARIOS for c in raw[scenario]]
    assert ([False] * len(summary_cells), [True] * len(raw_cells)) == (
        ["latencies_ms" in c for c in summary_cells],
        [isinstance(c["latencies_ms"], list) for c in raw_cells],
    )


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
    assert [(c["processes"], c["redeliver"], c["strategy"]) for c in results["redelivery"]] == [
        (n, r, s) for n, _, _ in TINY.redelivery for r in (0.0, TINY.redeliver) for s in REDELIVERY
    ]
    assert [(c["strategy"], c["phase"]) for c in results["rpc_cost"]] == [
        (s, p) for s in RPC_COST for p in ("fresh", "half redelivered")
    ]


def test_every_cell_passed_its_consistency_check(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """Final documents agree exactly in every cell without redeliveries, in every manager
    cell, and in the ceiling: nothing lost or doubled."""
    results, _ = run
    cells = [c for scenario in SCENARIOS for c in results[scenario]]
    cells = [c for c in cells if c["strategy"].startswith("manager") or not c["redeliver"]]
    cells += results["ceiling"]["runs"]
    assert [] == [c["consistency"]["failed_checks"] for c in cells if not c["consistency"]["ok"]]


def test_redeliveries_expose_the_blind_transactions_double_count(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """With redeliveries the plain blind transaction is reported not exact (it counts twice)."""
    results, _ = run
    blind = [c for c in results["redelivery"] if c["strategy"] == "blind_txn" and c["redeliver"]]
    assert [False] * len(blind) == [c["consistency"]["ok"] for c in blind]


def test_manager_reports_each_redelivery_as_a_duplicate(
    run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """Every redelivered message the manager confirmed was a duplicate, and no other was."""
    results, _ = run
    cells = [c for c in results["redelivery"] if c["strategy"].startswith("manager")]
    assert [(c["ops"] - c["consistency"]["recorded"]) for c in cells] == [
        c["duplicates"] for c in cells
    ]


def test_every_cell_counts_its_rpcs(run: tuple[dict[str, Any], dict[str, Path]]) -> None:
    """Each cell that confirmed completions counted at least one Commit RPC per commit."""
    results, _ = run
    cells = [c for scenario in SCENARIOS for c in results[scenario] if c["commits"]]
    assert [] == [c["label"] for c in cells if c["rpcs"].get("Commit", 0) < c["commits"]]


def test_markdown_and_plots_are_written(run: tuple[dict[str, Any], dict[str, Path]]) -> None:
    """The Markdown quotes the target lines and the three plots are PNG files."""
    results, paths = run
    text = paths["markdown"].read_text()
    assert all(t["target"] in text for t in results["targets"])
    for key in ("throughput", "latency", "attempts", "redelivery"):
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

    def counters(self) -> Costs:
        return Costs()

    async def aclose(self) -> None:
        return None


async def test_a_stalled_strategy_is_cut_at_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy that never completes is cancelled after the budget and reported stalled."""
    monkeypatch.setitem(STRATEGIES, "hang", Strategy("hang", "hang", lambda c, col: _Hang()))
    load = await drive(None, "c", "hang", "b", players(5), concurrency=2, budget=0.05)  # type: ignore[arg-type]
    assert (load.stalled, len(load.succeeded), load.elapsed < 1.0) == (True, 0, True)


def test_deliveries_send_each_player_once_and_the_redelivered_share_twice() -> None:
    """Every player is delivered once and a ``redeliver`` share of them once more."""
    parts = deliveries(players(100), 4, 0.1, window=20, seed=3)
    times = Counter(player for part in parts for player in part)
    assert {1: 90, 2: 10} == dict(Counter(times.values()))


def test_deliveries_deal_first_deliveries_round_robin() -> None:
    """Without redeliveries message i goes to process i mod N, in order."""
    work = players(10)
    assert [work[0::4], work[1::4], work[2::4], work[3::4]] == deliveries(work, 4, 0.0, window=8)
