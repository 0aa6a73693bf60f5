"""Reading a batch for its consistency report: one consistent state, and what it costs.

A check reads the batch document, then the ``count()`` and ``sum()`` aggregation
over the completion documents (one billed read per 1,000 index entries instead
of one per document) and, when a legacy array exists, the completion ids through
a projection, then the batch document's version again. Every write of every mode
updates the batch document, so an unchanged ``update_time`` means no write
landed in between: the reads saw one state. A changed one is ABORTED, and the
retry reads again. (A read-only transaction does not give one snapshot on the
emulator, where a commit landing between the reads once raised a false mismatch;
reads at a ``read_time`` do, but the emulator answers a query at a past
``read_time`` by scanning its whole database.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import batch_not_found
from .._retry import RetryPolicy, retried
from .._store import names as f
from .._store.decode import as_int
from .._store.ids import (
    Layout,
    validate_id,
    validate_instance,
    validate_policy,
    validate_store,
)
from .._store.refs import Refs
from .._write.boundary import typed_errors
from ._report import BATCH_FIELDS, ConsistencyReport, build_report

_INDEX_ENTRIES_PER_READ = 1_000


def aggregation_reads(entries: int) -> int:
    """Billed reads of one aggregation query: 1 per up-to-1,000 index entries, at least 1."""
    return max(1, -(-entries // _INDEX_ENTRIES_PER_READ))


@dataclass(frozen=True)
class Reading:
    """One snapshot of a batch: its document and, when read, the aggregation of its completions.

    Attributes:
        batch_id: The batch.
        data: The batch document's ``BATCH_FIELDS``.
        read_time: When the document was read.
        version: The batch document's ``update_time`` then (``confirm_unchanged``).
        reads: Billed document reads spent on it so far.
        completion_docs: Completion documents (aggregation ``count()``), None if not read.
        completion_sum: Their ``predictions_count`` summed, None if not read.
    """

    batch_id: str
    data: Mapping[str, Any]
    read_time: dt.datetime
    version: Any
    reads: int
    completion_docs: int | None = None
    completion_sum: int | None = None


async def read_document(refs: Refs, batch_id: str) -> Reading:
    """One masked read of the batch document (1 billed read).

    Raises:
        BatchNotFoundError: No such batch.
    """
    snap = await refs.batch(batch_id).get(field_paths=list(BATCH_FIELDS), retry=None)
    if not snap.exists or snap.read_time is None:
        raise batch_not_found(batch_id, refs.layout.collection)
    return Reading(
        batch_id=batch_id,
        data=snap.to_dict() or {},
        read_time=snap.read_time,
        version=snap.update_time,
        reads=1,
    )


async def confirm_unchanged(refs: Refs, reading: Reading) -> Reading:
    """``reading`` if the batch document is still at its version (1 more billed read).

    Raises:
        google.api_core.exceptions.Aborted: A write landed since the reading began
            (retryable: the next attempt reads again).
    """
    snap = await refs.batch(reading.batch_id).get(field_paths=[f.STATUS], retry=None)
    if snap.update_time != reading.version:
        raise gexc.Aborted(f"batch {reading.batch_id!r} changed during its check")  # type: ignore[no-untyped-call]
    return dataclasses.replace(reading, reads=reading.reads + 1)


async def read_aggregation(refs: Refs, reading: Reading) -> Reading:
    """``reading`` with the count and sum of its completion documents (then confirm it)."""
    completions: Any = refs.completions(reading.batch_id)  # count() is untyped
    aggregation = completions.count(alias="docs").sum(f.PREDICTIONS_COUNT, alias="total")
    values: dict[str, int] = {}
    for row in await aggregation.get(retry=None):
        for result in row:
            values[result.alias] = as_int(result.value)  # empty sets come back as 0.0
    docs = values.get("docs", 0)
    return dataclasses.replace(
        reading,
        reads=reading.reads + aggregation_reads(docs),
        completion_docs=docs,
        completion_sum=values.get("total", 0),
    )


async def read_report(
    refs: Refs, mode: MigrationMode, batch_id: str
) -> tuple[ConsistencyReport, int]:
    """Read one batch's full report from one consistent state, and the billed reads it cost.

    The completion ids are listed (1 read each) only when there is a legacy
    array to compare them with.

    Raises:
        BatchNotFoundError: No such batch.
    """
    reading = await read_aggregation(refs, await read_document(refs, batch_id))
    docs, reads = reading.completion_docs or 0, reading.reads
    ids: set[str] | None = None
    if any(name in reading.data for name in f.LEGACY_FIELDS):
        ids = set()
        if docs:  # ids only when there is an array to compare them with
            query = refs.completions(batch_id).select([FieldPath.document_id()])
            ids = {s.id async for s in query.stream(retry=None)}
            reads += max(1, len(ids))  # a query is billed at least one read
    reads += (await confirm_unchanged(refs, reading)).reads - reading.reads
    report = build_report(batch_id, mode, reading.data, docs, reading.completion_sum or 0, ids)
    return report, reads


@typed_errors
async def validate(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_id: str,
    *,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ConsistencyReport:
    """Compare a batch's legacy array with its completions subcollection.

    Reads one consistent state without a transaction (it takes no locks, so it
    never slows writers down): the batch document, the aggregation, the
    completion ids, and the document's version again (a write in between: read
    again). It costs 2 reads, plus 1 per 1,000 completions, plus 1 per
    completion when the batch has a legacy array.

    Args:
        client: The Firestore client.
        layout: Where batches live.
        mode: The mode whose rules apply (the mode the writers run in).
        batch_id: The batch.
        retry: Retry policy for the reads.
        clock: Time source of the retries' timeouts and backoff.

    Raises:
        InvalidIdError: Bad batch id.
        InvalidInputError: ``client``, ``layout``, ``mode``, ``retry`` or ``clock``
            of the wrong type.
        BatchNotFoundError: No such batch.
        WriteFailedError: The client failed (a closed channel included).
        RetryExhaustedError: Retryable failures until the attempts or deadline ran out.
    """
    validate_store(client, layout)
    validate_instance("mode", mode, MigrationMode)
    validate_id("batch id", batch_id)
    validate_policy(retry, clock)
    refs = Refs(client, layout)

    async def attempt() -> ConsistencyReport:
        report, _ = await read_report(refs, mode, batch_id)
        return report

    return await retried(attempt, retry, what=f"validating batch {batch_id!r}", clock=clock)
