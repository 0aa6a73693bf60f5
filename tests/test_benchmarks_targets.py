"""The benchmark targets are data judged by one function: checked here without the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks import targets
from benchmarks._targets import Group, Target, judge

_GROUP = Group(
    "overhead",
    {"a": {"strategy": "manager"}, "b": {"strategy": "batched_write"}},
    (Target("p50 <= 1.25x", "a", "p50_ms", "<=", 1.25, "{value:.2f}x ({rtt:g} ms)", versus="b"),),
    skip="p50 (skipped)",
    profile="local",
)


def _results(manager_p50: float, rtt_ms: float = 0.0, **cells: list[Any]) -> dict[str, Any]:
    overhead = [
        {"strategy": "manager", "p50_ms": manager_p50},
        {"strategy": "batched_write", "p50_ms": 4.0},
    ]
    return {"network": {"rtt_ms": rtt_ms}, "overhead": overhead, **cells}


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (_results(5.0), ("PASS", "p50 <= 1.25x", "1.25x (0 ms)")),
        (_results(6.0), ("MISS", "p50 <= 1.25x", "1.50x (0 ms)")),
        (_results(5.0, rtt_ms=14.0), ("SKIP", "p50 (skipped)", "a local target; this run is WAN")),
        (_results(5.0, overhead=[]), ("SKIP", "p50 (skipped)", "not measured in this run")),
    ],
    ids=["pass", "miss", "other-profile", "cell-missing"],
)
def test_a_group_judges_its_targets_or_skips_them_in_one_line(
    results: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    """A threshold met is PASS, missed is MISS; another profile or a missing cell is one SKIP."""
    [line] = judge([_GROUP], results)
    assert expected == (line["status"], line["target"], line["measured"])


def test_a_bool_selects_cells_by_truthiness_and_names_figures_of_the_cell() -> None:
    """``redeliver=True`` finds the cell with a redelivered share; ``{exact}`` names its check."""
    cell = {"strategy": "m", "redeliver": 0.1, "consistency": {"ok": False, "failed_checks": ["x"]}}
    group = Group(
        "redelivery",
        {"a": {"strategy": "m", "redeliver": True}},
        (Target("exact", "a", "exact", "==", True, "{exact}"),),
        skip="exact (skipped)",
    )
    assert [{"target": "exact", "status": "MISS", "measured": "NOT exact: x"}] == judge(
        [group], {"redelivery": [{**cell, "redeliver": 0.0}, cell]}
    )


def test_a_run_without_cells_skips_every_target() -> None:
    """The declared targets of an empty local run are all SKIP, one line per group."""
    lines = targets({"network": {"rtt_ms": 0.0}, "ceiling": {"docs_per_s": 1.0}})
    assert (["SKIP"] * 8, 8) == ([t["status"] for t in lines], len({t["target"] for t in lines}))
