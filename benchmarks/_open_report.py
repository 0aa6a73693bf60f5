"""The open-loop run's targets, Markdown, p99 plots and files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._markdown import network, table
from ._open_sweep import BATCHES, CEILING, FIRST, HOT, NOT_REACHED
from ._report import write_files
from ._targets import Group, Line, Target, find, line, ratio

_CAPACITY_FIGURE = (
    "{a[capacity][per_s]:g}/s ({a[capacity][limit]}) vs "
    "{b[capacity][per_s]:g}/s ({b[capacity][limit]}) = {value:.2f}x"
)
CAPACITY: tuple[Group, ...] = tuple(
    Group(
        "sweeps",
        {"a": {"strategy": "manager", **where}, "b": {"strategy": "blind_txn", **where}},
        (Target(title, "a", "capacity", ">=", factor, _CAPACITY_FIGURE, versus="b"),),
        skip=title,
    )
    for title, factor, where in (
        (
            "open loop, one hot batch, W = 4: manager capacity at SLO >= 1.5x the old fix, exact",
            1.5,
            {"group": HOT, "processes": 4},
        ),
        (
            "open loop, 200 batches, W = 4: manager capacity at SLO >= 1.5x the old fix, exact",
            1.5,
            {"group": BATCHES, "processes": 4, "batches": 200},
        ),
        (
            "ceiling 100 writes/s per document, hot batch: manager capacity >= 5x the old fix",
            5.0,
            {"group": CEILING, "ceiling_writes_per_s": 100.0},
        ),
    )
)
"""Issue 18's capacity targets: the manager's capacity at SLO against the old fix's."""


def _capacity(group: Group, results: dict[str, Any]) -> Line:
    """A capacity target; the manager must also be exact, and a sweep that never missed
    gives a lower bound only: judge what it allows."""
    cells = group.find(results)
    if cells is None:
        return line(group.skip, None)
    (target,) = group.targets
    value = target.value(cells)
    title, measured = target.text(value, cells)
    manager, old = cells["a"]["capacity"], cells["b"]["capacity"]
    ok: bool | None = target.met(value) and manager["exact"]
    measured += "" if manager["exact"] else "; the manager was NOT exact"
    if old["limit"] == NOT_REACHED or (manager["limit"] == NOT_REACHED and not ok):
        ok, measured = None, f"{measured}; a sweep did not reach its limit"
    return line(title, ok, measured)


def _lowest_common_step(
    a: dict[str, Any], b: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The two sweeps' steps at the lowest offered rate both ran (where groups are smallest)."""
    rates = {s["offered_per_s"] for s in a["steps"]} & {s["offered_per_s"] for s in b["steps"]}
    if not rates:
        return None
    rate = min(rates)
    return (
        next(s for s in a["steps"] if s["offered_per_s"] == rate),
        next(s for s in b["steps"] if s["offered_per_s"] == rate),
    )


def _client_cpu(results: dict[str, Any]) -> Line:
    title = "groups of one: manager client CPU per message <= 0.6x the old fix's"
    where = {"group": BATCHES, "processes": 4}
    manager = find(results["sweeps"], strategy="manager", **where)
    old = find(results["sweeps"], strategy="blind_txn", **where)
    steps = _lowest_common_step(manager, old) if manager and old else None
    if steps is None:
        return line(title, None)
    m, o = steps
    mine, theirs = m["client_cpu_ms_per_message"], o["client_cpu_ms_per_message"]
    r = ratio(mine, theirs)
    return line(
        title,
        r <= 0.6,
        f"200 batches, W = 4, {m['offered_per_s']:g}/s: {mine:.2f} vs {theirs:.2f} ms = "
        f"{r:.2f}x (mean group {m['mean_group_size']:.2f})",
    )


def _first_touch(results: dict[str, Any]) -> Line:
    """p50 where most messages are a process's first of their batch, against the same
    batches already read, at the lowest rate both ran."""
    title = "first touch: manager p50 on fresh batches <= 1.3x on batches already read"
    where = {"strategy": "manager", "processes": 4}
    first = find(results["sweeps"], group=FIRST, **where)
    warm = find(results["sweeps"], group=BATCHES, **where)
    steps = _lowest_common_step(first, warm) if first and warm else None
    if steps is None:
        return line(title, None)
    f, w = steps
    r = ratio(f["p50_ms"], w["p50_ms"])
    return line(
        title,
        r <= 1.3,
        f"200 batches, W = 4, {f['offered_per_s']:g}/s: p50 {f['p50_ms']:.1f} vs "
        f"{w['p50_ms']:.1f} ms = {r:.2f}x (RPCs per message {f['rpcs_per_message']:.2f} "
        f"vs {w['rpcs_per_message']:.2f})",
    )


def _validation_reads(results: dict[str, Any]) -> Line:
    """The average over every manager step, weighted by completions: a step's own figure
    also carries the one check of the batch that finished in it, which on a step of a
    few dozen completions (a 20 writes/s ceiling) is most of it."""
    title = "manager: document reads per completion spent on validation <= 0.05 (average)"
    steps = [
        s
        for sweep in results["sweeps"]
        if sweep["strategy"] == "manager"
        for s in sweep["steps"]
        if s["validation_reads_per_completion"] is not None and s["completions"]
    ]
    if not steps:
        return line(title, None, "this manager's stats() has no validation_reads")
    completions = sum(s["completions"] for s in steps)
    reads = sum(s["validation_reads_per_completion"] * s["completions"] for s in steps)
    most = max(steps, key=lambda s: s["validation_reads_per_completion"])
    return line(
        title,
        reads / completions <= 0.05,
        f"{reads / completions:.3f} over {len(steps)} steps ({completions} completions); "
        f"the most in one step {most['validation_reads_per_completion']:.3f} "
        f"({most['completions']} completions)",
    )


def open_targets(results: dict[str, Any]) -> list[Line]:
    """Issue 18's open-loop targets, each PASS, MISS or SKIP (not in this run), with figures."""
    return [
        *(_capacity(group, results) for group in CAPACITY),
        _client_cpu(results),
        _first_touch(results),
        _validation_reads(results),
    ]


def groups(results: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The sweeps by cell, in run order: ``(cell key, its sweeps)``."""
    by: dict[str, list[dict[str, Any]]] = {}
    for sweep in results["sweeps"]:
        by.setdefault(sweep["cell"], []).append(sweep)
    yield from by.items()


def cell_title(sweep: dict[str, Any]) -> str:
    """A cell in words: shape, processes, ceiling."""
    shape = "one hot batch" if sweep["batches"] == 1 else f"{sweep['batches']} batches"
    if sweep.get("group") == FIRST:
        shape = f"{sweep['batches']} fresh batches (first touches)"
    if sweep["ceiling_writes_per_s"]:
        shape += f", ceiling {sweep['ceiling_writes_per_s']:g} writes/s per document"
    return f"{shape}, W = {sweep['processes']}"


def _num(value: Any, digits: int = 2) -> Any:
    return "-" if value is None else round(value, digits) if isinstance(value, float) else value


_STEP_HEADERS = [
    "strategy",
    "offered/s",
    "completions/s",
    "messages",
    "p50 ms",
    "p99 ms",
    "max ms",
    "failed",
    "unfinished",
    "exact",
    "client CPU ms/msg",
    "emulator CPU ms/msg",
    "RPCs/msg",
    "mean group",
    "validation reads/compl.",
    "dispatch lag p99 ms",
    "ceiling aborts",
    "ceiling proxy CPU ms/msg",
    "verdict",
]


def _verdict(step: dict[str, Any]) -> str:
    if step["ok"]:
        return "meets SLO" + (" (arrivals behind schedule)" if step["cpu_bound"] else "")
    return ("CPU-bound: " if step["cpu_bound"] else "") + ", ".join(step["misses"])


def _step_row(step: dict[str, Any]) -> list[Any]:
    return [
        step["label"],
        step["offered_per_s"],
        step["completions_per_s"],
        step["messages"],
        step["p50_ms"],
        step["p99_ms"],
        step["max_ms"],
        step["failed"],
        step["unfinished"],
        "yes" if step["exact"] else "NO: " + ", ".join(step["consistency"]["failed_checks"]),
        _num(step["client_cpu_ms_per_message"]),
        _num(step["emulator_cpu_ms_per_message"]),
        _num(step["rpcs_per_message"]),
        _num(step["mean_group_size"]),
        _num(step["validation_reads_per_completion"], 3),
        _num(step["dispatch_lag_p99_ms"], 1),
        _num(step["ceiling_aborts"]),
        _num(step.get("ceiling_proxy_cpu_ms_per_message")),
        _verdict(step),
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The open-loop run: targets, capacity at SLO, every step, the plots."""
    m, cfg = results["machine"], results["config"]
    parts = [
        f"# Open-loop benchmark run `{results['name']}`",
        f"{results['started_at']} - {results['finished_at']} ({results['duration_s']:.0f} s). "
        f"{m['cores']} cores (load average {m['load_average_at_start'][0]:.2f} at start, "
        f"{m['load_average_at_end'][0]:.2f} at end), Python {m['python']}, emulator "
        f"{m.get('emulator_version', '?')}, google-cloud-firestore "
        f"{m['google_cloud_firestore']}, async-batchstate {m['async_batchstate']}. Mode "
        "DUAL_WRITE.",
        network(results),
        f"Poisson arrivals per process, {cfg['step_s']:g} s per step, "
        f"{cfg['redeliver']:.0%} of the messages delivered again to another process "
        f"{cfg['redeliver_delay'][0] * 1e3:g}-{cfg['redeliver_delay'][1] * 1e3:g} ms later; "
        "latency from the scheduled arrival. SLO: p99 < "
        f"{cfg['slo_p99_ms']:g} ms, failed + unfinished < {cfg['slo_failures']:.1%}, exact "
        "(the old fix counts every redelivery twice: reported, not held against it). A step "
        f"whose dispatch lag p99 exceeds {cfg['lag_limit_ms']:g} ms is CPU-bound: the "
        "machine's limit, not the library's. Ceiling cells run through WriteCeilingProxy "
        f"(max_wait {cfg['ceiling_max_wait']:g} s): a MODEL of a per-document write limit, "
        "not a measurement of Firestore.",
        "\n".join(f"**{w}**" for w in results.get("warnings", [])),
        "## Targets",
        "\n".join(
            f"- **{t['status']}** {t['target']}: {t['measured']}" for t in results["targets"]
        ),
        "## Capacity at SLO",
        table(
            [
                "cell",
                "strategy",
                "capacity msgs/s",
                "stopped by",
                "exact",
                "p99 ms",
                "client CPU ms/msg",
                "emulator CPU ms/msg",
                "RPCs/msg",
                "mean group",
                "validation reads/compl.",
            ],
            [
                [
                    cell_title(s),
                    s["label"],
                    s["capacity"]["per_s"],
                    s["capacity"]["limit"]
                    + (
                        f" at {s['capacity']['missed_at_per_s']:g}/s"
                        if s["capacity"]["missed_at_per_s"]
                        else ""
                    ),
                    "yes" if s["capacity"]["exact"] else "NO",
                    _num(s["capacity"]["at"].get("p99_ms")),
                    _num(s["capacity"]["at"].get("client_cpu_ms_per_message")),
                    _num(s["capacity"]["at"].get("emulator_cpu_ms_per_message")),
                    _num(s["capacity"]["at"].get("rpcs_per_message")),
                    _num(s["capacity"]["at"].get("mean_group_size")),
                    _num(s["capacity"]["at"].get("validation_reads_per_completion"), 3),
                ]
                for s in results["sweeps"]
            ],
        ),
        "## Steps",
    ]
    for _, sweeps in groups(results):
        parts.append(f"### {cell_title(sweeps[0])}")
        parts.append(table(_STEP_HEADERS, [_step_row(st) for s in sweeps for st in s["steps"]]))
    parts.append("## Plots")
    parts += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n\n".join(p for p in parts if p) + "\n"


def plot(results: dict[str, Any], out: Path, name: str) -> dict[str, str]:
    """One PNG per cell: p99 against offered rate, a line per strategy; returns titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo = results["config"]["slo_p99_ms"]
    files = {}
    for key, sweeps in groups(results):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, sweep in enumerate(sweeps):
            steps = sweep["steps"]
            xs = [s["offered_per_s"] for s in steps]
            ax.plot(xs, [max(s["p99_ms"], 0.1) for s in steps], color=f"C{i}", label=sweep["label"])
            for s in steps:
                marker = "o" if s["ok"] else "^" if s["cpu_bound"] else "x"
                ax.plot(s["offered_per_s"], max(s["p99_ms"], 0.1), marker, color=f"C{i}", ms=7)
        ax.axhline(slo, ls="--", color="grey", label=f"SLO p99 {slo:g} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered messages/s (all processes)")
        ax.set_ylabel("p99 ms from scheduled arrival (log)")
        ax.set_title(f"{cell_title(sweeps[0])}\n(o meets SLO, x misses, ^ CPU-bound)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        files[key] = f"{name}-p99-{key}.png"
        fig.savefig(out / files[key], dpi=110)
        plt.close(fig)
    return files


def _warnings(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    busiest = max(m["load_average_at_start"][0], m["load_average_at_end"][0])
    if busiest <= m["cores"]:
        return []
    return [
        f"WARNING: load average reached {busiest:.1f} on {m['cores']} cores: other work "
        "competed for the machine; re-run to confirm"
    ]


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The results without per-message latencies (what is committed as ``<name>.json``)."""
    out = dict(results)
    out["sweeps"] = [
        {**s, "steps": [{k: v for k, v in st.items() if k != "latencies_ms"} for st in s["steps"]]}
        for s in results["sweeps"]
    ]
    return out


def write_open(results: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``<name>.json`` (summary), ``<name>.raw.json``, ``<name>.md`` and the PNGs."""
    results["targets"] = open_targets(results)
    results["warnings"] = _warnings(results)
    return write_files(
        results, out, summary=summary, markdown=markdown, plot=plot if plots else None
    )
