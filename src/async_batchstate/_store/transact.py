"""Transactions: ``async_transactional`` without its retry-loop traps, under our retry policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional

from .._clock import Clock
from .._retry import RetryPolicy, run_with_retry
from ._client_internals import raised_by_rollback

T = TypeVar("T")
P = ParamSpec("P")


async def run_transactional(
    fn: Callable[Concatenate[AsyncTransaction, P], Awaitable[T]],
    transaction: AsyncTransaction,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``async_transactional(fn)(transaction, ...)``, without hiding why an attempt failed.

    Two things the plain client gets wrong for a retry loop above it:

    * On any failure it rolls back, and an error of that rollback replaces the
      real one (which survives only as ``__context__``): when
      ``begin_transaction`` failed or was cancelled it raises ``ValueError("...
      cannot be rolled back")``. That turned a retryable UNAVAILABLE into a
      fatal error and swallowed the ``CancelledError`` of a timeout. Re-raise
      the real one.
    * Its commit retries UNAVAILABLE with the same transaction. When the first
      commit was applied and only its answer lost, the server refuses the
      re-sent one (INVALID_ARGUMENT or FAILED_PRECONDITION: the transaction is
      closed). Refused once the commit was sent, the outcome is unknown, not
      refused: raise ``ServiceUnavailable`` (the original as ``__cause__``) so
      the caller's retry reads what is stored and decides. Decided by the
      phase and the status code, never by the error's text.
    """
    sent: list[bool] = []

    async def body(txn: AsyncTransaction, /, *a: P.args, **kw: P.kwargs) -> T:
        result = await fn(txn, *a, **kw)
        sent.append(True)  # the plain client commits right after the body returns
        return result

    try:
        return await async_transactional(body)(transaction, *args, **kwargs)
    except REFUSED_AT_COMMIT as exc:
        if sent:
            unknown = f"transaction outcome unknown ({type(exc).__name__} at commit)"
            raise gexc.ServiceUnavailable(unknown) from exc  # type: ignore[no-untyped-call]
        raise
    except Exception as exc:
        hidden = exc.__context__
        if exc.__cause__ is None and hidden is not None and raised_by_rollback(exc):
            raise hidden from None
        raise


REFUSED_AT_COMMIT = (gexc.InvalidArgument, gexc.FailedPrecondition)
"""What a transaction commit gets when the plain client re-sent a commit whose answer
was lost and the server had already committed (or closed) the transaction."""


MAX_WRITES_PER_COMMIT = 400
"""Document writes one commit of ours makes at most (plus the batch document's update).

Firestore has long capped a commit at 500 writes; 400 leaves headroom and stays
far below the 10 MiB request limit with 1,500-byte ids.
"""


async def transact(
    client: AsyncClient,
    fn: Callable[[AsyncTransaction, str], Awaitable[T]],
    batch_id: str,
    *,
    retry: RetryPolicy | None,
    what: str,
    clock: Clock,
    read_only: bool = False,
) -> T:
    """``fn(transaction, batch_id)`` in a transaction, each attempt retried by our policy.

    The client's own retry is off (one attempt per transaction): ``retry`` (the
    default ``RetryPolicy()`` when None) decides, with backoff and a deadline,
    and ``run_transactional`` keeps each failure's real cause.
    """

    async def attempt() -> T:
        transaction = client.transaction(max_attempts=1, read_only=read_only)
        return await run_transactional(fn, transaction, batch_id)

    result, _ = await run_with_retry(attempt, retry or RetryPolicy(), what=what, clock=clock)
    return result
