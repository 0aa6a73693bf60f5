"""The closed-loop run as Markdown: facts, targets, one table per scenario, the plots."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ._targets import Cell, find, ratio, rpc_text


def table(headers: list[str], rows: Iterable[list[Any]]) -> str:
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


def network(results: dict[str, Any]) -> str:
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
            vs = ratio(x["completions_per_s"], ref["completions_per_s"]) if ref else math.nan
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
                    rpc_text(x["rpcs"]),
                    _status(x),
                ]
            )
        parts.append(f"### {n} processes x {c} callers, {total} players")
        parts.append(table(headers, rows))
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
        table(headers, rows),
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The run as Markdown: facts, targets, one table per scenario, the plots."""
    m, cfg = results["machine"], results["config"]
    batched = find(results["overhead"], strategy="batched_write")
    base = batched["p50_ms"] if batched else 0.0
    b = find(results["overhead"], strategy="blind_txn")
    blind = b["p50_ms"] if b else 0.0
    tgts = results["targets"]
    parts = [
        f"# Benchmark run `{results['name']}`",
        f"{results['started_at']} - {results['finished_at']} ({results['duration_s']:.0f} s). "
        f"{m['cores']} cores (load average at start {m['load_average_at_start'][0]:.2f}), "
        f"Python {m['python']}, emulator {m.get('emulator_version', '?')} "
        f"({m.get('java', '?')}), google-cloud-firestore {m['google_cloud_firestore']}, "
        f"async-batchstate {m['async_batchstate']}. Mode DUAL_WRITE.",
        network(results)
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
        table(
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
                    ratio(c["p50_ms"], base),
                    ratio(c["p50_ms"], blind),
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
        parts.append(table(_CELL_HEADERS, map(_cell_row, cells)))
    parts.append(
        f"## Processes: {cfg['process_ops']} completions and {cfg['process_concurrency']} "
        "callers per process, one batch"
    )
    parts.append(
        table(
            ["processes", *_CELL_HEADERS],
            [[c["processes"], *_cell_row(c)] for c in results["multiprocess"]],
        )
    )
    parts += _redelivery_section(results)
    parts += _rpc_section(results)
    parts.append("## Plots")
    parts += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n\n".join(p for p in parts if p) + "\n"
