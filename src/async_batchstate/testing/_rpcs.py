"""Count the gRPC calls an ``AsyncClient`` makes, per Firestore method.

The counter is a ``grpc.aio`` client interceptor on the client's channel, so it
sees every RPC that goes on the wire, including each retry the client makes of
its own (the Google client retries some commits and reads), and nothing that
stays in the process::

    rpcs = RpcCounter().attach(client)
    await manager.record_completion("b1", "p1", 3)
    assert rpcs.counts == {"Commit": 1}
    rpcs.detach()

``AsyncClient`` takes no interceptors and creates its channel lazily, so
``attach`` creates the channel and adds the interceptors to the channel's
interceptor lists; the client's existing stubs read those lists on every call.
That reaches into ``grpc.aio.Channel``; ``attach`` checks what it relies on and
raises ``TypeError`` if a gRPC release changes it, rather than counting nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import grpc.aio  # type: ignore[import-untyped]  # no stubs; types-grpcio is not a dependency
from google.cloud.firestore_v1.async_client import AsyncClient

__all__ = ["RpcCounter"]

_LISTS = (
    "_unary_unary_interceptors",
    "_unary_stream_interceptors",
    "_stream_unary_interceptors",
    "_stream_stream_interceptors",
)


def _method(details: grpc.aio.ClientCallDetails) -> str:
    """``/google.firestore.v1.Firestore/Commit`` -> ``Commit``."""
    method = details.method
    name = method.decode() if isinstance(method, bytes) else str(method)
    return name.rpartition("/")[2]


class _Count:
    """What every interceptor kind does: count the call, then make it unchanged."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self._count = count

    async def _call(self, continuation: Any, details: grpc.aio.ClientCallDetails, req: Any) -> Any:
        self._count(_method(details))
        return await continuation(details, req)


class _UnaryUnary(_Count, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _UnaryStream(_Count, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _StreamUnary(_Count, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


class _StreamStream(_Count, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


class RpcCounter:
    """Counts RPCs by method name (``Commit``, ``BatchGetDocuments``, ...) on attached clients.

    One counter may be attached to several clients; the counts are their sum.
    Use it as a context manager to detach on exit::

        with RpcCounter().attach(client) as rpcs:
            await writer()
        assert rpcs["Commit"] == 1

    Names are the Firestore RPC methods: ``Commit``, ``BatchGetDocuments``,
    ``BeginTransaction``, ``Rollback``, ``RunQuery``, ``RunAggregationQuery``,
    ``BatchWrite``, ``Listen``, ``Write``, ...
    """

    METHODS = (
        "BatchGetDocuments",
        "BeginTransaction",
        "Commit",
        "Rollback",
        "RunAggregationQuery",
        "RunQuery",
    )
    """The methods a batch-state write or read uses (``breakdown`` lists them even at 0)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._interceptors = (
            _UnaryUnary(self._count),
            _UnaryStream(self._count),
            _StreamUnary(self._count),
            _StreamStream(self._count),
        )
        self._channels: list[Any] = []

    def _count(self, method: str) -> None:
        self._counts[method] += 1

    def attach(self, client: AsyncClient) -> Self:
        """Count the RPCs of ``client`` from now on; returns self.

        Raises:
            TypeError: The client's channel is not a ``grpc.aio`` channel with
                interceptor lists (another transport, or a gRPC release that
                changed them).
        """
        channel = client._firestore_api.transport.grpc_channel  # creates it if lazy
        lists = [getattr(channel, name, None) for name in _LISTS]
        if not isinstance(channel, grpc.aio.Channel) or not all(isinstance(x, list) for x in lists):
            raise TypeError(
                f"cannot count RPCs on {type(channel).__name__}: not a grpc.aio channel"
            )
        if any(channel is c for c in self._channels):
            return self
        for interceptors, interceptor in zip(lists, self._interceptors, strict=True):
            assert isinstance(interceptors, list)
            interceptors.append(interceptor)
        self._channels.append(channel)
        return self

    def detach(self) -> None:
        """Stop counting on every attached client (idempotent); the counts stay."""
        for channel in self._channels:
            for name, interceptor in zip(_LISTS, self._interceptors, strict=True):
                interceptors: list[Any] = getattr(channel, name)
                if interceptor in interceptors:
                    interceptors.remove(interceptor)
        self._channels.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    @property
    def counts(self) -> dict[str, int]:
        """RPCs made so far by method, only methods called at least once (a copy)."""
        return {k: v for k, v in sorted(self._counts.items()) if v}

    def breakdown(self) -> dict[str, int]:
        """Like ``counts``, with every method of ``METHODS`` present (0 if not called)."""
        return {**dict.fromkeys(self.METHODS, 0), **self.counts}

    @property
    def total(self) -> int:
        """All RPCs made so far."""
        return sum(self._counts.values())

    def __getitem__(self, method: str) -> int:
        """RPCs of one method so far (0 if none)."""
        return self._counts[method]

    def reset(self) -> Mapping[str, int]:
        """Start again from zero; returns the counts until now."""
        counts = self.counts
        self._counts.clear()
        return counts

    def __repr__(self) -> str:
        calls = ", ".join(f"{k}={v}" for k, v in self.counts.items()) or "none"
        return f"<RpcCounter clients={len(self._channels)} {calls}>"
