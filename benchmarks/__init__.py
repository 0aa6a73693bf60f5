"""Benchmarks of async-batchstate against the plain Firestore client, on the local emulator.

Run ``python -m benchmarks`` (full, under 20 minutes) or ``python -m benchmarks --quick``
(under 2 minutes) from the repository root; see ``benchmarks/README.md``.
"""

from ._report import target_lines, targets, write
from ._run import FULL, QUICK, TINY, Bench, Config

__all__ = ["FULL", "QUICK", "TINY", "Bench", "Config", "target_lines", "targets", "write"]
