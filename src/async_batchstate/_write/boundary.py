"""The public boundary: whatever a manager's entry point lets out is a ``BatchStateError``.

Every RPC inside runs under the retry loop, which turns retryable failures into
``RetryExhaustedError`` and lets a fatal client error (PERMISSION_DENIED, a
malformed request) out unchanged for the code that decides on it. Here, at the
public entry points, a client error still escaping (``google.api_core``,
``google.auth``, raw ``grpc``, ``grpc.aio``'s own errors such as the
``UsageError`` of a closed channel, or the ``RuntimeError`` of a client used
after its event loop closed) is wrapped: a retryable one in
``RetryExhaustedError``, any other in ``WriteFailedError``, the original as
``__cause__``. A ``BatchStateError`` (``ManagerClosedError`` is also a
``RuntimeError``) always leaves as it is.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

from .._errors import BatchStateError, RetryExhaustedError, WriteFailedError
from .._retry import classify

P = ParamSpec("P")
T = TypeVar("T")

CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    grpc.RpcError,
    grpc.aio.BaseError,  # UsageError ("Channel is closed."), AbortError, InternalError
    RuntimeError,  # a client or channel used after its event loop closed, or from another
)
"""Errors of the Firestore client stack that must not reach a caller as they are."""


def as_batch_state_error(error: BaseException, what: str) -> BatchStateError:
    """``error`` (a client error) as the ``BatchStateError`` a caller gets for ``what``."""
    if classify(error).retryable:
        return RetryExhaustedError(what, attempts=1, elapsed=0.0, last_cause=error)
    return WriteFailedError(f"{what} failed: {type(error).__name__}: {error}")


def typed_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate a public async method: client errors leave it as ``BatchStateError``."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except BatchStateError:
            raise
        except CLIENT_ERRORS as exc:
            raise as_batch_state_error(exc, method.__name__) from exc

    return wrapper


async def typed_iteration(items: AsyncIterator[T], what: str) -> AsyncIterator[T]:
    """``items``, with client errors raised while iterating as ``BatchStateError``."""
    try:
        async for item in items:
            yield item
    except BatchStateError:
        raise
    except CLIENT_ERRORS as exc:
        raise as_batch_state_error(exc, what) from exc
