"""The issue's targets as data: each a cell, a metric and a threshold, judged by ``judge``.

Both reports use the records: the closed-loop run judges ``TARGETS`` here, the
open-loop report adds its own capacity rule (see ``_open_report``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Cell = dict[str, Any]
Line = dict[str, str]

NOT_MEASURED = "not measured in this run"
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    ">=": operator.ge,
}


def ratio(a: float, b: float) -> float:
    """``a / b``; infinite when ``b`` is zero (the other side confirmed nothing)."""
    return a / b if b else math.inf


def times(r: float) -> str:
    """A ratio as ``12.3x``, or why it has none."""
    return f"{r:.1f}x" if math.isfinite(r) else "unbounded (it confirmed nothing)"


def rpc_text(rpcs: dict[str, int]) -> str:
    """RPC counts by method, as one sorted line."""
    return ", ".join(f"{k} {v}" for k, v in sorted(rpcs.items())) or "no RPCs"


def _lost(cell: Cell) -> int:
    return int(cell["failed"] + cell["unfinished"])


def _exact_text(cell: Cell) -> str:
    ok = cell["consistency"]["ok"]
    return "exact" if ok else "NOT exact: " + ", ".join(cell["consistency"]["failed_checks"])


def _others(rpcs: dict[str, int], *methods: str) -> int:
    return sum(rpcs.values()) - sum(rpcs.get(m, 0) for m in methods)


def _one_commit_per_group(cell: Cell) -> bool:
    rpcs = cell["rpcs"]
    return rpcs.get("Commit", 0) == cell["commits"] and _others(rpcs, "Commit") == 0


def _one_read_and_commit_more(cell: Cell) -> bool:
    # One process writes, so a group meets at most one round of conflicts: at most
    # one BatchGetDocuments per group and one Commit more per read; nothing else.
    rpcs, groups = cell["rpcs"], cell["commits"]
    reads, commits = rpcs.get("BatchGetDocuments", 0), rpcs.get("Commit", 0)
    others = _others(rpcs, "Commit", "BatchGetDocuments")
    return reads <= groups and groups <= commits <= groups + reads and others == 0


METRICS: dict[str, Callable[[Cell], Any]] = {
    "lost": _lost,
    "exact": lambda cell: cell["consistency"]["ok"],
    "capacity": lambda sweep: sweep["capacity"]["per_s"],
    "one_commit_per_group": _one_commit_per_group,
    "one_read_and_commit_more": _one_read_and_commit_more,
}
"""Metrics that are not a field of the cell; any other metric name is the cell's field."""


_FIGURES: dict[str, Callable[[Cell], Any]] = {
    "lost": _lost,
    "exact": _exact_text,
    "rpcs": lambda cell: rpc_text(cell["rpcs"]),
}


class _Facts(dict[str, Any]):
    """What a title or figure may name; ``_FIGURES`` of the cell ``a`` on demand."""

    def __missing__(self, key: str) -> Any:
        return _FIGURES[key](self["a"])


@dataclass(frozen=True)
class Target:
    """One line: ``cell``'s ``metric`` (over ``versus``'s, when given) ``op`` ``threshold``.

    ``title`` and ``figure`` are format strings: ``a`` and ``b`` are the cell and the
    ``versus`` cell, ``value`` the metric (or ratio), ``x`` the ratio as text, ``lost``,
    ``exact`` and ``rpcs`` figures of ``a``, ``rtt`` the run's round trip, ``results``
    the whole run.
    """

    title: str
    cell: str
    metric: str
    op: str
    threshold: float
    figure: str
    versus: str | None = None

    def value(self, cells: dict[str, Cell]) -> Any:
        """The metric of the cell, or its ratio to the ``versus`` cell's."""
        get = METRICS.get(self.metric, operator.itemgetter(self.metric))
        mine = get(cells[self.cell])
        return ratio(mine, get(cells[self.versus])) if self.versus else mine

    def met(self, value: Any) -> bool:
        """Whether ``value`` meets the threshold."""
        return _OPS[self.op](value, self.threshold)

    def text(self, value: Any, cells: dict[str, Cell], **facts: Any) -> tuple[str, str]:
        """The title and the measured figure, formatted."""
        names = _Facts(
            a=cells[self.cell],
            b=cells.get(self.versus or ""),
            value=value,
            x=times(value) if self.versus else "",
            **facts,
        )
        return self.title.format_map(names), self.figure.format_map(names)


@dataclass(frozen=True)
class Group:
    """Targets judged on the same cells of one scenario; one SKIP line stands for them all.

    ``cells`` names each cell by what selects it (see ``find``). ``profile`` is
    ``"local"`` or ``"WAN"`` when only that profile judges the targets; ``skip`` is the
    line when this run lacks a cell, ``off_profile`` when it is the other profile (if
    that line differs).
    """

    scenario: str
    cells: dict[str, dict[str, Any]]
    targets: tuple[Target, ...]
    skip: str
    profile: str | None = None
    off_profile: str | None = None

    def find(self, results: dict[str, Any]) -> dict[str, Cell] | None:
        """The group's cells in ``results``, or None when one is missing."""
        found = {}
        for name, where in self.cells.items():
            cell = find(results.get(self.scenario, []), **where)
            if cell is None:
                return None
            found[name] = cell
        return found


def find(cells: Iterable[Cell], **where: Any) -> Cell | None:
    """The first cell whose fields equal ``where``; a bool matches any truthy value
    (``redeliver`` is a share)."""
    for cell in cells:
        if all((bool(cell[k]) if isinstance(v, bool) else cell[k]) == v for k, v in where.items()):
            return cell
    return None


def line(target: str, ok: bool | None, measured: str = NOT_MEASURED) -> Line:
    """A target's line: PASS, MISS, or SKIP when ``ok`` is None (not judged in this run)."""
    status = "SKIP" if ok is None else "PASS" if ok else "MISS"
    return {"target": target, "status": status, "measured": measured}


def judge(groups: Iterable[Group], results: dict[str, Any]) -> list[Line]:
    """Every target of ``groups`` judged on ``results``, in order."""
    rtt = float(results.get("network", {}).get("rtt_ms", 0.0))
    run = "WAN" if rtt else "local"
    out: list[Line] = []
    for group in groups:
        if group.profile not in (None, run):
            measured = f"a {group.profile} target; this run is {run}"
            out.append(line(group.off_profile or group.skip, None, measured))
            continue
        cells = group.find(results)
        if cells is None:
            out.append(line(group.skip, None))
            continue
        for target in group.targets:
            value = target.value(cells)
            title, figure = target.text(value, cells, rtt=rtt, results=results)
            out.append(line(title, target.met(value), figure))
    return out


_LOST = "{lost} failed or unfinished"
_P99 = "p99 {a[p99_ms]:.0f} ms"
_RATES = "{a[completions_per_s]:.0f}/s vs {b[completions_per_s]:.0f}/s"
_C200 = "200 callers, one batch: manager"
_E = "(e) 4x100, 10% redelivered: manager"
_F = "(f) 8x10, 10% redelivered, WAN {rtt:g} ms: manager"
_RPC = "RPCs, manager (lock-free path)"


def _sound(title: str, *, p99_ms: float) -> tuple[Target, ...]:
    """Cell ``a`` is quick enough, lost nothing and counted exactly."""
    return (
        Target(f"{title} p99 < {p99_ms} ms", "a", "p99_ms", "<", p99_ms, _P99),
        Target(f"{title} zero failures", "a", "lost", "==", 0, _LOST),
        Target(f"{title} exact", "a", "exact", "==", True, "{exact}"),
    )


TARGETS: tuple[Group, ...] = (
    Group(
        "overhead",
        {"a": {"strategy": "manager"}, "b": {"strategy": "batched_write"}},
        (
            Target(
                "uncontended: manager p50 <= 1.25x one batched write",
                "a",
                "p50_ms",
                "<=",
                1.25,
                "{a[p50_ms]:.2f} ms vs {b[p50_ms]:.2f} ms = {value:.2f}x",
                versus="b",
            ),
        ),
        skip="uncontended: manager p50 <= 1.25x one batched write",
        profile="local",
    ),
    Group(
        "overhead",
        {
            "a": {"strategy": "manager"},
            "b": {"strategy": "batched_write"},
            "blind": {"strategy": "blind_txn"},
        },
        (
            Target(
                "WAN 1 caller: manager p50 <= 1.15x one batched write ({rtt:g} ms round trip)",
                "a",
                "p50_ms",
                "<=",
                1.15,
                "{a[p50_ms]:.1f} ms vs {b[p50_ms]:.1f} ms = {value:.2f}x",
                versus="b",
            ),
            Target(
                "WAN 1 caller: manager p50 <= 0.7x (b) ({rtt:g} ms round trip)",
                "a",
                "p50_ms",
                "<=",
                0.7,
                "{a[p50_ms]:.1f} ms vs {b[p50_ms]:.1f} ms = {value:.2f}x",
                versus="blind",
            ),
        ),
        skip="WAN 1 caller: manager p50 (both targets)",
        profile="WAN",
        off_profile="WAN 1 caller: manager p50 <= 1.15x one batched write and <= 0.7x (b)",
    ),
    Group(
        "sweep",
        {
            "a": {"strategy": "manager", "concurrency": 200},
            "rmw": {"strategy": "rmw_txn", "concurrency": 200},
            "blind": {"strategy": "blind_txn", "concurrency": 200},
        },
        (
            Target(
                f"{_C200} zero failures",
                "a",
                "lost",
                "==",
                0,
                "{a[failed]} failed, {a[unfinished]} unfinished",
            ),
            Target(
                f"{_C200} >= 10x (a)",
                "a",
                "completions_per_s",
                ">=",
                10,
                "{a[completions_per_s]:.0f}/s vs {b[completions_per_s]:.1f}/s = {x}",
                versus="rmw",
            ),
            Target(
                f"{_C200} >= 10x (b)",
                "a",
                "completions_per_s",
                ">=",
                10,
                _RATES + " = {x}",
                versus="blind",
            ),
            Target(f"{_C200} p99 < 500 ms", "a", "p99_ms", "<", 500, _P99),
            Target(
                f"{_C200} commits/completion <= 0.05",
                "a",
                "commits_per_completion",
                "<=",
                0.05,
                "{value:.4f}",
            ),
        ),
        skip=f"{_C200} (all 200-caller targets)",
        profile="local",
    ),
    Group(
        "sweep",
        {"a": {"strategy": "manager", "concurrency": 500}},
        (
            Target(
                "500 callers: manager >= 50% of the ceiling",
                "a",
                "fraction_of_ceiling",
                ">=",
                0.5,
                "{a[completions_per_s]:.0f}/s of {results[ceiling][docs_per_s]:.0f} docs/s"
                " = {value:.0%}",
            ),
        ),
        skip="500 callers: manager >= 50% of the ceiling",
        profile="local",
    ),
    Group(
        "multiprocess",
        {
            "a": {"strategy": "manager", "processes": 4},
            "b": {"strategy": "blind_txn", "processes": 4},
        },
        (
            Target(
                "4 processes: manager >= 5x (b)",
                "a",
                "completions_per_s",
                ">=",
                5,
                _RATES + " = {x}",
                versus="b",
            ),
            Target("4 processes: manager zero failures", "a", "lost", "==", 0, _LOST),
        ),
        skip="4 processes: manager (both targets)",
        profile="local",
    ),
    Group(
        "redelivery",
        {
            "a": {"strategy": "manager", "processes": 4, "concurrency": 100, "redeliver": True},
            "b": {"strategy": "manager", "processes": 4, "concurrency": 100, "redeliver": False},
        },
        (
            Target(
                f"{_E} >= 0.8x without redeliveries",
                "a",
                "completions_per_s",
                ">=",
                0.8,
                _RATES + " = {value:.2f}x",
                versus="b",
            ),
            *_sound(_E, p99_ms=500),
        ),
        skip=f"{_E} (all four targets)",
        profile="local",
    ),
    Group(
        "redelivery",
        {
            "a": {"strategy": "manager", "processes": 8, "concurrency": 10, "redeliver": True},
            "b": {"strategy": "blind_txn", "processes": 8, "concurrency": 10, "redeliver": True},
        },
        (
            Target(
                f"{_F} >= 4x (b)", "a", "completions_per_s", ">=", 4, _RATES + " = {x}", versus="b"
            ),
            *_sound(_F, p99_ms=300),
        ),
        skip="(f) 8x10, 10% redelivered, WAN: manager (all four targets)",
        profile="WAN",
    ),
    Group(
        "rpc_cost",
        {
            "fresh": {"strategy": "manager_no_validation", "phase": "fresh"},
            "mixed": {"strategy": "manager_no_validation", "phase": "half redelivered"},
        },
        (
            Target(
                f"{_RPC}: a group of fresh completions costs exactly one Commit RPC",
                "fresh",
                "one_commit_per_group",
                "==",
                True,
                "{a[commits]} groups: {rpcs}",
            ),
            Target(
                f"{_RPC}: a group with redeliveries costs at most one BatchGetDocuments "
                "and one Commit more",
                "mixed",
                "one_read_and_commit_more",
                "==",
                True,
                "{a[commits]} groups, half of the players redelivered: {rpcs}",
            ),
        ),
        skip=f"{_RPC} (both targets)",
    ),
)
"""The closed-loop run's targets: local ones judged on a loopback run, WAN ones on a
``--rtt-ms`` run; the other profile's are SKIP, so both runs print every line."""


def targets(results: dict[str, Any]) -> list[Line]:
    """The issue's targets, each PASS, MISS or SKIP (point not in this run) with its figure."""
    return judge(TARGETS, results)


def target_lines(results: dict[str, Any]) -> list[str]:
    """``PASS target: figure`` lines, as printed at the end of a run."""
    return [f"{t['status']} {t['target']}: {t['measured']}" for t in results["targets"]]
