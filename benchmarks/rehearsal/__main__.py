"""``python -m benchmarks.rehearsal [--quick] [--duration S] ...``: run it, write the results."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .._run import machine_facts
from .driver import rehearse
from .plan import FULL, QUICK, Config
from .report import analyse, markdown, plot

RESULTS = Path(__file__).resolve().parents[1] / "results"


def config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The run's sizes from the command line (``--quick`` starts from the small ones)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rehearsal", description=__doc__)
    p.add_argument("--quick", action="store_true", help="about a minute, small (CI smoke)")
    p.add_argument("--duration", type=float, help="seconds of publishing; the schedule scales")
    p.add_argument("--rate", type=float, help="messages/s offered (first deliveries)")
    p.add_argument("--processes", type=int, help="coordinator processes")
    p.add_argument("--push", type=int, help="of which push endpoints (the rest pull)")
    p.add_argument("--push-rate", type=float, help="messages/s routed to each push slot")
    p.add_argument("--rtt-ms", type=float, help="round trip added to Firestore (default 14)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--firestore-emulator", metavar="HOST:PORT", help="use this emulator")
    p.add_argument("--pubsub-emulator", metavar="HOST:PORT", help="use this emulator")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' record files")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    changes = {
        k: v
        for k, v in {
            "duration": args.duration,
            "rate": args.rate,
            "processes": args.processes,
            "push": args.push,
            "push_rate": args.push_rate,
            "rtt_ms": args.rtt_ms,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **changes)
    if not 1 <= cfg.processes or not 0 <= cfg.push <= cfg.processes or cfg.duration < 30:
        p.error("need processes >= 1, 0 <= push <= processes and duration >= 30")
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = config(argv)
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    facts = machine_facts()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    run, result = asyncio.run(
        rehearse(
            cfg,
            run_dir,
            say,
            firestore_host=args.firestore_emulator,
            pubsub_host=args.pubsub_emulator,
        )
    )
    summary = analyse(run, result)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "machine": facts,
        "wall_s": time.monotonic() - started,
        "ok": summary["ok"],
        "verdicts": summary["verdicts"],
        "targets": summary["targets"],
        "delivery": summary["delivery"],
        "table": summary["table"],
        "errors": summary["errors"],
        "examples": summary["examples"],
        "disruptions": summary["disruptions"],
        "settled": summary["settled"],
        "events": run.events,
        "seeks": run.seeks,
        "processes": result["processes"],
        "cpu": result["cpu"],
        "samples": run.samples,
        "series": summary["series"],
        "batches": len(run.plan.batches),
        "messages": len(run.plan.messages),
    }
    (args.out / f"{cfg.name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (args.out / f"{cfg.name}.md").write_text(markdown(run, summary, facts))
    plot(run, summary, args.out / f"{cfg.name}.png")
    for row in summary["table"]:
        say(
            f"{row['phase']:>20}: p2a p50/p99 {row['p2a_p50_ms']:.0f}/{row['p2a_p99_ms']:.0f} ms "
            f"(outside outages {row['p2a_p99_outside_ms']:.0f}, and emulator stranding "
            f"{row['p2a_p99_fleet_ms']:.0f}; {row['stranded']} stranded), receive-to-ack p50/p99 "
            f"{row['receive_to_ack_p50_ms']:.0f}/{row['receive_to_ack_p99_ms']:.0f} ms, "
            f"completion p99 {row['completion_p99_ms']:.0f} ms, "
            f"failures {row['failure_rate']:.3%}, lost {row['lost']}"
        )
    say(f"delivery: {summary['delivery']}")
    say(f"verdicts: {summary['verdicts']} -> {'PASS' if summary['ok'] else 'FAIL'}")
    say(f"results: {args.out / cfg.name}.{{json,md,png}}")
    if args.keep_logs or not summary["ok"]:
        say(f"record files kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
