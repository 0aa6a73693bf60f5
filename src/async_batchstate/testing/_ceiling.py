"""A modelled per-document write ceiling: a gRPC proxy between clients and the emulator.

Production Firestore answers a document that receives more updates than it can
sustain with contention: higher latency, then ABORTED ("Too much contention on
these datastore entities"). How many writes per second a document sustains is
not published (the old limits page said about one; the current one says it
depends on the workload), and the emulator has no such limit at all, so the
regime where grouping writes matters most never appears on it.

``WriteCeilingProxy`` puts that regime back as a MODEL WITH ONE PARAMETER, not
a measurement of Firestore: every Commit reserves, on each document its writes
touch, a slot of ``1 / writes_per_second`` seconds. Commits on the same document
are forwarded one slot after the other and answered no earlier than the end of
their slot; Commits on different documents do not wait for each other. A Commit
whose slot would start more than ``max_wait`` seconds from now is refused at
once with ABORTED, as contention is refused. Reads, queries, listeners and
Commits without writes pass straight through::

    with WriteCeilingProxy(emulator.host, writes_per_second=100) as proxy:
        client = make_client(EmulatorInfo(proxy.host, project, None))
        ...   # at most ~100 Commits per second touch any one document

It is a ``grpc.aio`` server in a process of its own (its CPU is not the
clients'), on a free loopback port, with one generic handler per method that
forwards raw bytes upstream (unary, server-streaming and bidirectional calls:
``Listen`` and ``Write`` work too). Metadata passes through, except
``user-agent`` (the proxy's channel sets its own); deadlines pass through. Only
Commit requests are decoded, to find the documents they touch.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self

import grpc
from google.cloud.firestore_v1.types import CommitRequest

from .._errors import ConfigurationError, ManagerClosedError
from ._proxy import _split_host

__all__ = ["WriteCeilingProxy"]

CONTENTION = "Too much contention on these datastore entities. Please try again."
"""The details of the ABORTED a refused Commit gets (production's wording)."""

_SERVICE = "/google.firestore.v1.Firestore/"
_UNARY_STREAM = frozenset(
    {"BatchGetDocuments", "RunQuery", "RunAggregationQuery", "ExecutePipeline"}
)
_STREAM_STREAM = frozenset({"Listen", "Write"})
_DROPPED_METADATA = frozenset({"user-agent"})
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_COMMIT = CommitRequest.pb()
# Shared counters (one writer, the proxy process): RPCs, Commits forwarded, Commits refused.
_RPCS, _COMMITS, _ABORTED = range(3)


class _Slots:
    """The model: per document, when its next write slot starts.

    Pure bookkeeping on a clock the caller passes, so it is tested without I/O.
    """

    def __init__(self, writes_per_second: float, max_wait: float | None) -> None:
        self.service = 1.0 / writes_per_second if writes_per_second else 0.0
        self.max_wait = max_wait
        self._free_at: dict[str, float] = {}

    def reserve(self, documents: Iterable[str], now: float) -> float | None:
        """The start of a Commit's slot on ``documents``, or None: refused (too long a wait).

        A Commit holds every document it touches for one slot, starting when the
        busiest of them is free; a refused Commit reserves nothing.
        """
        docs = set(documents)
        start = max([now, *(self._free_at.get(d, now) for d in docs)])
        if self.max_wait is not None and start - now > self.max_wait:
            return None
        end = start + self.service
        for doc in docs:
            self._free_at[doc] = end
        if len(self._free_at) > 10_000:  # forget documents that are free again
            self._free_at = {d: t for d, t in self._free_at.items() if t > now}
        return start


def _documents(request: bytes) -> set[str]:
    """Names of the documents a serialized ``CommitRequest``'s writes touch."""
    docs = set()
    for write in _COMMIT.FromString(request).writes:
        kind = write.WhichOneof("operation")
        if kind == "update":
            docs.add(write.update.name)
        elif kind == "delete":
            docs.add(write.delete)
        elif kind == "transform":
            docs.add(write.transform.document)
    return docs


def _call_options(context: Any) -> dict[str, Any]:
    metadata = [(k, v) for k, v in context.invocation_metadata() if k not in _DROPPED_METADATA]
    return {"metadata": metadata, "timeout": context.time_remaining()}


async def _abort_like(context: Any, error: grpc.aio.AioRpcError) -> None:
    """Answer the client with upstream's status (reserved ``grpc-`` trailers dropped)."""
    trailers = tuple(
        (k, v) for k, v in (error.trailing_metadata() or ()) if not k.startswith("grpc-")
    )
    await context.abort(error.code(), error.details() or "", trailers)


class _Forwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """One raw-bytes handler per method.

    Every behaviour is a real ``async def`` (or async generator): grpc.aio runs any
    other callable in a thread pool, silently.
    """

    def __init__(self, channel: grpc.aio.Channel, slots: _Slots, counters: Any) -> None:
        self._channel = channel
        self._slots = slots
        self._counters = counters
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method not in self._handlers:
            self._handlers[method] = self._handler(method)
        return self._handlers[method]

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        name = method.rsplit("/", 1)[-1]
        counters = self._counters
        if name in _STREAM_STREAM:
            both = self._channel.stream_stream(method)

            async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> Any:
                counters[_RPCS] += 1
                call = both(requests, **_call_options(context))
                try:
                    async for response in call:
                        yield response
                except grpc.aio.AioRpcError as error:
                    await _abort_like(context, error)
                finally:
                    call.cancel()

            return grpc.stream_stream_rpc_method_handler(stream_stream)
        if name in _UNARY_STREAM:
            streamed = self._channel.unary_stream(method)

            async def unary_stream(request: bytes, context: Any) -> Any:
                counters[_RPCS] += 1
                call = streamed(request, **_call_options(context))
                try:
                    async for response in call:
                        yield response
                except grpc.aio.AioRpcError as error:
                    await _abort_like(context, error)
                finally:
                    call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)
        unary = self._channel.unary_unary(method)

        async def forward(request: bytes, context: Any) -> bytes:
            try:
                response: bytes = await unary(request, **_call_options(context))
            except grpc.aio.AioRpcError as error:
                await _abort_like(context, error)
                raise  # not reached: abort raises
            return response

        if method != _SERVICE + "Commit" or not self._slots.service:

            async def unary_unary(request: bytes, context: Any) -> bytes:
                counters[_RPCS] += 1
                return await forward(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary)
        return grpc.unary_unary_rpc_method_handler(self._commit_handler(forward))

    def _commit_handler(
        self, forward: Callable[[bytes, Any], Awaitable[bytes]]
    ) -> Callable[[bytes, Any], Awaitable[bytes]]:
        slots, counters = self._slots, self._counters

        async def commit(request: bytes, context: Any) -> bytes:
            counters[_RPCS] += 1
            documents = _documents(request)
            if not documents:
                return await forward(request, context)
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = slots.reserve(documents, now)
            if start is None:
                counters[_ABORTED] += 1
                await context.abort(grpc.StatusCode.ABORTED, CONTENTION)
            assert start is not None
            if start > now:
                await asyncio.sleep(start - now)
            counters[_COMMITS] += 1
            response = await forward(request, context)
            rest = start + slots.service - loop.time()
            if rest > 0:  # the document is busy for the whole slot
                await asyncio.sleep(rest)
            return response

        return commit


async def _serve(
    target: str,
    writes_per_second: float,
    max_wait: float | None,
    listen: str,
    conn: Any,
    stop: Any,
    counters: Any,
    parent: int,
) -> None:
    channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers(
        (_Forwarder(channel, _Slots(writes_per_second, max_wait), counters),)
    )
    port = server.add_insecure_port(listen)
    await server.start()
    conn.send(port)

    def wait() -> None:  # until stopped, or until the process that started us is gone
        while not stop.wait(1.0) and os.getppid() == parent:
            pass

    try:
        await asyncio.to_thread(wait)
    finally:
        await server.stop(grace=1.0)
        await channel.close()


def _main(*args: Any) -> None:
    asyncio.run(_serve(*args))


def _loopback(host: str) -> str:
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigurationError("WriteCeilingProxy listens on loopback only")
    return f"[{host}]" if ":" in host else host


class WriteCeilingProxy:
    """Forward a loopback port to ``target``, limiting Commits per document (a model).

    Args:
        target: ``host:port`` of the emulator (or of another proxy in front of it).
        writes_per_second: Commits per second each document sustains: a Commit
            holds each document it writes for ``1 / writes_per_second`` s. 0 turns
            the model off (plain forwarding; Commits are not even decoded).
        max_wait: A Commit whose slot would start more than this many seconds
            later is refused with ABORTED (``CONTENTION``); None queues without bound.
        listen_host: Loopback address to listen on.
        port: Port to listen on; 0 (default) picks a free one.
        start_timeout: Seconds to wait for the proxy process to listen.

    Raises:
        ConfigurationError: A negative or non-finite ``writes_per_second``, a
            ``max_wait`` that is not a finite number > 0, a malformed ``target``, or a
            ``listen_host`` that is not loopback.

    Use ``start()``/``stop()`` or ``with`` (``async with`` runs them in a thread).
    """

    def __init__(
        self,
        target: str,
        *,
        writes_per_second: float,
        max_wait: float | None = 1.0,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 60.0,
    ) -> None:
        if not (
            isinstance(writes_per_second, int | float)
            and math.isfinite(writes_per_second)
            and writes_per_second >= 0
        ):
            raise ConfigurationError(
                "writes_per_second must be a finite number >= 0 (0: off), "
                f"got {writes_per_second!r}"
            )
        if max_wait is not None and not (
            isinstance(max_wait, int | float) and math.isfinite(max_wait) and max_wait > 0
        ):
            raise ConfigurationError(
                f"max_wait must be a finite number of seconds > 0 or None, got {max_wait!r}"
            )
        _split_host(target)
        self.target = target
        self.writes_per_second = float(writes_per_second)
        self.max_wait = max_wait
        self._listen_host = listen_host
        self._listen = f"{_loopback(listen_host)}:{port}"
        self._start_timeout = start_timeout
        self._process: Any = None
        self._stop: Any = None
        self._counters: Any = None
        self._port = 0

    def start(self) -> Self:
        """Start the proxy process and wait until it listens; returns self.

        Raises:
            RuntimeError: The process did not listen within ``start_timeout``.
        """
        if self._process is not None:
            return self
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        self._stop = ctx.Event()
        self._counters = ctx.Array("q", 3, lock=False)
        self._process = ctx.Process(
            target=_main,
            args=(
                self.target,
                self.writes_per_second,
                self.max_wait,
                self._listen,
                theirs,
                self._stop,
                self._counters,
                os.getpid(),
            ),
            name="write-ceiling-proxy",
            daemon=True,
        )
        self._process.start()
        if not ours.poll(self._start_timeout):
            self.stop()
            raise RuntimeError(f"WriteCeilingProxy did not listen within {self._start_timeout} s")
        self._port = int(ours.recv())
        return self

    def stop(self) -> None:
        """Stop the proxy process (idempotent); open calls through it end."""
        process, self._process = self._process, None
        if process is None:
            return
        self._stop.set()
        process.join(10)
        if process.is_alive():  # our own child, by its handle
            process.terminate()
            process.join(10)

    @property
    def host(self) -> str:
        """``host:port`` to give clients (e.g. as ``FIRESTORE_EMULATOR_HOST``)."""
        if self._process is None:
            raise ManagerClosedError("the proxy is not started")
        return f"{_loopback(self._listen_host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The proxy process id while running."""
        return self._process.pid if self._process is not None else None

    def _count(self, index: int) -> int:
        return int(self._counters[index]) if self._counters is not None else 0

    @property
    def rpcs(self) -> int:
        """RPCs received since start, every method."""
        return self._count(_RPCS)

    @property
    def commits(self) -> int:
        """Commits with writes forwarded under the model since start."""
        return self._count(_COMMITS)

    @property
    def aborted(self) -> int:
        """Commits refused with ABORTED since start."""
        return self._count(_ABORTED)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.host if self._process is not None else "stopped"
        wait = "unbounded" if self.max_wait is None else f"{self.max_wait:g}s"
        return (
            f"<WriteCeilingProxy {where} -> {self.target} "
            f"{self.writes_per_second:g} writes/s per document, max_wait={wait}>"
        )
