"""Benchmarks of async-batchstate against the plain Firestore client, on the local emulator.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` from the
repository root, with ``--rtt-ms 14`` for the WAN profile, ``--open-loop`` for capacity at
SLO; see ``benchmarks/README.md``.
"""

from ._open import OPEN_FULL, OPEN_QUICK, OpenBench, OpenConfig, open_wan
from ._open_report import write_open
from ._report import write
from ._run import FULL, QUICK, TINY, Bench, Config, wan
from ._targets import target_lines, targets

__all__ = [
    "FULL",
    "OPEN_FULL",
    "OPEN_QUICK",
    "QUICK",
    "TINY",
    "Bench",
    "Config",
    "OpenBench",
    "OpenConfig",
    "open_wan",
    "target_lines",
    "targets",
    "wan",
    "write",
    "write_open",
]
