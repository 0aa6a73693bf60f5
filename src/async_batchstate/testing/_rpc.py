"""The RPC layer of a real client: count its RPCs, and lose answers the server applied.

``RpcCounter`` counts the Firestore RPCs a client sends, by method (what a
write path costs in round trips, measured, not estimated).

Lost answers: the server applies a request, the client never hears back.

The fault that breaks exactly-once reporting: a commit reaches Firestore and
is applied, then the connection drops before the answer arrives. The client
sees UNAVAILABLE (or UNKNOWN, CANCELLED, DEADLINE_EXCEEDED) and cannot tell
whether anything was written. ``LostAnswers`` produces exactly that, at the
RPC layer of a real ``AsyncClient``: a gRPC interceptor below the client's
own retry lets the request through, waits for the server's answer, and then
raises the chosen status instead of returning it. The client's retry (and
ours above it) then runs as it would in production::

    lost = LostAnswers(methods={"Commit"}, times=1).attach(client)
    await manager.record_completion("b", "p1", 3)   # its first commit's answer is lost
    assert 1 == lost.lost
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any, Self

import grpc

from .._errors import ConfigurationError
from .._store._client_internals import grpc_channel, interceptor_lists

__all__ = ["LostAnswers", "RpcCounter"]

_CODES = {
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNKNOWN": grpc.StatusCode.UNKNOWN,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
_UNARY = frozenset({"Commit", "BeginTransaction", "Rollback"})


def _method(details: Any) -> str:
    raw = details.method
    return (raw.decode() if isinstance(raw, bytes) else str(raw)).rsplit("/", 1)[-1]


class _Count(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._counts[_method(details)] += 1
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._counts[_method(details)] += 1
        return await continuation(details, request)


class RpcCounter:
    """Counts the Firestore RPCs a client sends, by method name.

    ``Commit``, ``BatchGetDocuments``, ``BeginTransaction``, ``Rollback``,
    ``RunQuery``, ``RunAggregationQuery``...: one count per request sent
    (a retried request counts again)::

        rpcs = RpcCounter().attach(client)
        await manager.record_completion("b", "p", 1)
        assert 1 == rpcs.counts["Commit"]

    One counter may be attached to several clients (the counts are their sum).
    ``detach()``, or leaving a ``with`` block, stops counting and keeps the counts::

        with RpcCounter().attach(client) as rpcs:
            await manager.record_completion("b", "p", 1)

    Attributes:
        counts: Requests sent since attached (or since ``reset()``), by method.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._interceptor = _Count(self.counts)
        self._channels: list[grpc.aio.Channel] = []

    def attach(self, client: Any) -> Self:
        """Count every RPC ``client`` sends from now on; returns self."""
        channel = grpc_channel(client)
        for interceptors in interceptor_lists(channel):
            if self._interceptor not in interceptors:
                interceptors.append(self._interceptor)
        if all(c is not channel for c in self._channels):
            self._channels.append(channel)
        return self

    def detach(self) -> None:
        """Stop counting on every client attached (idempotent); the counts stay."""
        for channel in self._channels:
            for interceptors in interceptor_lists(channel):
                if self._interceptor in interceptors:
                    interceptors.remove(self._interceptor)
        self._channels.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def reset(self) -> dict[str, int]:
        """Start counting afresh; the counts until now."""
        before = dict(self.counts)
        self.counts.clear()
        return before

    @property
    def total(self) -> int:
        """Requests of every method."""
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"<RpcCounter {dict(self.counts)}>"


class LostAnswers(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Apply matching requests on the server, then lose their answers.

    Args:
        methods: Firestore RPCs whose answers may be lost: ``Commit``,
            ``BeginTransaction``, ``Rollback`` (every write goes through ``Commit``).
        times: How many answers to lose; None loses every matching one while armed.
        when: Optional predicate on the request (e.g. the Commit that finalizes).
        code: The status the client sees instead: ``UNAVAILABLE`` (default),
            ``UNKNOWN``, ``CANCELLED``, ``DEADLINE_EXCEEDED`` or ``INTERNAL``.

    Attributes:
        lost: Answers lost so far, by method.
        seen: Requests seen, by method.
        armed: Set False to let everything through.

    Raises:
        ConfigurationError: An unknown method or code, or ``times < 0``.
    """

    def __init__(
        self,
        methods: Collection[str] = ("Commit",),
        *,
        times: int | None = 1,
        when: Callable[[Any], bool] | None = None,
        code: str = "UNAVAILABLE",
    ) -> None:
        unknown = set(methods) - _UNARY
        if unknown:
            raise ConfigurationError(
                f"cannot lose answers of {sorted(unknown)}; use {sorted(_UNARY)}"
            )
        if code not in _CODES:
            raise ConfigurationError(f"code must be one of {sorted(_CODES)}, not {code!r}")
        if times is not None and times < 0:
            raise ConfigurationError("times must be >= 0 or None")
        self._methods = frozenset(methods)
        self._times = times
        self._when = when
        self._code = _CODES[code]
        self.lost: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.armed = True
        self._chosen = 0

    def attach(self, client: Any) -> Self:
        """Install on ``client``'s channel (every RPC it sends from now on); returns self."""
        interceptors = interceptor_lists(grpc_channel(client))[0]
        if self not in interceptors:
            interceptors.append(self)
        return self

    @property
    def total_lost(self) -> int:
        """Answers lost so far, all methods."""
        return sum(self.lost.values())

    def _should_lose(self, method: str, request: Any) -> bool:
        if not self.armed or method not in self._methods:
            return False
        if self._times is not None and self._chosen >= self._times:
            return False
        if self._when is not None and not self._when(request):
            return False
        self._chosen += 1  # decided now: concurrent calls must not overshoot ``times``
        return True

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """Forward the call; for a matching one, await the answer and raise instead."""
        method = _method(client_call_details)
        self.seen[method] += 1
        call = await continuation(client_call_details, request)
        if not self._should_lose(method, request):
            return call
        try:
            await call  # the server applies it and answers; the answer goes nowhere
        except BaseException:
            self._chosen -= 1  # refused (or cut) anyway: nothing was applied to lose
            raise
        self.lost[method] += 1
        raise grpc.aio.AioRpcError(
            self._code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=f"answer to {method} lost (injected by LostAnswers)",
        )

    def __repr__(self) -> str:
        return f"<LostAnswers methods={sorted(self._methods)} lost={dict(self.lost)}>"
