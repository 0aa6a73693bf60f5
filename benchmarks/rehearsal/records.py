"""The fleet's record files, read incrementally (the driver polls them while the run goes)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Write:
    """One ``record_completion`` call, as the process's event hook saw it."""

    t: float
    batch_id: str
    player: str
    seconds: float
    outcome: str  # "recorded", "duplicate", "late" or "error:<Type>"
    process: str


@dataclass
class Records:
    """Everything the fleet told, merged over its record files."""

    acks: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    receipts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    writes: list[Write] = field(default_factory=list)
    callbacks: dict[str, list[tuple[str, str, float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # batch -> [(kind C/E, finalization key, t, process)]
    mismatches: list[tuple[float, str, str, str]] = field(default_factory=list)
    _offsets: dict[Path, int] = field(default_factory=dict)

    def read(self, paths: list[Path]) -> None:
        """Take in whatever complete lines were appended since the last read."""
        for path in paths:
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = self._offsets.get(path, 0) + end
            process = path.stem
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                self._line(line.split("\t"), process)

    def _line(self, f: list[str], process: str) -> None:
        kind, t = f[0], float(f[1])
        if kind == "A":
            self.acks[f[2]].append(t)
        elif kind == "I":
            self.receipts[f[2]].append(t)
        elif kind == "W":
            self.writes.append(Write(t, f[2], f[3], float(f[4]), f[5], process))
        elif kind in ("C", "E"):
            self.callbacks[f[2]].append((kind, f[3], t, process))
        elif kind == "M":
            self.mismatches.append((t, f[2], f[3], process))
