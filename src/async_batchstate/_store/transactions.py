"""``run_transactional``: the client's ``async_transactional`` without its two retry-loop traps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional

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
        if exc.__cause__ is None and hidden is not None and _raised_by_rollback(exc):
            raise hidden from None
        raise


def _raised_by_rollback(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_rollback":
            return True
        tb = tb.tb_next
    return False


REFUSED_AT_COMMIT = (gexc.InvalidArgument, gexc.FailedPrecondition)
"""What a transaction commit gets when the plain client re-sent a commit whose answer
was lost and the server had already committed (or closed) the transaction."""
