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


def _lost(cell: Cell) -> int:
    return int(cell["failed"] + cell["unfinished"])


def _rate(cell: Cell) -> str:
    return f"{cell['completions_per_s']:.0f}/s"


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's targets, each PASS, MISS or SKIP (point not in this run) with its figure.

    Local targets are judged on a loopback run, WAN targets on a ``--rtt-ms`` run;
    the other profile's targets are SKIP, so both runs print every line.
    """
    out: list[dict[str, str]] = []
    rtt = float(results.get("network", {}).get("rtt_ms", 0.0))
    local = not rtt

    def add(target: str, ok: bool | None, measured: str = "not measured in this run") -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "MISS"
        out.append({"target": target, "status": status, "measured": measured})

    def skip(target: str, profile: str) -> None:
        add(target, None, f"a {profile} target; this run is {'local' if local else 'WAN'}")

    overhead = results["overhead"]
    manager, batched = _find(overhead, "manager"), _find(overhead, "batched_write")
    blind = _find(overhead, "blind_txn")
    title = "uncontended: manager p50 <= 1.25x one batched write"
    if not local:
        skip(title, "local")
    elif manager and batched:
        r = _ratio(manager["p50_ms"], batched["p50_ms"])
        add(
            title, r <= 1.25, f"{manager['p50_ms']:.2f} ms vs {batched['p50_ms']:.2f} ms = {r:.2f}x"
        )
    else:
        add(title, None)
    wan_title = "WAN 1 caller: manager p50"
    if local:
        skip(f"{wan_title} <= 1.15x one batched write and <= 0.7x (b)", "WAN")
    elif manager and batched and blind:
        r = _ratio(manager["p50_ms"], batched["p50_ms"])
        add(
            f"{wan_title} <= 1.15x one batched write ({rtt:g} ms round trip)",
            r <= 1.15,
            f"{manager['p50_ms']:.1f} ms vs {batched['p50_ms']:.1f} ms = {r:.2f}x",
        )
        r = _ratio(manager["p50_ms"], blind["p50_ms"])
        add(
            f"{wan_title} <= 0.7x (b) ({rtt:g} ms round trip)",
            r <= 0.7,
            f"{manager['p50_ms']:.1f} ms vs {blind['p50_ms']:.1f} ms = {r:.2f}x",
        )
    else:
        add(f"{wan_title} (both targets)", None)

    sweep = results["sweep"]
    d, a, b = (_find(sweep, s, concurrency=200) for s in ("manager", "rmw_txn", "blind_txn"))
    title = "200 callers, one batch: manager"
    if not local:
        skip(f"{title} (all 200-caller targets)", "local")
    elif d and a and b:
        figure = f"{d['failed']} failed, {d['unfinished']} unfinished"
        add(f"{title} zero failures", _lost(d) == 0, figure)
        ra = _ratio(d["completions_per_s"], a["completions_per_s"])
        rb = _ratio(d["completions_per_s"], b["completions_per_s"])
        rate = f"{_rate(d)} vs"
        add(f"{title} >= 10x (a)", ra >= 10, f"{rate} {a['completions_per_s']:.1f}/s = {_x(ra)}")
        add(f"{title} >= 10x (b)", rb >= 10, f"{rate} {_rate(b)} = {_x(rb)}")
        add(f"{title} p99 < 500 ms", d["p99_ms"] < 500, f"p99 {d['p99_ms']:.0f} ms")
        cpc = d["commits_per_completion"]
        add(f"{title} commits/completion <= 0.05", cpc <= 0.05, f"{cpc:.4f}")
    else:
        add(f"{title} (all 200-caller targets)", None)
    d500 = _find(sweep, "manager", concurrency=500)
    title = "500 callers: manager >= 50% of the ceiling"
    if not local:
        skip(title, "local")
    elif d500:
        frac = d500["fraction_of_ceiling"]
        add(
            title,
            frac >= 0.5,
            f"{_rate(d500)} of {results['ceiling']['docs_per_s']:.0f} docs/s = {frac:.0%}",
        )
    else:
        add(title, None)
    mp = results["multiprocess"]
    d4, b4 = _find(mp, "manager", processes=4), _find(mp, "blind_txn", processes=4)
    if not local:
        skip("4 processes: manager (both targets)", "local")
    elif d4 and b4:
        r = _ratio(d4["completions_per_s"], b4["completions_per_s"])
        add("4 processes: manager >= 5x (b)", r >= 5, f"{_rate(d4)} vs {_rate(b4)} = {_x(r)}")
        add(
            "4 processes: manager zero failures",
            _lost(d4) == 0,
            f"{_lost(d4)} failed or unfinished",
        )
    else:
        add("4 processes: manager (both targets)", None)
    _redelivery_targets(results.get("redelivery", []), local, rtt, add, skip)
    _rpc_targets(results.get("rpc_cost", []), add)
    return out


def _redelivery_targets(cells: list[Cell], local: bool, rtt: float, add: Any, skip: Any) -> None:
    """(e) local and (f) WAN; ``add``/``skip`` append to the caller's list."""

    def cell(strategy: str, n: int, c: int, again: bool) -> Cell | None:
        return next(
            (
                x
                for x in cells
                if x["strategy"] == strategy
                and x["processes"] == n
                and x["concurrency"] == c
                and bool(x["redeliver"]) == again
            ),
            None,
        )

    def exact(x: Cell) -> tuple[bool, str]:
        ok = x["consistency"]["ok"]
        return ok, "exact" if ok else "NOT exact: " + ", ".join(x["consistency"]["failed_checks"])

    title = "(e) 4x100, 10% redelivered: manager"
    if not local:
        skip(f"{title} (all four targets)", "local")
    elif (e := cell("manager", 4, 100, True)) and (e0 := cell("manager", 4, 100, False)):
        r = _ratio(e["completions_per_s"], e0["completions_per_s"])
        add(
            f"{title} >= 0.8x without redeliveries",
            r >= 0.8,
            f"{_rate(e)} vs {_rate(e0)} = {r:.2f}x",
        )
        add(f"{title} p99 < 500 ms", e["p99_ms"] < 500, f"p99 {e['p99_ms']:.0f} ms")
        add(f"{title} zero failures", _lost(e) == 0, f"{_lost(e)} failed or unfinished")
        add(f"{title} exact", *exact(e))
    else:
        add(f"{title} (all four targets)", None)
    title = "(f) 8x10, 10% redelivered"
    if local:
        skip(f"{title}, WAN: manager (all four targets)", "WAN")
    elif (f := cell("manager", 8, 10, True)) and (fb := cell("blind_txn", 8, 10, True)):
        title = f"{title}, WAN {rtt:g} ms: manager"
        r = _ratio(f["completions_per_s"], fb["completions_per_s"])
        add(f"{title} >= 4x (b)", r >= 4, f"{_rate(f)} vs {_rate(fb)} = {_x(r)}")
        add(f"{title} p99 < 300 ms", f["p99_ms"] < 300, f"p99 {f['p99_ms']:.0f} ms")
        add(f"{title} zero failures", _lost(f) == 0, f"{_lost(f)} failed or unfinished")
        add(f"{title} exact", *exact(f))
    else:
        add(f"{title}, WAN: manager (all four targets)", None)


def _rpc_targets(cells: list[Cell], add: Any) -> None:
    """One Commit per fresh group; a group with redeliveries at most one read and one commit more.

    In the RPC-cost cells one process writes, so a group meets at most one round of
    conflicts: at most one BatchGetDocuments per group, and at most one Commit more
    than the groups per read. No other RPC (no transaction) on the lock-free path.
    """
    title = "RPCs, manager (lock-free path)"
    mine = [c for c in cells if c["strategy"] == "manager_no_validation"]
    fresh = next((c for c in mine if c["phase"] == "fresh"), None)
    mixed = next((c for c in mine if c["phase"] != "fresh"), None)
    if not (fresh and mixed):
        add(f"{title} (both targets)", None)
        return
    rpcs, groups = fresh["rpcs"], fresh["commits"]
    others = sum(rpcs.values()) - rpcs.get("Commit", 0)
    add(
        f"{title}: a group of fresh completions costs exactly one Commit RPC",
        rpcs.get("Commit", 0) == groups and others == 0,
        f"{groups} groups: {_rpc_text(rpcs)}",
    )
    rpcs, groups = mixed["rpcs"], mixed["commits"]
    reads, commits = rpcs.get("BatchGetDocuments", 0), rpcs.get("Commit", 0)
    others = sum(rpcs.values()) - commits - reads
    add(
        f"{title}: a group with redeliveries costs at most one BatchGetDocuments "
        "and one Commit more",
        reads <= groups and groups <= commits <= groups + reads and others == 0,
        f"{groups} groups, half of the players redelivered: {_rpc_text(rpcs)}",
    )


def _rpc_text(rpcs: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(rpcs.items())) or "no RPCs"


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
    "RPCs/compl.",
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
        cell["rpcs_per_completion"],
        _status(cell),
    ]


def _network(results: dict[str, Any]) -> str:
    net = results.get("network", {})
    if not net.get("rtt_ms"):
        return "Profile **local**: clients talk to the emulator over loopback."
    cpu = net.get("proxy_cpu_s")
    used = f"; it used {cpu:.0f} s of CPU in the run" if cpu is not None else ""
    return (
        f"Profile **WAN**: every client talks to the emulator through a delay proxy in its "
        f"own process adding {net['rtt_ms']:g} ms per round trip ({net['rtt_ms'] / 2:g} ms "
        f"each way, jitter +-{net.get('jitter_ms', 0):g} ms){used}."
    )


def _redelivery_section(results: dict[str, Any]) -> list[str]:
    cfg, cells = results["config"], results.get("redelivery", [])
    parts: list[str] = []
    if not cells:
        return parts
    parts.append("## Redeliveries: processes on one batch, a share of messages delivered twice")
    parts.append(
        f"Message i goes to process i mod N; {cfg['redeliver']:.0%} of the players are "
        "delivered once more to a random process, within about as many messages as there "
        "are callers in flight, so the same player is often in flight in two processes at "
        "once. Every strategy gets the same messages. completions/s counts calls that "
        "returned (duplicates included); *duplicates* is what the manager reported as "
        "already recorded; *exact* means the batch's counters equal its completion "
        "documents (a blind transaction counts a redelivery twice)."
    )
    headers = [
        "strategy",
        "redelivered",
        "messages",
        "completions/s",
        "vs none",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "failed",
        "unfinished",
        "duplicates",
        "RPCs/compl.",
        "RPCs",
        "consistency",
    ]
    for n, c, total in cfg["redelivery"]:
        mine = [x for x in cells if x["processes"] == n and x["concurrency"] == c]
        base = {x["strategy"]: x for x in mine if not x["redeliver"]}
        rows = []
        for x in sorted(mine, key=lambda x: (x["strategy"], x["redeliver"])):
            ref = base.get(x["strategy"])
            vs = _ratio(x["completions_per_s"], ref["completions_per_s"]) if ref else math.nan
            rows.append(
                [
                    x["label"],
                    f"{x['redeliver']:.0%}",
                    x["ops"],
                    x["completions_per_s"],
                    f"{vs:.2f}x",
                    x["p50_ms"],
                    x["p95_ms"],
                    x["p99_ms"],
                    x["failed"],
                    x["unfinished"],
                    x["duplicates"],
                    x["rpcs_per_completion"],
                    _rpc_text(x["rpcs"]),
                    _status(x),
                ]
            )
        parts.append(f"### {n} processes x {c} callers, {total} players")
        parts.append(_table(headers, rows))
    return parts


def _rpc_section(results: dict[str, Any]) -> list[str]:
    cells = results.get("rpc_cost", [])
    if not cells:
        return []
    n = cells[0]["concurrency"]
    headers = [
        "strategy",
        "burst",
        "completions",
        "committed groups",
        "Commit",
        "BatchGetDocuments",
        "BeginTransaction",
        "Rollback",
        "RPCs/compl.",
        "RPCs/group",
        "consistency",
    ]
    rows = [
        [
            c["label"],
            c["phase"],
            c["succeeded"],
            c["commits"],
            c["rpcs"].get("Commit", 0),
            c["rpcs"].get("BatchGetDocuments", 0),
            c["rpcs"].get("BeginTransaction", 0),
            c["rpcs"].get("Rollback", 0),
            c["rpcs_per_completion"],
            sum(c["rpcs"].values()) / c["commits"] if c["commits"] else math.nan,
            _status(c),
        ]
        for c in cells
    ]
    return [
        "## RPCs per group (counted by a gRPC interceptor on each client)",
        f"{n} callers at once record fresh players into a new batch, then {n} more of whom "
        "half redeliver players of the first burst; no background validation, so every "
        "RPC is the write path's own. The plain strategies write once per call; a "
        "redelivered completion makes them count twice (not exact).",
        _table(headers, rows),
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The run as Markdown: facts, targets, one table per scenario, the plots."""
    m, cfg = results["machine"], results["config"]
    batched = _find(results["overhead"], "batched_write")
    base = batched["p50_ms"] if batched else 0.0
    b = _find(results["overhead"], "blind_txn")
    blind = b["p50_ms"] if b else 0.0
    tgts = results["targets"]
    parts = [
        f"# Benchmark run `{results['name']}`",
        f"{results['started_at']} - {results['finished_at']} ({results['duration_s']:.0f} s). "
        f"{m['cores']} cores (load average at start {m['load_average_at_start'][0]:.2f}), "
        f"Python {m['python']}, emulator {m.get('emulator_version', '?')} "
        f"({m.get('java', '?')}), google-cloud-firestore {m['google_cloud_firestore']}, "
        f"async-batchstate {m['async_batchstate']}. Mode DUAL_WRITE.",
        _network(results)
        + (
            ""
            if results.get("write_path_option")
            else " This manager has no `write_path` option: every manager row is the"
            " transactional write path."
        ),
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
            [
                "strategy",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p50 vs batched write",
                "p50 vs (b)",
                "RPCs/compl.",
                "consistency",
            ],
            [
                [
                    *_latencies(c),
                    _ratio(c["p50_ms"], base),
                    _ratio(c["p50_ms"], blind),
                    c["rpcs_per_completion"],
                    _status(c),
                ]
                for c in results["overhead"]
            ],
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
    parts += _redelivery_section(results)
    parts += _rpc_section(results)
    parts.append("## Plots")
    parts += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n\n".join(p for p in parts if p) + "\n"


# -- plots ---------------------------------------------------------------------------


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


SCENARIOS = ("overhead", "sweep", "multiprocess", "redelivery", "rpc_cost")
RAW_ONLY = ("latencies_ms",)
"""Per-operation arrays: in ``<name>.raw.json`` only (not committed), never in the summary."""


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The results without per-operation arrays: what is committed as ``<name>.json``."""
    out = dict(results)
    for scenario in SCENARIOS:
        if scenario in out:
            out[scenario] = [
                {k: v for k, v in cell.items() if k not in RAW_ONLY} for cell in out[scenario]
            ]
    return out


def write(results: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write the run into ``out``; returns the paths by kind.

    ``json``: ``<name>.json``, the summary (every figure, no per-operation arrays);
    ``raw``: ``<name>.raw.json``, everything (git ignores it); ``markdown``: ``<name>.md``;
    and one PNG per plot.
    """
    out.mkdir(parents=True, exist_ok=True)
    name = results["name"]
    results["targets"] = targets(results)
    results["warnings"] = noise(results)
    pngs = plot(results, out, name) if plots else {}
    paths = {
        "json": out / f"{name}.json",
        "raw": out / f"{name}.raw.json",
        "markdown": out / f"{name}.md",
    }
    paths["json"].write_text(json.dumps(summary(results), indent=1) + "\n")
    paths["raw"].write_text(json.dumps(results) + "\n")
    paths["markdown"].write_text(markdown(results, pngs))
    paths.update({title: out / file for title, file in pngs.items()})
    return paths
