"""The closed-loop run's PNG plots: throughput, latency, attempts and redeliveries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._strategies import STRATEGIES, SWEEP
from ._targets import Cell


def plot(results: dict[str, Any], out: Path, name: str) -> dict[str, str]:
    """Write the PNGs; returns ``{title: file name}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

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
    fig.suptitle("Attempts per confirmed completion (manager: attempts of its group's write)")
    fig.tight_layout()
    files["attempts"] = f"{name}-attempts.png"
    fig.savefig(out / files["attempts"], dpi=110)
    plt.close(fig)

    # Redeliveries: throughput and p99 per strategy, without and with; hatched = not exact.
    cells = results.get("redelivery", [])
    shapes = list(dict.fromkeys((c["processes"], c["concurrency"]) for c in cells))
    if shapes:
        fig, grid = plt.subplots(2, len(shapes), figsize=(6 * len(shapes), 8), squeeze=False)
        for col, (n, c) in enumerate(shapes):
            mine = [x for x in cells if x["processes"] == n and x["concurrency"] == c]
            strategies = list(dict.fromkeys(x["strategy"] for x in mine))
            rates = sorted({x["redeliver"] for x in mine})
            width = 0.8 / len(rates)
            for line, (key, unit) in enumerate((("completions_per_s", "/s"), ("p99_ms", "ms"))):
                ax = grid[line][col]
                for j, rate in enumerate(rates):
                    for i, strategy in enumerate(strategies):
                        x = next(
                            (
                                y
                                for y in mine
                                if y["strategy"] == strategy and y["redeliver"] == rate
                            ),
                            None,
                        )
                        if x is None:
                            continue
                        ax.bar(
                            i + j * width,
                            x[key],
                            width,
                            color=f"C{j}",
                            hatch="" if x["consistency"]["ok"] else "//",
                            edgecolor="black",
                        )
                ax.set_xticks(
                    [i + 0.4 - width / 2 for i in range(len(strategies))],
                    [STRATEGIES[k].label for k in strategies],
                    fontsize=7,
                    rotation=10,
                )
                ax.set_yscale("log")
                ax.set_ylabel(f"{'completions' if unit == '/s' else 'p99'} ({unit}, log)")
                ax.set_title(
                    f"{n} processes x {c} callers" + (" (hatched: NOT exact)" * (line == 0))
                )
                handles = [
                    Patch(facecolor=f"C{j}", edgecolor="black", label=f"{rate:.0%} redelivered")
                    for j, rate in enumerate(rates)
                ]
                ax.legend(handles=handles, fontsize=8)
        fig.tight_layout()
        files["redelivery"] = f"{name}-redelivery.png"
        fig.savefig(out / files["redelivery"], dpi=110)
        plt.close(fig)
    return files
