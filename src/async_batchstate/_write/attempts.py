"""One transaction attempt, and the rollback of an attempt cut off after it began.

If an attempt is cut off (timeout, cancellation, connection lost) after the
transaction began, the plain client's rollback may have been lost with the
connection. The server then keeps the abandoned transaction's locks until it
expires (60 s idle), and every later attempt that reads the same document waits
behind it. So the transaction is rolled back again in the background until that
succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Concatenate

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from .._clock import Clock
from .._store._client_internals import rollback_by_id
from .._store.transact import P, T, run_transactional

_CUT_OFF = (
    asyncio.CancelledError,
    TimeoutError,
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Unknown,
    gexc.Cancelled,
)
"""Errors after which a begun transaction's rollback may not have reached the server."""


class TransactionAttempts:
    """Runs single transaction attempts and releases the ones cut off (background tasks)."""

    def __init__(self, client: AsyncClient, clock: Clock) -> None:
        self._client = client
        self._clock = clock
        self._releases: set[asyncio.Task[None]] = set()

    async def attempt(
        self,
        fn: Callable[Concatenate[AsyncTransaction, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[T, AsyncTransaction]:
        """Run ``fn`` in ONE transaction attempt; the result and the committed transaction.

        If the attempt is cut off (timeout, cancellation, connection lost) after
        the transaction began, the plain client's rollback may have been lost
        with the connection. The server then keeps the abandoned transaction's
        locks until it expires (60 s idle), and every later attempt that reads
        the same document waits behind it. So the transaction is rolled back
        again in the background until that succeeds.
        """
        transaction = self._client.transaction(max_attempts=1)
        began: list[bytes] = []

        async def body(txn: AsyncTransaction, /, *a: P.args, **kw: P.kwargs) -> T:
            began.append(txn.id)
            return await fn(txn, *a, **kw)

        try:
            result = await run_transactional(body, transaction, *args, **kwargs)
        except _CUT_OFF:
            if began:
                self._release_later(began[-1])
            raise
        return result, transaction

    def _release_later(self, transaction_id: bytes) -> None:
        task = asyncio.get_running_loop().create_task(
            self._release(transaction_id), name="async-batchstate rollback"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, transaction_id: bytes) -> None:
        """Best-effort rollback of an abandoned transaction, bounded (~40 s in all)."""
        for attempt in range(8):
            try:
                async with self._clock.timeout(2.0):
                    await rollback_by_id(self._client, transaction_id)
                return
            except (TimeoutError, gexc.ServiceUnavailable, gexc.DeadlineExceeded):
                await self._clock.sleep(min(4.0, 0.25 * 2**attempt))
            except Exception:  # already rolled back or expired: nothing holds a lock
                return

    async def aclose(self) -> None:
        """Stop background rollbacks (the server expires what they did not release)."""
        tasks = list(self._releases)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
