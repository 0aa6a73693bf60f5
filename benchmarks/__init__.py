"""Benchmarks of async-batchstate against the plain Firestore client, on the local emulator.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` from the
repository root, with ``--rtt-ms 14`` for the WAN profile, ``--open-loop`` for capacity at
SLO; see ``benchmarks/README.md``.
"""

from ._config import FULL, QUICK, TINY, Config, wan
from ._open import OpenBench
from ._open_report import write_open
from ._open_sweep import OPEN_FULL, OPEN_QUICK, OpenConfig, open_wan
from ._report import write
from ._run import Bench
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
