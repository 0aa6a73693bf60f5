"""A ``FaultyProxy`` with latency in a process of its own, for the WAN profile.

Every byte the benchmark's clients exchange with the emulator crosses this proxy,
so it runs in its own process: its CPU (copying, timers) is not taken from the
client's event loop, as a real network costs the client nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from async_batchstate.testing import FaultyProxy


async def _serve(target: str, latency: float, jitter: float, conn: Any, stop: Any) -> None:
    async with FaultyProxy(target, latency=latency, jitter=jitter) as proxy:
        conn.send(proxy.host)
        await asyncio.to_thread(stop.wait)


def _main(target: str, latency: float, jitter: float, conn: Any, stop: Any) -> None:
    asyncio.run(_serve(target, latency, jitter, conn, stop))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux ``/proc``), 0.0 if unknown."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


@dataclass
class DelayProxy:
    """Where the proxy listens, and what it cost (filled in when it stops)."""

    host: str
    rtt_ms: float
    jitter_ms: float
    pid: int

    def facts(self) -> dict[str, Any]:
        """What goes into the results' ``network``."""
        return {
            "profile": "wan",
            "rtt_ms": self.rtt_ms,
            "jitter_ms": self.jitter_ms,
            "proxy": "FaultyProxy in its own process, latency = rtt/2 in each direction",
        }

    def cpu_seconds(self) -> float:
        """CPU time the proxy process has used so far."""
        return _cpu_seconds(self.pid)


@contextlib.contextmanager
def delay_proxy(target: str, rtt_ms: float, jitter_ms: float = 0.0) -> Iterator[DelayProxy]:
    """Run a proxy to ``target`` adding ``rtt_ms`` per round trip (half each way)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    stop = ctx.Event()
    latency, jitter = rtt_ms / 2e3, jitter_ms / 2e3
    process = ctx.Process(
        target=_main, args=(target, latency, jitter, theirs, stop), name="delay-proxy", daemon=True
    )
    process.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the delay proxy did not start within 60 s")
        assert process.pid is not None
        yield DelayProxy(ours.recv(), rtt_ms, jitter_ms, process.pid)
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():  # our own child, by its handle
            process.terminate()
            process.join(10)
