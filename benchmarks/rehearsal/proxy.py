"""The delay proxy to Firestore, in its own process, that the driver can cut and black-hole.

``benchmarks._delay`` with a command pipe: ``cut``, ``blackhole`` and ``restore``
are forwarded to the ``FaultyProxy`` (its CPU stays out of the driver's process).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

from async_batchstate.testing import FaultyProxy

from .._delay import _cpu_seconds

COMMANDS = ("cut", "blackhole", "restore")


async def _serve(target: str, latency: float, conn: Any) -> None:
    async with FaultyProxy(target, latency=latency) as proxy:
        conn.send(proxy.host)
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command == "stop":
                return
            await getattr(proxy, command)()
            conn.send(command)


def _main(target: str, latency: float, conn: Any) -> None:
    asyncio.run(_serve(target, latency, conn))


class ControlledProxy:
    """Where the proxy listens, and its remote control."""

    def __init__(self, host: str, conn: Any, pid: int) -> None:
        self.host = host
        self.pid = pid
        self._conn = conn

    async def command(self, what: str) -> None:
        """``cut``, ``blackhole`` or ``restore``, and wait until the proxy did it."""
        assert what in COMMANDS, what
        self._conn.send(what)
        await asyncio.to_thread(self._conn.recv)

    def cpu_seconds(self) -> float:
        """CPU time the proxy process has used so far."""
        return _cpu_seconds(self.pid)


@contextlib.contextmanager
def controlled_proxy(target: str, rtt_ms: float) -> Iterator[ControlledProxy]:
    """Run a proxy to ``target`` adding ``rtt_ms`` per round trip (half each way)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(
        target=_main, args=(target, rtt_ms / 2e3, theirs), name="rehearsal-proxy", daemon=True
    )
    process.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the delay proxy did not start within 60 s")
        assert process.pid is not None
        yield ControlledProxy(ours.recv(), ours, process.pid)
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        process.join(10)
        if process.is_alive():  # our own child, by its handle
            process.terminate()
            process.join(10)
