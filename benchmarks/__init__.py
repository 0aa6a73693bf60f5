"""Benchmarks of async-batchstate against the plain Firestore client, on the local emulator.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` from the
repository root, with ``--rtt-ms 14`` for the WAN profile; see ``benchmarks/README.md``.
"""

from ._report import target_lines, targets, write
from ._run import FULL, QUICK, TINY, Bench, Config, wan

__all__ = [
    "FULL",
    "QUICK",
    "TINY",
    "Bench",
    "Config",
    "target_lines",
    "targets",
    "wan",
    "write",
]
