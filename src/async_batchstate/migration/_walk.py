"""The batch walker under every migration command: ids in document-id order, bounded concurrency."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from .._store.ids import Layout, validate_count, validate_id, validate_iterable
from .._write.boundary import typed_iteration
from ._progress import MigrationError

logger = logging.getLogger("async_batchstate.migration")

T = TypeVar("T")
_PAGE = 500


async def iter_batch_ids(
    client: AsyncClient, layout: Layout, *, start_after: str | None = None, page_size: int = _PAGE
) -> AsyncIterator[str]:
    """Every batch id in ``layout.collection`` in document-id order, after ``start_after``.

    Pages with cursors (projection on the id only) rather than one long stream,
    so a huge collection never holds one query open for minutes.
    """
    cursor = start_after
    while True:
        query = (
            client.collection(layout.collection)
            .select([FieldPath.document_id()])
            .order_by(FieldPath.document_id())
            .limit(page_size)
        )
        if cursor is not None:
            query = query.start_after({FieldPath.document_id(): cursor})
        ids = [snap.id async for snap in query.stream()]
        for batch_id in ids:
            yield batch_id
        if len(ids) < page_size:
            return
        cursor = ids[-1]


async def count_batches(client: AsyncClient, layout: Layout, start_after: str | None) -> int:
    """Batches after ``start_after`` (aggregation ``count()``: no document reads)."""
    query: Any = client.collection(layout.collection)
    if start_after is not None:
        query = query.order_by(FieldPath.document_id()).start_after(
            {FieldPath.document_id(): start_after}
        )
    rows = await query.count(alias="n").get()
    return int(rows[0][0].value) if rows else 0


def _checked_ids(batch_ids: Iterable[str] | None) -> list[str] | None:
    """``batch_ids`` (any iterable, read once) without repeats, every one validated first.

    Raises:
        InvalidInputError: ``batch_ids`` is not an iterable, or is a ``str`` (a
            sequence of its characters), bytes or a mapping.
        InvalidIdError: An id Firestore cannot store.
    """
    if batch_ids is None:
        return None
    ids = validate_iterable("batch_ids", batch_ids)
    return list(dict.fromkeys(validate_id("batch id", batch_id) for batch_id in ids))


async def _listed(batch_ids: Sequence[str]) -> AsyncIterator[str]:
    for batch_id in batch_ids:
        yield batch_id


async def for_each_batch(
    ids: AsyncIterator[str],
    work: Callable[[str], Awaitable[T]],
    *,
    concurrency: int,
    on_done: Callable[[str, T | Exception], Awaitable[None]],
) -> None:
    """Run ``work`` on every id with at most ``concurrency`` at a time.

    ``on_done`` gets each id with its result, or with the ``Exception`` its
    ``work`` raised: a failed batch never stops the others. ``CancelledError``
    and ``KeyboardInterrupt`` are not ``Exception``s: they stop the run.

    An error while listing ``ids`` or from ``on_done`` stops dispatching new
    batches; the batches already started finish (and reach ``on_done``), then
    that first error is raised as it is, not wrapped in an ``ExceptionGroup``.

    Raises:
        MigrationError: ``concurrency`` is not an int >= 1.
    """
    validate_count("concurrency", concurrency, minimum=1, error=MigrationError)
    slots = asyncio.Semaphore(concurrency)
    fatal: list[Exception] = []

    async def run(batch_id: str) -> None:
        try:
            try:
                result: T | Exception = await work(batch_id)
            except Exception as exc:  # this batch's failure, reported to on_done
                result = exc
            await on_done(batch_id, result)
        except Exception as exc:
            fatal.append(exc)
        finally:
            slots.release()

    iterator = aiter(ids)
    try:
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()  # one slot per batch in flight: bounded
                if fatal:
                    break
                try:
                    batch_id = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:  # listing failed: finish what runs, then raise
                    fatal.append(exc)
                    break
                group.create_task(run(batch_id))
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    if fatal:
        raise fatal[0]


def _ids(
    client: AsyncClient,
    layout: Layout,
    batch_ids: Sequence[str] | None,
    start_after: str | None = None,
) -> AsyncIterator[str]:
    if batch_ids is not None:
        return _listed(batch_ids)
    # A listing that fails (a closed channel included) stops the run as a BatchStateError.
    return typed_iteration(
        iter_batch_ids(client, layout, start_after=start_after), "listing batches"
    )


async def _total(
    client: AsyncClient, layout: Layout, batch_ids: Sequence[str] | None, start_after: str | None
) -> int | None:
    if batch_ids is not None:
        return len(batch_ids)
    try:
        return await count_batches(client, layout, start_after)
    except Exception:  # the total only feeds a progress bar
        logger.debug("counting batches failed", exc_info=True)
        return None
