"""Smoke test of ``benchmarks/``: every scenario at tiny size on the emulator, plus the budget;
the open-loop cells in their quick profile, and the schedule and sweep logic."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from benchmarks import TINY, Bench, target_lines, targets, write
from benchmarks.__main__ import main
from benchmarks._load import deliveries, drive, players
from benchmarks._open import OpenBench
from benchmarks._open_report import write_open
from benchmarks._open_sweep import OPEN_QUICK, capacity, next_rate, schedule, step_summary
from benchmarks._open_worker import OpenLoad
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

    async def prepare(self, batch_ids: Sequence[str]) -> None:
        return None

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


# -- open loop ---------------------------------------------------------------------------

STEP_KEYS = {
    "strategy": str,
    "offered_per_s": float,
    "messages": int,
    "completions": int,
    "completions_per_s": float,
    "failed": int,
    "unfinished": int,
    "failure_share": float,
    "p50_ms": float,
    "p99_ms": float,
    "max_ms": float,
    "dispatch_lag_p99_ms": float,
    "cpu_bound": bool,
    "client_cpu_ms_per_message": float,
    "emulator_cpu_ms_per_message": float,
    "rpcs": dict,
    "rpcs_per_message": float,
    "mean_group_size": float,
    "duplicates": int,
    "consistency": dict,
    "exact": bool,
    "ok": bool,
    "misses": list,
}


@pytest.fixture(scope="module")
def open_run(
    firestore_emulator: EmulatorInfo, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The quick open-loop profile (every cell, one tiny step each), written to a temp dir."""
    process = firestore_emulator.process
    with Progress(disable=True) as progress:
        bench = OpenBench(
            TINY,
            OPEN_QUICK,
            firestore_emulator.host,
            firestore_emulator.project,
            progress,
            emulator_pid=process.pid if process is not None else None,
        )
        results = asyncio.run(bench.run())
    paths = write_open(results, tmp_path_factory.mktemp("open"))
    return json.loads(paths["json"].read_text()), paths


def test_open_loop_runs_every_cell_and_strategy(
    open_run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """One sweep per cell (hot batch and batches per W, each ceiling) and strategy."""
    results, _ = open_run
    cells = [f"{g}-w{n}" for n in OPEN_QUICK.processes for g in ("hot", "batches", "first")]
    cells += [
        f"ceiling{c:g}-w{n}" for n in OPEN_QUICK.ceiling_processes for c in OPEN_QUICK.ceilings
    ]
    assert [(s["cell"], s["strategy"]) for s in results["sweeps"]] == [
        (c, s) for c in cells for s in OPEN_QUICK.strategies
    ]
    assert all(len(s["steps"]) == OPEN_QUICK.max_steps for s in results["sweeps"])


def test_open_loop_steps_have_every_figure(
    open_run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """Every step carries every column, typed; the per-message costs were measured."""
    results, paths = open_run
    steps = [st for s in results["sweeps"] for st in s["steps"]]
    for step in steps:
        for key, kind in STEP_KEYS.items():
            value = step[key]
            if value is None and key == "emulator_cpu_ms_per_message":
                assert not results["emulator_pid_known"]  # a reused emulator: pid unknown
                continue
            assert isinstance(value, kind) or (kind is float and isinstance(value, int)), key
        assert "latencies_ms" not in step
    assert all(st["client_cpu_ms_per_message"] > 0 and st["rpcs"].get("Commit") for st in steps)
    raw = json.loads(paths["raw"].read_text())
    assert all(isinstance(st["latencies_ms"], list) for s in raw["sweeps"] for st in s["steps"])


def test_open_loop_manager_steps_are_exact_and_ceiling_cells_count_aborts(
    open_run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """The manager stays exact with redeliveries; only ceiling cells report the proxy's aborts
    and CPU."""
    results, _ = open_run
    manager = [
        st for s in results["sweeps"] if s["strategy"].startswith("manager") for st in s["steps"]
    ]
    assert [] == [st["consistency"]["failed_checks"] for st in manager if not st["exact"]]
    assert all(
        (st["ceiling_aborts"] is None, st["ceiling_proxy_cpu_ms_per_message"] is None)
        == (not s["ceiling_writes_per_s"],) * 2
        for s in results["sweeps"]
        for st in s["steps"]
    )


def test_open_loop_markdown_and_one_plot_per_cell(
    open_run: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    """The Markdown leads with the targets and capacity at SLO; one PNG per cell."""
    results, paths = open_run
    text = paths["markdown"].read_text()
    assert "## Capacity at SLO" in text
    assert all(t["target"] in text for t in results["targets"])
    for cell in {s["cell"] for s in results["sweeps"]}:
        assert paths[cell].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_is_poisson_per_process_with_redeliveries_to_another_process() -> None:
    """About ``rate * seconds`` messages; each redelivery 50-500 ms later, elsewhere."""
    parts = schedule(
        400.0, 5.0, 4, ["a", "b"], redeliver=0.1, delay=(0.05, 0.5), seed=7, prefix="x"
    )
    arrivals = [(w, *a) for w, part in enumerate(parts) for a in part]
    assert 1800 < len(arrivals) < 2200
    assert all(part == sorted(part) for part in parts)
    by_player: dict[str, list[tuple[int, float]]] = {}
    for w, t, _, player, _ in arrivals:
        by_player.setdefault(player, []).append((w, t))
    twice = [sorted(v, key=lambda x: x[1]) for v in by_player.values() if len(v) == 2]
    assert 0.05 < len(twice) / len(by_player) < 0.15
    assert max(map(len, by_player.values())) == 2
    assert all(a[0] != b[0] and 0.05 <= b[1] - a[1] <= 0.5 for a, b in twice)


def test_a_sweep_doubles_then_refines_once_between_pass_and_miss() -> None:
    """100, 200, 400 pass, 800 misses: one step at 566, then done."""
    cfg = replace(OPEN_QUICK, max_steps=10)
    steps = [(100.0, True), (200.0, True), (400.0, True), (800.0, False)]
    assert [200.0, 566.0, None] == [
        next_rate(steps[:1], cfg),
        next_rate(steps, cfg),
        next_rate([*steps, (566.0, True)], cfg),
    ]
    assert [50.0, None] == [
        next_rate([(100.0, False)], cfg),
        next_rate([(100.0, False)], replace(cfg, max_steps=1)),
    ]


def test_a_step_whose_arrivals_fall_behind_is_cpu_bound() -> None:
    """A missed step with dispatch lag over the limit ends the sweep as CPU-bound."""
    load = OpenLoad(messages=10, latencies=[0.9] * 10, lags=[0.2] * 10)
    consistency = {"ok": True, "failed_checks": []}
    step = step_summary(
        [load],
        cfg=OPEN_QUICK,
        strategy="manager",
        rate=100.0,
        consistency=consistency,
        emulator_cpu_s=None,
    )
    assert (False, True, "cpu-bound") == (step["ok"], step["cpu_bound"], capacity([step])["limit"])


@pytest.mark.parametrize(
    "argv",
    [["--only", "hot"], ["--open-loop", "--only", "nope"], ["--open-loop", "--step-s", "0"]],
    ids=["needs-open-loop", "unknown-cell", "zero-step"],
)
def test_bad_open_loop_flags_are_refused_before_anything_starts(argv: list[str]) -> None:
    """Argument errors exit with status 2 before the emulator starts."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
