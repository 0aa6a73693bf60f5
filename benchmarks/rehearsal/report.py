"""The rehearsal's figures: the success criteria per phase, verdicts, JSON, markdown, a plot."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .._load import percentile
from .driver import ACK_DEADLINE, Run
from .plan import PHASES

POISON_ERRORS = (
    "UnexpectedPlayerError",
    "InvalidIdError",
    "InvalidCountError",
    "MessageParseError",
)
KILL_RECOVERY = ACK_DEADLINE + 2.0  # a SIGKILLed consumer's leases run out, then redelivery
OUTAGE_RECOVERY = 2.0
STRANDED_AFTER = ACK_DEADLINE - 1.0
"""A message that no coordinator received for this long after its publish was routed by
the emulator to a closed stream or a gone push endpoint (held there for an ack deadline):
Pub/Sub's delivery, not the fleet's (benchmarks/README.md)."""


def _phases(run: Run, end: float) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` of each migration phase: from the start of its rolling deploy."""
    starts = {e["mode"]: e["t"] for e in run.events if e["action"] == "roll"}
    bounds = [
        (name, 0.0 if i == 0 else starts.get(mode.name)) for i, (name, mode) in enumerate(PHASES)
    ]
    known = [(n, s) for n, s in bounds if s is not None]
    return [
        (n, s, known[i + 1][1] if i + 1 < len(known) else end) for i, (n, s) in enumerate(known)
    ]


def _disruptions(run: Run) -> list[tuple[float, float, str]]:
    """The injected failures' windows: latency there is the failure's, not the library's."""
    out = []
    for e in run.events:
        if e["action"] == "kill":
            out.append((e["t"] - 1.0, e["end"] + KILL_RECOVERY, "kill"))
        elif e["action"] in ("cut", "blackhole", "term"):
            out.append((e["t"] - 1.0, e["end"] + OUTAGE_RECOVERY, e["action"]))
    return out


def _rollout_to_subcollection_only(run: Run) -> tuple[float, float, set[str]]:
    """When the fleet mixed SUBCOLLECTION_ONLY writers with dual ones, and the dual processes.

    During that rolling deploy the dual processes' sampled validation sees the
    legacy array fall behind the subcollection (SUBCOLLECTION_ONLY writers no
    longer write it) and alerts; those alerts are counted apart.
    """
    for e in run.events:
        if e["action"] == "roll" and e["mode"] == "SUBCOLLECTION_ONLY":
            dual = {d["process"] for d in e["detail"] if isinstance(d, dict) and "process" in d}
            return e["t"], e["end"] + 1.0, dual
    return 0.0, -1.0, set()


def _inside(t: float, windows: list[tuple[float, float, str]]) -> bool:
    return any(a <= t <= b for a, b, _ in windows)


def analyse(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    """The criteria per phase and in total, the verdicts, and the timeline's series."""
    cfg, rec, t0 = run.cfg, run.records, run.t0
    checks: dict[str, Any] = result["checks"]
    end = max([cfg.duration] + [e.get("end", e["t"]) for e in run.events])
    phases = _phases(run, end)
    windows = _disruptions(run)
    by_batch = {b.batch_id: b for b in run.plan.batches}
    pending = run.pending()

    def phase_of(t: float) -> str:
        for name, a, b in phases:
            if a <= t < b:
                return name
        return phases[-1][0] if t >= phases[-1][1] else phases[0][0]

    rows: dict[str, dict[str, Any]] = {n: defaultdict(int) for n, _, _ in phases}
    lat: dict[str, list[float]] = defaultdict(list)
    lat_out: dict[str, list[float]] = defaultdict(list)
    lat_fleet: dict[str, list[float]] = defaultdict(list)  # outside outages and stranding
    r2a: dict[str, list[float]] = defaultdict(list)
    lost: list[str] = []
    acked_unwritten: list[str] = []
    unacked: list[str] = []
    first_ack: dict[str, float] = {}
    seen_lost: set[tuple[str, str]] = set()
    for m in run.plan.messages:
        p = phase_of(m.at)
        row = rows[p]
        acks = rec.acks.get(m.key)
        stored = checks.get(m.batch_id, {}).get("stored", {})
        if acks:
            first_ack[m.key] = min(acks) - t0
        if not m.stored:
            row["poison"] += 1
            if m.player and m.player in stored:
                acked_unwritten.append(f"poison {m.key} stored")
            continue
        row["published"] += 1
        written = stored.get(m.player) == m.count
        held = m.player in pending.get(m.batch_id, ())
        if not written and not held and (m.batch_id, m.player) not in seen_lost:
            # Pub/Sub dropped every message of it (one was acknowledged): lost.
            seen_lost.add((m.batch_id, m.player))
            row["lost"] += 1
            lost.append(f"{m.key} {m.batch_id}/{m.player}")
        if acks:
            row["acked"] += 1
            # From the delivery that was acknowledged (the last receipt before the ack).
            ack = min(acks)
            got = [t for t in rec.receipts.get(m.key, ()) if t <= ack]
            if got:
                held = ack - max(got)
                r2a[p].append(held)
                r2a["total"].append(held)
            latency = first_ack[m.key] - m.at
            lat[p].append(latency)
            lat["total"].append(latency)
            if not _inside(m.at, windows):
                lat_out[p].append(latency)
                lat_out["total"].append(latency)
                receipts = rec.receipts.get(m.key)
                if receipts and min(receipts) - t0 - m.at < STRANDED_AFTER:
                    lat_fleet[p].append(latency)
                    lat_fleet["total"].append(latency)
                else:
                    row["stranded"] += 1
            if not written:
                row["acked_unwritten"] += 1
                acked_unwritten.append(f"{m.key} {m.batch_id}/{m.player}")
        else:
            row["unacked"] += 1
            unacked.append(m.key)
    calls: dict[str, list[float]] = defaultdict(list)
    calls_out: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for w in rec.writes:
        t = w.t - t0
        p = phase_of(t)
        kind = w.outcome.removeprefix("error:")
        if w.outcome.startswith("error:") and kind in POISON_ERRORS:
            continue
        rows[p]["calls"] += 1
        if w.outcome.startswith("error:"):
            errors[kind] += 1
            # Not failures: a drain cut it short, or the batch was not created yet
            # (the create was held up by an outage): both are redelivered, by design.
            if kind not in ("CancelledError", "BatchNotFoundError"):
                rows[p]["failures"] += 1
            continue
        calls[p].append(w.seconds)
        calls["total"].append(w.seconds)
        if not _inside(t - w.seconds, windows):
            calls_out[p].append(w.seconds)
            calls_out["total"].append(w.seconds)
    rollout = _rollout_to_subcollection_only(run)
    for t, _, _, process in rec.mismatches:
        if rollout[0] <= t - t0 <= rollout[1] and process in rollout[2]:
            rows[phase_of(t - t0)]["rollout_alerts"] += 1
        else:
            rows[phase_of(t - t0)]["mismatches"] += 1
    for e in run.events:
        if e["action"] in ("verify",):
            rows[phase_of(e["t"])]["mismatches"] += len(e["detail"]["inconsistent"])
    violations: list[str] = []
    callbacks_detail: list[str] = []
    for batch_id, check in checks.items():
        b = by_batch[batch_id]
        row = rows[phase_of(b.created)]
        row["batches"] += 1
        row["expiring"] += b.expires
        violations += check["problems"]
        row["violations"] += len(check["problems"])
        if check.get("pending"):
            row["pending_batches"] += 1
            continue  # not finished yet: a completion is still in Pub/Sub
        runs = rec.callbacks.get(batch_id, [])
        keys = {k for _, k, _, _ in runs}
        kinds = {c for c, _, _, _ in runs}
        want = "E" if b.expires else "C"
        row["callback_runs"] += len(runs)
        if runs:
            row["callbacks_run"] += 1
        once = keys == {check.get("finalization_key")} and kinds == {want}
        if once and check.get("status") == ("expired" if b.expires else "complete"):
            row["finalized_once"] += 1
        else:
            callbacks_detail.append(f"{batch_id}: status {check.get('status')}, runs {runs}")
    table = []
    for name, a, b in [*phases, ("total", 0.0, end)]:
        row = rows[name] if name != "total" else _sum(rows.values())
        acks_in = sum(1 for t in first_ack.values() if a <= t < b)
        table.append(
            {
                "phase": name,
                "from_s": round(a, 1),
                "to_s": round(b, 1),
                **{k: row.get(k, 0) for k in _COUNTS},
                "failure_rate": row.get("failures", 0) / max(1, row.get("calls", 0)),
                "p2a_p50_ms": percentile(lat[name], 50) * 1e3,
                "p2a_p99_ms": percentile(lat[name], 99) * 1e3,
                "p2a_p99_outside_ms": percentile(lat_out[name], 99) * 1e3,
                "p2a_p99_fleet_ms": percentile(lat_fleet[name], 99) * 1e3,
                "receive_to_ack_p50_ms": percentile(r2a[name], 50) * 1e3,
                "receive_to_ack_p99_ms": percentile(r2a[name], 99) * 1e3,
                "completion_p99_ms": percentile(calls[name], 99) * 1e3,
                "completion_p99_outside_ms": percentile(calls_out[name], 99) * 1e3,
                "acks_per_s": acks_in / max(1e-9, b - a),
            }
        )
    total = table[-1]
    finished = total["batches"] - total["pending_batches"]
    settled = result["settled"]
    verdicts = {
        "lost": len(lost),
        "acked_unwritten": len(acked_unwritten),
        "violations": len(violations),
        "mismatches": total["mismatches"],
        "not_finalized_once": finished - total["finalized_once"],
        "callbacks_missing": finished - total["callbacks_run"],
        "create_errors": len(run.create_errors),
    }
    delivery = {
        "unacked_at_end": len(unacked),
        "batches_with_completions_in_pubsub": total["pending_batches"],
    }
    targets = {
        "failure_rate_below_0.1%": total["failure_rate"] < 0.001,
        "p99_outside_outages_below_500ms": total["p2a_p99_outside_ms"] < 500,
        "p99_outside_outages_and_emulator_stranding_below_500ms": total["p2a_p99_fleet_ms"] < 500,
        "receive_to_ack_p99_below_500ms": total["receive_to_ack_p99_ms"] < 500,
        "every_message_acknowledged": not unacked,
    }
    return {
        "table": table,
        "verdicts": verdicts,
        "ok": not any(verdicts.values()),
        "targets": targets,
        "delivery": delivery,
        "errors": dict(errors),
        "examples": {
            "lost": lost[:10],
            "acked_unwritten": acked_unwritten[:10],
            "violations": violations[:20],
            "callbacks": callbacks_detail[:10],
            "unacked": unacked[:10],
            "create_errors": run.create_errors[:10],
            "mismatches": [list(m) for m in rec.mismatches[:10]],
        },
        "disruptions": [{"from": a, "to": b, "what": w} for a, b, w in windows],
        "series": _series(run, first_ack, end),
        "settled": settled,
    }


_COUNTS = (
    "published",
    "acked",
    "unacked",
    "poison",
    "stranded",
    "lost",
    "acked_unwritten",
    "calls",
    "failures",
    "mismatches",
    "rollout_alerts",
    "violations",
    "batches",
    "pending_batches",
    "expiring",
    "finalized_once",
    "callbacks_run",
    "callback_runs",
)


def _sum(rows: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for row in rows:
        for k, v in row.items():
            out[k] += v
    return out


def _series(run: Run, first_ack: dict[str, float], end: float) -> dict[str, list[float]]:
    """Per second: messages published and first acks; per 2 s of publishing: p99 publish-to-ack."""
    n = int(end) + 2
    published = [0.0] * n
    acked = [0.0] * n
    by_bin: dict[int, list[float]] = defaultdict(list)
    for m in run.plan.messages:
        if not m.stored:
            continue
        if 0 <= m.at < n:
            published[int(m.at)] += 1
        if m.key in first_ack:
            t = first_ack[m.key]
            if 0 <= t < n:
                acked[int(t)] += 1
            by_bin[int(m.at) // 2].append(t - m.at)
    p99 = [percentile(by_bin.get(i, []), 99) * 1e3 for i in range(n // 2 + 1)]
    return {"published_per_s": published, "acked_per_s": acked, "p99_ms_per_2s": p99}


# -- output ----------------------------------------------------------------------------


def markdown(run: Run, summary: dict[str, Any], facts: dict[str, Any]) -> str:
    """The results as markdown: verdicts, the criteria per phase, the events."""
    cfg = run.cfg
    v = summary["verdicts"]
    lines = [
        f"# Fleet rehearsal: `{cfg.name}`",
        "",
        f"{cfg.processes} coordinator processes ({cfg.processes - cfg.push} pull, "
        f"{cfg.push} push), "
        f"{cfg.duration:.0f} s of publishing at {cfg.rate:g} messages/s (Poisson), "
        f"{len(run.plan.batches)} batches of {cfg.sizes[0]}-{cfg.sizes[1]} players, "
        f"{cfg.duplicates:.0%} publisher duplicates, {cfg.poison} poison messages, "
        f"Firestore emulator behind a {cfg.rtt_ms:g} ms round-trip proxy. "
        f"Machine: {facts.get('cores')} cores, load {facts.get('load_average_at_start')}.",
        "",
        f"**Verdict: {'PASS' if summary['ok'] else 'FAIL'}** - "
        + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in v.items()),
        "",
        "Targets (informative on a shared machine): "
        + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in summary["targets"].items()),
        "",
        "Sampled-validation alerts raised by dual-mode processes during the rolling "
        f"deploy to SUBCOLLECTION_ONLY (the array they compare is no longer written by "
        f"the new processes; counted apart from mismatches): "
        f"{summary['table'][-1]['rollout_alerts']}.",
        "",
        "Delivery: "
        + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in summary["delivery"].items())
        + f"; the driver sought a subscription back {len(run.seeks)} times to free messages "
        "the Pub/Sub emulator stranded (see the README).",
        "",
        "| phase | s | published | acked | mismatches | failure rate | publish-to-ack p50 / p99 ms "
        "| p99 outside outages ms | stranded by the emulator | p99 outside outages "
        "and stranding ms | receive-to-ack p50 / p99 ms | completion p99 ms "
        "| batches finalized once | callbacks run "
        "| lost | acked unwritten | violations | acks/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        lines.append(
            f"| {r['phase']} | {r['from_s']:g}-{r['to_s']:g} | {r['published']} | {r['acked']} "
            f"| {r['mismatches']} | {r['failure_rate']:.3%} | {r['p2a_p50_ms']:.0f} / "
            f"{r['p2a_p99_ms']:.0f} | {r['p2a_p99_outside_ms']:.0f} "
            f"| {r['stranded']} | {r['p2a_p99_fleet_ms']:.0f} "
            f"| {r['receive_to_ack_p50_ms']:.0f} / {r['receive_to_ack_p99_ms']:.0f} "
            f"| {r['completion_p99_ms']:.0f} "
            f"| {r['finalized_once']}/{r['batches'] - r['pending_batches']} "
            f"({r['expiring']} expiring) "
            f"| {r['callbacks_run']}/{r['batches'] - r['pending_batches']} "
            f"({r['callback_runs']} runs) | {r['lost']} "
            f"| {r['acked_unwritten']} | {r['violations']} | {r['acks_per_s']:.1f} |"
        )
    lines += [
        "",
        "Publish-to-ack runs from a message's scheduled publish time to its first "
        "acknowledgement by a coordinator (after its write); completion is one "
        "`record_completion` call; receive-to-ack runs from the acknowledged delivery "
        "reaching the coordinator (what the library and the adapter add, without "
        'Pub/Sub\'s delivery). "Outside outages" leaves out messages published '
        "from 1 s before an injected failure to its recovery (a SIGKILL: +12 s, the "
        '10 s lease; a cut, black-hole or scale-in: +2 s). "Stranded by the emulator" '
        f"counts messages outside those windows that no coordinator received within "
        f"{STRANDED_AFTER:g} s of their publish: the Pub/Sub emulator keeps routing to "
        "streaming pulls that were closed and to push endpoints that went away (each "
        "rolling deploy leaves one behind), and holds what it sent there for an ack "
        "deadline before it tries again, again possibly to a closed stream; Pub/Sub "
        "itself drops a closed stream. The next column leaves them out too. Phases start with the "
        "rolling deploy to their mode; messages and batches belong to the phase they "
        "were published or created in. Batches with a completion still in Pub/Sub "
        "at the end are checked for consistency only (not counted in finalized "
        "once / callbacks run).",
        "",
        "## Events",
        "",
        "| at s | until s | event | outcome |",
        "|---|---|---|---|",
    ]
    for e in run.events:
        lines.append(
            f"| {e['t']:.1f} | {e.get('end', e['t']):.1f} | {e['action']} {e.get('mode') or ''} "
            f"| {_brief(e)} |"
        )
    ex = {k: x for k, x in summary["examples"].items() if x}
    if ex:
        lines += ["", "## Problems (first few)", "", "```", json.dumps(ex, indent=1), "```"]
    if summary["errors"]:
        lines += ["", f"record_completion errors: {summary['errors']}"]
    return "\n".join(lines) + "\n"


def _brief(e: dict[str, Any]) -> str:
    d = e.get("detail")
    a = e["action"]
    if a in ("roll", "rollback", "forward") and isinstance(d, list):
        return "; ".join(
            f"{x.get('process')} exit {x.get('exit')} in {x.get('seconds', 0):.1f} s"
            + (" (SIGKILL after the grace)" if x.get("killed_after_grace") else "")
            for x in d
        )
    if a in ("kill", "term") and isinstance(d, dict):
        s = d.get("stats") or {}
        killed = ", SIGKILLed after the grace" if d.get("killed_after_grace") else ""
        return f"{d['process']} exit {d['exit']} in {d['seconds']:.1f} s{killed}" + (
            f", in flight at exit {s.get('in_flight')}" if s else ""
        )
    if a == "backfill" and isinstance(d, dict):
        return (
            f"{d['batches']} batches, {d['completions_created']} completion docs created, "
            f"failures {len(d['failures'])}"
        )
    if a == "verify" and isinstance(d, dict):
        return (
            f"{d['checked']} checked, {len(d['inconsistent'])} inconsistent, "
            f"{len(d['failures'])} failures"
        )
    if a == "cleanup" and isinstance(d, dict):
        return (
            f"refused {d['refused']}, cleaned {d['cleaned']}, skipped {len(d['skipped'])}, "
            f"failures {len(d['failures'])}"
        )
    if a == "shutdown" and isinstance(d, list):
        return f"{len(d)} processes drained, exits {[x['exit'] for x in d]}"
    return json.dumps(d)[:120]


def plot(run: Run, summary: dict[str, Any], path: Path) -> None:
    """Throughput and p99 over time, phases shaded, events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary["series"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    xs = list(range(len(s["acked_per_s"])))
    top.plot(xs, s["published_per_s"], lw=0.8, color="0.6", label="published/s")
    top.plot(xs, s["acked_per_s"], lw=1.0, color="C0", label="acknowledged/s")
    top.set_ylabel("messages/s")
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(
        [2 * i + 1 for i in range(len(s["p99_ms_per_2s"]))], s["p99_ms_per_2s"], color="C3", lw=1.0
    )
    bottom.axhline(500, color="C3", ls=":", lw=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("publish-to-ack p99 ms\n(by publish time, 2 s bins)")
    bottom.set_xlabel("seconds")
    for i, r in enumerate(summary["table"][:-1]):
        for ax in (top, bottom):
            ax.axvspan(r["from_s"], r["to_s"], color=f"C{i}", alpha=0.06)
        top.text(r["from_s"] + 0.5, top.get_ylim()[1] * 0.95, r["phase"], fontsize=7, va="top")
    for e in run.events:
        if e["action"] == "shutdown":
            continue
        for ax in (top, bottom):
            ax.axvline(e["t"], color="k", lw=0.6, ls="--")
        bottom.text(
            e["t"], bottom.get_ylim()[0], f" {e['action']}", rotation=90, fontsize=7, va="bottom"
        )
    for seek in run.seeks:
        top.axvline(seek["t"], color="C1", lw=0.4, ls=":")
    fig.suptitle(f"Fleet rehearsal {run.cfg.name}: {'PASS' if summary['ok'] else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
