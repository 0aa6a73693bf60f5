"""Targets (PASS/MISS), the Markdown tables and the PNG plots of one run's results."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._strategies import STRATEGIES, SWEEP

Cell = dict[str, Any]


def _find(cells: Iterable[Cell], strategy: str, **where: int) -> Cell | None:
    for cell in cells:
        if cell["strategy"] == strategy and all(cell[k] == v for k, v in where.items()):
            return cell
    return None


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def _x(ratio: float) -> str:
    return f"{ratio:.1f}x" if math.isfinite(ratio) else "unbounded (it confirmed nothing)"


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's targets, each PASS, MISS or SKIP (point not in this run) with its figure."""
    out: list[dict[str, str]] = []

    def add(target: str, ok: bool | None, measured: str = "not measured in this run") -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "MISS"
        out.append({"target": target, "status": status, "measured": measured})

    manager = _find(results["overhead"], "manager")
    batched = _find(results["overhead"], "batched_write")
    if manager and batched:
        r = _ratio(manager["p50_ms"], batched["p50_ms"])
        add(
            "uncontended: manager p50 <= 1.25x one batched write",
            r <= 1.25,
            f"{manager['p50_ms']:.2f} ms vs {batched['p50_ms']:.2f} ms = {r:.2f}x",
        )
    sweep = results["sweep"]
    d, a, b = (_find(sweep, s, concurrency=200) for s in ("manager", "rmw_txn", "blind_txn"))
    title = "200 callers, one batch: manager"
    if d and a and b:
        lost = d["failed"] + d["unfinished"]
        figure = f"{d['failed']} failed, {d['unfinished']} unfinished"
        add(f"{title} zero failures", lost == 0, figure)
        ra = _ratio(d["completions_per_s"], a["completions_per_s"])
        rb = _ratio(d["completions_per_s"], b["completions_per_s"])
        rate = f"{d['completions_per_s']:.0f}/s vs"
        add(f"{title} >= 10x (a)", ra >= 10, f"{rate} {a['completions_per_s']:.1f}/s = {_x(ra)}")
        add(f"{title} >= 5x (b)", rb >= 5, f"{rate} {b['completions_per_s']:.0f}/s = {_x(rb)}")
        add(f"{title} p99 < 500 ms", d["p99_ms"] < 500, f"p99 {d['p99_ms']:.0f} ms")
        cpc = d["commits_per_completion"]
        add(f"{title} commits/completion <= 0.05", cpc <= 0.05, f"{cpc:.4f}")
    else:
        add(f"{title} (all 200-caller targets)", None)
    d500 = _find(sweep, "manager", concurrency=500)
    if d500:
        frac = d500["fraction_of_ceiling"]
        add(
            "500 callers: manager >= 50% of the ceiling",
            frac >= 0.5,
            f"{d500['completions_per_s']:.0f}/s of {results['ceiling']['docs_per_s']:.0f} docs/s"
            f" = {frac:.0%}",
        )
    else:
        add("500 callers: manager >= 50% of the ceiling", None)
    mp = results["multiprocess"]
    d4, b4 = _find(mp, "manager", processes=4), _find(mp, "blind_txn", processes=4)
    if d4 and b4:
        r = _ratio(d4["completions_per_s"], b4["completions_per_s"])
        add(
            "4 processes: manager >= 5x (b)",
            r >= 5,
            f"{d4['completions_per_s']:.0f}/s vs {b4['completions_per_s']:.0f}/s = {_x(r)}",
        )
        lost = d4["failed"] + d4["unfinished"]
        add("4 processes: manager zero failures", lost == 0, f"{lost} failed or unfinished")
    else:
        add("4 processes: manager (both targets)", None)
    return out


def noise(results: dict[str, Any]) -> list[str]:
    """Signs that other load on the machine skewed this run (it is shared, and has 2 cores)."""
    notes = []
    m = results["machine"]
    busiest = max(m["load_average_at_start"][0], m.get("load_average_at_end", [0.0])[0])
    if busiest > m["cores"]:
        notes.append(f"load average reached {busiest:.1f} on {m['cores']} cores")
    start, end = (r["docs_per_s"] for r in results["ceiling"]["runs"])
    if abs(start - end) > 0.25 * max(start, end):
        notes.append(f"the ceiling moved from {start:,.0f} to {end:,.0f} docs/s during the run")
    return [f"WARNING: {n}: other work competed for the machine; re-run to confirm" for n in notes]


def target_lines(results: dict[str, Any]) -> list[str]:
    """``PASS target: figure`` lines, as printed at the end of a run."""
    return [f"{t['status']} {t['target']}: {t['measured']}" for t in results["targets"]]


# -- Markdown ------------------------------------------------------------------------


def _table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _status(cell: Cell) -> str:
    check = (
        "ok"
        if cell["consistency"]["ok"]
        else "FAILED: " + ", ".join(cell["consistency"]["failed_checks"])
    )
    return ("stalled, " if cell["stalled"] else "") + check


def _latencies(cell: Cell) -> list[Any]:
    return [cell["label"], cell["p50_ms"], cell["p95_ms"], cell["p99_ms"]]


_CELL_HEADERS = [
    "strategy",
    "completions/s",
    "of ceiling",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "attempts/compl.",
    "aborts",
    "failed",
    "unfinished",
    "commits/compl.",
    "consistency",
]


def _cell_row(cell: Cell) -> list[Any]:
    return [
        cell["label"],
        cell["completions_per_s"],
        f"{cell['fraction_of_ceiling']:.1%}",
        cell["p50_ms"],
        cell["p95_ms"],
        cell["p99_ms"],
        cell["attempts_per_completion"],
        cell["aborts"],
        cell["failed"],
        cell["unfinished"],
        cell["commits_per_completion"],
        _status(cell),
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The run as Markdown: facts, targets, one table per scenario, the plots."""
    m, cfg = results["machine"], results["config"]
    batched = _find(results["overhead"], "batched_write")
    base = batched["p50_ms"] if batched else 0.0
    tgts = results["targets"]
    parts = [
        f"# Benchmark run `{results['name']}`",
        f"{results['started_at']} - {results['finished_at']} ({results['duration_s']:.0f} s). "
        f"{m['cores']} cores (load average at start {m['load_average_at_start'][0]:.2f}), "
        f"Python {m['python']}, emulator {m.get('emulator_version', '?')} "
        f"({m.get('java', '?')}), google-cloud-firestore {m['google_cloud_firestore']}, "
        f"async-batchstate {m['async_batchstate']}. Mode DUAL_WRITE.",
        "\n".join(f"**{w}**" for w in results["warnings"]),
        "## Targets",
        "\n".join(f"- **{t['status']}** {t['target']}: {t['measured']}" for t in tgts),
        "## Ceiling",
        f"Raw `WriteBatch`es of 250 completion docs + one batch-doc transform update, "
        f"4 in flight, {cfg['ceiling_docs']} docs: "
        + ", ".join(f"{r['docs_per_s']:,.0f} docs/s" for r in results["ceiling"]["runs"])
        + f" (start, end of the run; the best, {results['ceiling']['docs_per_s']:,.0f}, "
        "is the ceiling). Warm-up bulk rates: "
        + ", ".join(f"{x:,.0f}" for x in results["warmup"]["bulk_docs_per_s"])
        + " docs/s.",
        "## Overhead: sequential, one completion at a time",
        _table(
            ["strategy", "p50 ms", "p95 ms", "p99 ms", "p50 vs batched write", "consistency"],
            [[*_latencies(c), _ratio(c["p50_ms"], base), _status(c)] for c in results["overhead"]],
        ),
        "## Contention: all completions into ONE batch",
    ]
    for concurrency, ops in cfg["sweep"]:
        cells = [c for c in results["sweep"] if c["concurrency"] == concurrency]
        parts.append(f"### {concurrency} concurrent callers, {ops} completions")
        parts.append(_table(_CELL_HEADERS, map(_cell_row, cells)))
    parts.append(
        f"## Processes: {cfg['process_ops']} completions and {cfg['process_concurrency']} "
        "callers per process, one batch"
    )
    parts.append(
        _table(
            ["processes", *_CELL_HEADERS],
            [[c["processes"], *_cell_row(c)] for c in results["multiprocess"]],
        )
    )
    parts.append("## Plots")
    parts += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n\n".join(p for p in parts if p) + "\n"


# -- plots ---------------------------------------------------------------------------


def plot(results: dict[str, Any], out: Path, name: str) -> dict[str, str]:
    """Write the PNGs; returns ``{title: file name}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, files = results["sweep"], {}
    levels = [c for c, _ in results["config"]["sweep"]]
    procs = results["config"]["processes"]

    def lines(ax: Any, key: str) -> None:
        for i, strategy in enumerate(SWEEP):
            cells = [c for c in sweep if c["strategy"] == strategy]
            done = [c for c in cells if c["succeeded"]]
            xs, ys = [c["concurrency"] for c in done], [c[key] for c in done]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=STRATEGIES[strategy].label)
            stalled = [(c["concurrency"], c[key]) for c in done if c["stalled"]]
            if stalled:
                ax.scatter(*zip(*stalled, strict=True), marker="x", s=90, color="red", zorder=3)
            for c in cells:
                if not c["succeeded"]:  # nothing confirmed within the budget: mark at the bottom
                    ax.plot(
                        c["concurrency"],
                        0.03,
                        "x",
                        ms=10,
                        color=f"C{i}",
                        mew=2,
                        transform=ax.get_xaxis_transform(),
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(x) for x in levels])
        ax.set_xlabel("concurrent callers (one batch)")
        ax.grid(True, which="both", alpha=0.3)

    # Throughput: sweep and processes.
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=[3, 2])
    lines(left, "completions_per_s")
    left.axhline(results["ceiling"]["docs_per_s"], ls="--", color="grey", label="ceiling")
    left.set_ylabel("completions/s (log)")
    left.set_title("Throughput into one batch (x: stalled; at the bottom: none confirmed)")
    left.legend(fontsize=8)
    width = 0.8 / max(1, len({c["strategy"] for c in results["multiprocess"]}))
    for i, strategy in enumerate(dict.fromkeys(c["strategy"] for c in results["multiprocess"])):
        cells = [c for c in results["multiprocess"] if c["strategy"] == strategy]
        xs = [procs.index(c["processes"]) + i * width for c in cells]
        right.bar(xs, [c["completions_per_s"] for c in cells], width, label=cells[0]["label"])
    right.set_xticks([i + width / 2 for i in range(len(procs))], [str(p) for p in procs])
    right.set_xlabel("processes (own client each)")
    right.set_ylabel("completions/s")
    right.set_title("Processes into one batch")
    right.legend(fontsize=8)
    fig.tight_layout()
    files["throughput"] = f"{name}-throughput.png"
    fig.savefig(out / files["throughput"], dpi=110)
    plt.close(fig)

    # Latency percentiles.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, q in zip(axes, ("p50", "p95", "p99"), strict=True):
        lines(ax, f"{q}_ms")
        ax.set_title(f"{q} latency per completion")
    axes[0].set_ylabel("ms (log)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    files["latency"] = f"{name}-latency.png"
    fig.savefig(out / files["latency"], dpi=110)
    plt.close(fig)

    # Attempts per completion: share of completions that took 1, 2, ... attempts.
    mp = results["multiprocess"]
    rows = [
        [(f"{n} callers, 1 process", [c for c in sweep if c["concurrency"] == n]) for n in levels],
        [(f"{n} process(es)", [c for c in mp if c["processes"] == n]) for n in procs],
    ]
    cols = max(map(len, rows))
    fig, grid = plt.subplots(2, cols, figsize=(3.3 * cols, 7), sharey=True, squeeze=False)
    placed: list[tuple[Any, str, list[Cell]]] = []
    for axes_row, row in zip(grid, rows, strict=True):
        placed += [(ax, *panel) for ax, panel in zip(axes_row, row, strict=False)]
        for ax in axes_row[len(row) :]:
            ax.set_visible(False)
    buckets = ["1", "2", "3", "4", "5", "6+"]
    width = 0.8 / len(SWEEP)
    for ax, title, cells in placed:
        for cell in cells:
            i = SWEEP.index(cell["strategy"])
            hist = {int(k): v for k, v in cell["attempts_histogram"].items()}
            total = sum(hist.values()) or 1
            shares = [hist.get(n, 0) / total for n in range(1, 6)]
            shares.append(sum(v for k, v in hist.items() if k >= 6) / total)
            xs = [j + i * width for j in range(len(buckets))]
            ax.bar(xs, shares, width, color=f"C{i}", label=cell["label"])
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.5)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(buckets))], buckets)
        ax.set_title(title)
        ax.set_xlabel("attempts")
    for row in grid:
        row[0].set_ylabel("share of confirmed completions (log)")
    grid[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Attempts per confirmed completion (manager: attempts of its group's transaction)")
    fig.tight_layout()
    files["attempts"] = f"{name}-attempts.png"
    fig.savefig(out / files["attempts"], dpi=110)
    plt.close(fig)
    return files


def write(results: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and the PNGs into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    name = results["name"]
    results["targets"] = targets(results)
    results["warnings"] = noise(results)
    pngs = plot(results, out, name) if plots else {}
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["markdown"].write_text(markdown(results, pngs))
    paths.update({title: out / file for title, file in pngs.items()})
    return paths
