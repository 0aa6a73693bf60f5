"""One run's files: the summary and raw JSON, the Markdown and the PNG plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._markdown import markdown
from ._plots import plot
from ._targets import targets


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


Results = dict[str, Any]


def write_files(
    results: Results,
    out: Path,
    *,
    summary: Callable[[Results], Results],
    markdown: Callable[[Results, dict[str, str]], str],
    plot: Callable[[Results, Path, str], dict[str, str]] | None,
) -> dict[str, Path]:
    """Write ``<name>.json`` (the ``summary``), ``<name>.raw.json`` (everything, git ignores
    it), ``<name>.md`` and the PNGs of ``plot`` (none when None) into ``out``.

    Returns the paths by kind (``json``, ``raw``, ``markdown``) and by plot title. Both
    the closed-loop and the open-loop report write through here.
    """
    out.mkdir(parents=True, exist_ok=True)
    name = results["name"]
    pngs = plot(results, out, name) if plot else {}
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


def write(results: Results, out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write the run into ``out``; returns the paths by kind.

    ``json``: ``<name>.json``, the summary (every figure, no per-operation arrays);
    ``raw``: ``<name>.raw.json``, everything (git ignores it); ``markdown``: ``<name>.md``;
    and one PNG per plot.
    """
    results["targets"] = targets(results)
    results["warnings"] = noise(results)
    return write_files(
        results, out, summary=summary, markdown=markdown, plot=plot if plots else None
    )
