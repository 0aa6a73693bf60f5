"""``verify`` and ``status``: validate every batch; list what is wrong, or count per state."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from google.cloud.firestore_v1.async_client import AsyncClient

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._retry import RetryPolicy
from .._store.ids import Layout
from ..consistency import ConsistencyReport, validate
from ._arguments import checked
from ._progress import ProgressCallback, _Tally
from ._walk import _checked_ids, _ids, _total, for_each_batch


@dataclass(frozen=True)
class VerifySummary:
    """The outcome of validating many batches.

    Attributes:
        checked: Batches validated.
        inconsistent: Reports of the batches that broke a rule, by batch id.
        failures: ``(batch_id, reason)`` of batches that could not be validated,
            the reason on one line; the run went on with the others.
    """

    checked: int
    inconsistent: tuple[ConsistencyReport, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """Every batch was validated and is consistent."""
        return not self.inconsistent and not self.failures


async def _validate_all(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    batch_ids: Sequence[str] | None,
    concurrency: int,
    progress: ProgressCallback | None,
    retry: RetryPolicy | None,
    sink: Callable[[ConsistencyReport], None],
    clock: Clock,
) -> _Tally:
    batch_ids = _checked_ids(batch_ids)
    tally = _Tally(await _total(client, layout, batch_ids, None), progress)

    async def work(batch_id: str) -> ConsistencyReport:
        return await validate(client, layout, mode, batch_id, retry=retry, clock=clock)

    async def on_done(batch_id: str, result: ConsistencyReport | Exception) -> None:
        if tally.record(batch_id, result) and isinstance(result, ConsistencyReport):
            sink(result)

    await for_each_batch(
        _ids(client, layout, batch_ids), work, concurrency=concurrency, on_done=on_done
    )
    return tally


@checked
async def verify(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> VerifySummary:
    """Validate every batch (or ``batch_ids``) under ``mode``'s rules.

    A batch that cannot be validated (missing, or still failing after
    ``retry`` gave up) is listed in ``failures`` and the run goes on. ``clock``
    times the retries (the real clock by default).

    Every argument is checked before anything is read.

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
        InvalidInputError: An argument of the wrong type (``batch_ids`` a str,
            bytes, a mapping or not an iterable; ``client``, ``layout``, ``mode``,
            ``progress``, ``retry`` or ``clock`` not what it names).
        MigrationError: ``concurrency`` is not an int >= 1.
        WriteFailedError: Listing the batches failed (a closed channel included).
        RetryExhaustedError: Listing the batches kept failing with retryable errors.
    """
    bad: list[ConsistencyReport] = []

    def sink(report: ConsistencyReport) -> None:
        if not report.is_consistent:
            bad.append(report)

    tally = await _validate_all(
        client, layout, mode, batch_ids, concurrency, progress, retry, sink, clock
    )
    bad.sort(key=lambda r: r.batch_id)
    return VerifySummary(
        checked=tally.done - tally.failed,
        inconsistent=tuple(bad),
        failures=tuple(sorted(tally.failures)),
    )


class BatchState(enum.Enum):
    """Where a batch is in the migration."""

    LEGACY_ONLY = "legacy_only"
    """Only legacy fields (consistent among themselves): backfill has work to do."""
    DUAL = "dual"
    """Both structures, consistent under the mode's rules."""
    SUBCOLLECTION_ONLY = "subcollection_only"
    """No legacy fields left, subcollection consistent."""
    INCONSISTENT = "inconsistent"
    """A rule is broken (see ``verify``)."""


def state_of(report: ConsistencyReport) -> BatchState:
    """The migration state of the batch ``report`` describes.

    A batch with legacy fields only is judged by the legacy structure alone:
    missing completion documents are backfill's job, not an inconsistency.
    """
    if report.has_legacy and not report.has_subcollection:
        if report.legacy_self_consistent:
            return BatchState.LEGACY_ONLY
        return BatchState.INCONSISTENT
    if not report.is_consistent:
        return BatchState.INCONSISTENT
    return BatchState.DUAL if report.has_legacy else BatchState.SUBCOLLECTION_ONLY


@dataclass(frozen=True)
class StatusSummary:
    """Batches per migration state.

    Attributes:
        counts: Batches in each state (every state present, maybe 0).
        failures: ``(batch_id, reason)`` of batches that could not be read (not in
            ``counts``), the reason on one line; the run went on with the others.
    """

    counts: Mapping[BatchState, int]
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def total(self) -> int:
        """Batches classified."""
        return sum(self.counts.values())


@checked
async def status(
    client: AsyncClient,
    layout: Layout,
    mode: MigrationMode,
    *,
    batch_ids: Sequence[str] | None = None,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> StatusSummary:
    """Count batches per ``BatchState`` (consistency judged under ``mode``'s rules).

    A batch that cannot be read is listed in ``failures`` (not counted) and the
    run goes on. ``clock`` times the retries (the real clock by default).

    Every argument is checked before anything is read.

    Raises:
        InvalidIdError: A batch id in ``batch_ids`` Firestore cannot store.
        InvalidInputError: An argument of the wrong type (``batch_ids`` a str,
            bytes, a mapping or not an iterable; ``client``, ``layout``, ``mode``,
            ``progress``, ``retry`` or ``clock`` not what it names).
        MigrationError: ``concurrency`` is not an int >= 1.
        WriteFailedError: Listing the batches failed (a closed channel included).
        RetryExhaustedError: Listing the batches kept failing with retryable errors.
    """
    counts = dict.fromkeys(BatchState, 0)

    def sink(report: ConsistencyReport) -> None:
        counts[state_of(report)] += 1

    tally = await _validate_all(
        client, layout, mode, batch_ids, concurrency, progress, retry, sink, clock
    )
    return StatusSummary(counts=counts, failures=tuple(sorted(tally.failures)))
