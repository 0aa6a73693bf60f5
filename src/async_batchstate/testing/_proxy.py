"""A loopback TCP proxy that tests can cut, black-hole and restore.

Put it between a client and the Firestore emulator to simulate the network
faults a Cloud Run coordinator meets::

    async with FaultyProxy(emulator.host) as proxy:
        client = make_client(EmulatorInfo(proxy.host, project, None))
        ...
        await proxy.cut()        # reset every connection, refuse new ones
        await proxy.restore()

Three faults:

* ``reset()`` resets every open connection once (TCP RST to both sides);
  new connections work at once (a router flap).
* ``cut()`` resets every connection and keeps resetting new ones until
  ``restore()`` (the peer is unreachable).
* ``blackhole()`` keeps every connection open and accepts new ones, but
  forwards nothing in either direction until ``restore()`` (packets dropped,
  nothing answers: the case that only timeouts detect). Bytes sent meanwhile
  are delivered after ``restore()``, as TCP would after a partition heals.

And one condition, for every connection, fixed at construction: ``latency=``
seconds (``+- jitter=``) added to every chunk in EACH direction, as a Toxiproxy
latency toxic on both the upstream and the downstream stream. A request and its
answer each cross the proxy once, so one round trip gains ``2 * latency``::

    async with FaultyProxy(emulator.host, latency=0.007) as proxy:   # 14 ms round trip
        ...

Delay keeps the byte order of a connection and does not limit its throughput: a
chunk read at ``t`` is written at ``t + delay`` (never before the chunk read
before it), while later chunks keep being read meanwhile, as on a long link.

Every connection is a pair of pump tasks owned by the proxy; ``aclose()``
ends them all. It only ever listens on a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import socket
import struct
from types import TracebackType
from typing import Self

from .._errors import ConfigurationError, ManagerClosedError

__all__ = ["FaultyProxy", "ProxyState"]

logger = logging.getLogger("async_batchstate.testing.proxy")

_CHUNK = 64 * 1024
_DELAYED_CHUNKS = 256
"""Chunks held per direction by a delaying pump before it stops reading (backpressure)."""


class ProxyState(enum.Enum):
    """What the proxy does with traffic now."""

    FORWARDING = "forwarding"
    CUT = "cut"
    BLACKHOLE = "blackhole"


def _split_host(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
        raise ConfigurationError(f"expected 'host:port', got {host!r}")
    return name.strip("[]"), int(port)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One client connection and its upstream twin."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        for task in self.tasks:
            task.cancel()


class FaultyProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; cut, black-hole or restore on demand.

    Args:
        target: ``host:port`` to forward to (e.g. ``FirestoreEmulator.host``).
        latency: Seconds added to every chunk in each direction (one way), so a
            request and its answer gain ``2 * latency``. 0 (default) forwards at once.
        jitter: Each chunk's delay is ``latency`` plus a uniform draw from
            ``[-jitter, +jitter]`` (never below 0); byte order is kept whatever the draw.
        listen_host: Loopback address to listen on.
        port: Port to listen on; 0 (default) picks a free one.
        rng: Random source of the jitter (seed it for reproducible delays).

    Raises:
        ConfigurationError: A negative or non-finite ``latency`` or ``jitter``, a
            malformed ``target``, or a ``listen_host`` that is not loopback.

    Attributes:
        connections_total: Connections accepted since start.
        resets: Connections this proxy reset.
    """

    def __init__(
        self,
        target: str,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if listen_host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigurationError("FaultyProxy listens on loopback only")
        for name, value in (("latency", latency), ("jitter", jitter)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds >= 0, got {value!r}"
                )
        self.latency = float(latency)
        self.jitter = float(jitter)
        self._rng = rng or random.Random()
        self._target = _split_host(target)
        self._listen_host = listen_host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.state = ProxyState.FORWARDING
        self.connections_total = 0
        self.resets = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        """Start listening; returns self."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, self._listen_host, self._port, reuse_address=True
            )
            self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        """Stop listening and end every connection (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        tasks = [t for c in self._connections for t in c.tasks]
        for connection in list(self._connections):
            connection.reset()
        self._connections.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def host(self) -> str:
        """``host:port`` to give clients (e.g. as ``FIRESTORE_EMULATOR_HOST``)."""
        if self._server is None:
            raise ManagerClosedError("the proxy is not started")
        return f"{self._listen_host}:{self._port}"

    @property
    def open_connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._connections)

    # -- faults ----------------------------------------------------------------------

    async def reset(self) -> int:
        """Reset every open connection once; returns how many. New ones still work."""
        connections = list(self._connections)
        for connection in connections:
            connection.reset()
            self._connections.discard(connection)
        self.resets += len(connections)
        await asyncio.sleep(0)  # let the pumps see their cancellation
        return len(connections)

    async def cut(self) -> int:
        """Reset every connection and refuse (reset) new ones until ``restore()``."""
        self.state = ProxyState.CUT
        self._flowing.set()
        return await self.reset()

    async def blackhole(self) -> None:
        """Hold all traffic: connections stay open, nothing is forwarded until ``restore()``."""
        self.state = ProxyState.BLACKHOLE
        self._flowing.clear()

    async def restore(self) -> None:
        """Forward normally again (held bytes are delivered)."""
        self.state = ProxyState.FORWARDING
        self._flowing.set()

    # -- plumbing --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.state is ProxyState.CUT:
            self.resets += 1
            _reset(writer)
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            await self._flowing.wait()  # a black-holed SYN gets no answer from upstream
            if connection not in self._connections:  # reset (or cut) while held
                _reset(writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError:
                _reset(writer)  # upstream down: the client sees a reset, as a dead host gives
                return
            connection.upstream = up_writer
            connection.tasks = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            if connection in self._connections:
                self._connections.discard(connection)
                for w in (writer, connection.upstream):
                    if w is not None:
                        w.transport.abort()

    def _delay(self) -> float:
        if not self.jitter:
            return self.latency
        return max(0.0, self.latency + self._rng.uniform(-self.jitter, self.jitter))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.latency or self.jitter:
            await self._delayed_pump(reader, writer)
            return
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # black-holed: hold what was read
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other too (a half-open pair would hang the client).
            writer.transport.abort()

    async def _delayed_pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read chunks as they come; a sender writes each one when its delay is up.

        The queue carries ``(due, chunk)`` in read order, and ``due`` never goes
        backwards, so jitter cannot reorder bytes. An empty chunk marks the end.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_DELAYED_CHUNKS)
        pump = asyncio.current_task()
        assert pump is not None

        async def send() -> None:
            try:
                while True:
                    due, data = await queue.get()
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        return
                    await self._flowing.wait()  # black-holed: hold what is due
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pump.cancel()  # the reader must not wait for bytes nobody can take

        sender = asyncio.create_task(send())
        last_due = 0.0
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                last_due = max(last_due, loop.time() + self._delay())
                await queue.put((last_due, data))
                if not data:
                    break
            await sender  # deliver what is held, then end this direction
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.transport.abort()

    def __repr__(self) -> str:
        where = self.host if self._server is not None else "stopped"
        target = f"{self._target[0]}:{self._target[1]}"
        delay = (
            f" latency={self.latency:g}s+-{self.jitter:g}s" if self.latency or self.jitter else ""
        )
        return (
            f"<FaultyProxy {where} -> {target} {self.state.value}{delay} "
            f"open={self.open_connections} resets={self.resets}>"
        )
