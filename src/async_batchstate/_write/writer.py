"""ONE write of a group of completions of one batch, without a lock wherever it can.

The lock-free write (the default wherever completion documents are the guard)
is a single non-transactional Commit: a ``create`` of every new completion
document (precondition: must not exist) and ONE update of the batch document
(precondition: exists) made only of transforms (``Increment``, ``ArrayUnion``,
server timestamps) and literal map entries. Firestore applies a Commit
atomically, so every create succeeds and the counters move by exactly that
many, or nothing is written; it takes no lock. ALREADY_EXISTS means some
member is already recorded: one plain ``get_all`` (no transaction, no lock)
finds which, and the rest is committed again.

Where the legacy array is the only guard (LEGACY mode; a dual-write batch whose
legacy-only players were not yet backfilled), the write reads the batch
document and the members' completion documents in one plain read and commits
on the condition that the batch's ``update_time`` is unchanged (every write
updates the batch document); refused, it reads again. ``write_path="transaction"``
does the same in a transaction (``async_transactional``), for comparison.

A player id with a carriage return has its ``predictions_by_player`` entry
written as part of the whole map, never through a field path naming it (see
``ids.needs_whole_map_write``): a group with such a player reads the map first
and writes it back with the new entries, conditionally as above.

Every write carries the group's write id: stored in each completion document it
creates, and set as ``open_writes.<id>`` on the batch document in the same Commit
(a write without completion documents, LEGACY on an unguarded batch, uses an id
per attempt). After any uncertain outcome (a lost answer, a timeout) the retry
reads what is stored: its own id means "this group wrote it" (RECORDED), another
id "someone else did" (DUPLICATE). Whether a write landed after the batch expired
(LATE) is what the write itself observed: its transform result (``expired_flag``),
or, for a write found again after a lost answer, where its id is: the expiry moves
``open_writes`` to ``closed_writes`` in its conditional update, so an id still in
``open_writes`` of an expired batch landed after it. Never from timestamps or error
text.

Rolling deploys and rollbacks: whether completion documents guard a batch is
stated in it (``completions_backfilled``), never inferred, never cleared; they stay
its guard whatever mode writes it. A LEGACY-mode writer reads the batch
before writing anyway; on a guarded batch it creates the completion documents
and moves the subcollection counters too, so a player it records is a DUPLICATE
for every other mode at once, with no window. Every lock-free Commit still reads
``legacy_only_count`` back (``Increment(0)``) and reads the array first on a
batch it finds unguarded. Every write reports the batch's count as every mode
counts it (``decode.counted``), so whichever mode finishes a batch finalizes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import Increment
from google.cloud.firestore_v1.async_batch import AsyncWriteBatch
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from google.cloud.firestore_v1.types import Write

from .._clock import SYSTEM_CLOCK, Clock
from .._config import MigrationMode
from .._errors import ConfigurationError, WriteFailedError, batch_not_found
from .._store import decode
from .._store import names as f
from .._store._client_internals import commit_writes, document_name
from .._store.batch_info import BatchInfo
from .._store.completion import completion_doc
from .._store.decode import as_int
from .._store.ids import Layout, needs_whole_map_write
from .._store.refs import Refs
from .._store.roster import BatchInfoCache
from .._store.transact import REFUSED_AT_COMMIT
from .attempts import TransactionAttempts
from .group import (
    FaultInjector,
    FaultPoint,
    GroupOutcome,
    GroupState,
    PlayerCompletion,
    SettingsNeeded,
    WritePath,
    firsts_of,
)
from .reads import named_member, read_after_conflict, read_group, resolve_found
from .update import ResultsAt, batch_update
from .wire import create_write, update_write

logger = logging.getLogger("async_batchstate")


@dataclass(frozen=True, slots=True)
class _Staged:
    new: tuple[str, ...]
    """Players the transaction creates; empty when it writes nothing."""
    results_at: ResultsAt | None
    counted: int | None
    """The batch's count after the commit, when the transaction read the batch."""
    expired: bool = False
    """The batch had expired, as the transaction read it."""
    guarded: bool | None = None
    """Whether completion documents guard the batch after the commit, when it was read."""
    spent: tuple[str, ...] = ()
    """Ids of told groups the commit deletes from ``open_writes``."""


_MAX_UNCERTAIN_COMMITS = 3
_MAX_CONFLICT_ROUNDS = 8
_BATCH_FINISH = [f.STATUS, f.COMPLETED_AT]


class GroupWriter:
    """Builds and runs the write of a group of completions, one attempt per call."""

    def __init__(
        self,
        client: AsyncClient,
        layout: Layout,
        mode: MigrationMode,
        infos: BatchInfoCache,
        fault_injector: FaultInjector | None = None,
        write_path: WritePath = "auto",
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if write_path not in ("auto", "transaction"):
            raise ConfigurationError(
                f"write_path must be 'auto' or 'transaction', not {write_path!r}"
            )
        self._client = client
        self.refs = Refs(client, layout)
        self._mode = mode
        self._inject = fault_injector
        self._write_path = write_path
        self._attempts = TransactionAttempts(client, clock)
        self._infos = infos

    async def aclose(self) -> None:
        """Stop background rollbacks (the server expires what they did not release)."""
        await self._attempts.aclose()

    async def _fault(self, point: FaultPoint, batch_id: str, players: Sequence[str]) -> None:
        if self._inject is not None:
            await self._inject(point, batch_id, list(players))

    # -- one attempt -----------------------------------------------------------------

    async def write(
        self, batch_id: str, group: Sequence[PlayerCompletion], state: GroupState
    ) -> GroupOutcome:
        """Make ONE attempt at recording ``group`` (retries are the caller's).

        Within the group the first completion of a player wins; later ones
        with the same player are duplicates. ``state`` carries what earlier
        attempts of this group learned; pass the same one to every attempt.

        Raises:
            BatchNotFoundError: The batch document does not exist; nothing was written.
            WriteFailedError: A non-retryable Firestore error; nothing was written.
            google.api_core.exceptions.GoogleAPICallError: Retryable errors, unchanged.
        """
        firsts = firsts_of(group)
        await self._fault(FaultPoint.BEFORE_BEGIN, batch_id, list(firsts))
        try:
            info = self._infos.cached(batch_id)
            unchecked = not all(c.checked for c in group)
            written: GroupOutcome | None = None
            if (
                info is None
                and unchecked
                and self.first_touch_unchecked
                and not self._whole_map(firsts)
            ):
                written, info = await self._first_touch(batch_id, group, firsts, state)
            if written is None:
                if info is None:
                    info = await self._infos.get(batch_id)
                if unchecked and not info.accepts_unchecked():
                    raise SettingsNeeded(f"batch {batch_id!r} needs its settings checked")
                written = await self._write_with(batch_id, group, firsts, state, info)
        except gexc.NotFound as exc:
            raise batch_not_found(batch_id, self.refs.layout.collection) from exc
        except (gexc.InvalidArgument, gexc.FailedPrecondition, gexc.PermissionDenied) as exc:
            raise WriteFailedError(f"Firestore refused the write to batch {batch_id!r}") from exc
        if info is not None and not state.split and all(p in state.resolved for p in firsts):
            info.spend(state.keys())  # told now: its ids in open_writes may go
        recorded = tuple(
            firsts[c.player] == i and state.resolved.get(c.player, False)
            for i, c in enumerate(group)
        )
        late = tuple(r and c.player in state.late for r, c in zip(recorded, group, strict=True))
        return dataclasses.replace(written, recorded=recorded, late=late)

    @property
    def first_touch_unchecked(self) -> bool:
        """Whether a first touch may queue before the settings read (``_first_touch``)."""
        return self._write_path == "auto" and self._mode.writes_subcollection

    async def _write_with(
        self,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
        info: BatchInfo,
    ) -> GroupOutcome:
        """One attempt by the path the batch's settings and this process's mode call for."""
        # LEGACY players have no completion document: where the batch may have
        # some (LEGACY mode; a batch not backfilled), the array is read first (a
        # plain read and a conditional Commit, or a transaction on request).
        legacy_read = not (self._mode.writes_subcollection and info.guarded)
        if self._write_path == "auto" and not legacy_read and not self._whole_map(firsts):
            return await self._write_lock_free(batch_id, group, firsts, state, info)
        if self._write_path == "auto":
            return await self._write_optimistic(batch_id, group, firsts, state, legacy_read, info)
        return await self._write_transaction(batch_id, group, firsts, state, legacy_read, info)

    async def _first_touch(
        self,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
    ) -> tuple[GroupOutcome | None, BatchInfo | None]:
        """A process's first write to a batch: the Commit beside the settings read.

        The Commit creates the completion documents and updates the batch, as a
        lock-free group does, and requires the batch's ``UNCHECKED`` marker to exist:
        only a batch born guarded, without roster or deadline has one, and for it the
        settings can check nothing. Any other batch refuses the Commit whole (NOT_FOUND;
        ALREADY_EXISTS when a member exists): nothing is written, and the group goes the
        usual way once the settings are read. Returns (the outcome if it committed, the
        batch's settings; None if they could not be read after the Commit landed).
        """
        load = asyncio.ensure_future(self._infos.get(batch_id))
        load.add_done_callback(_retrieved)
        pending = [group[i] for p, i in firsts.items() if p not in state.resolved]
        if not pending:
            return None, await load
        refs = {c.player: self.refs.completion(batch_id, c.player) for c in pending}
        await self._fault(FaultPoint.AFTER_READS, batch_id, list(refs))
        marker = update_write(
            document_name(self.refs.unchecked(batch_id)), {f.UNCHECKED_TOUCHES: Increment(1)}
        )
        writes, results_at = self._group_commit(batch_id, pending, refs, state, [], marker)
        await self._fault(FaultPoint.BEFORE_COMMIT, batch_id, list(refs))
        try:
            state.commits += 1
            results = await commit_writes(self._client, writes)
        except (gexc.NotFound, gexc.Conflict):
            return None, await load  # refused whole: nothing written
        outcome, legacy_only = _landed(pending, state, results, results_at)
        info: BatchInfo | None = None
        try:
            info = await load
        except Exception as exc:  # the write landed: its callers are told so all the same
            logger.warning(
                "batch %r: recorded, but its settings could not be read (%r); the batch is "
                "checked for completion on its next touch",
                batch_id,
                exc,
                extra={"batch_id": batch_id},
            )
        if info is not None:
            self._confirm(batch_id, info, legacy_only)
            if not info.accepts_unchecked():  # a marker left by an earlier batch of this id
                logger.error(
                    "batch %r has settings to check but an 'unchecked' marker: a completion "
                    "was recorded unchecked",
                    batch_id,
                    extra={"batch_id": batch_id},
                )
        await self._fault(FaultPoint.AFTER_COMMIT, batch_id, list(refs))
        return outcome, info

    def _group_commit(
        self,
        batch_id: str,
        pending: Sequence[PlayerCompletion],
        refs: dict[str, AsyncDocumentReference],
        state: GroupState,
        spent: list[str],
        *extra: Write,
    ) -> tuple[list[Write], ResultsAt]:
        """A lock-free group's Commit: its completion documents, ``extra``, the batch update.

        The batch update goes last: its transform results are what the Commit reads back.
        """
        update, results_at = batch_update(
            self._mode, pending, docs=True, write_key=state.write_id, spent=spent
        )
        writes = [
            *(
                create_write(document_name(refs[c.player]), self._completion_doc(c, state))
                for c in pending
            ),
            *extra,
            update_write(document_name(self.refs.batch(batch_id)), update),
        ]
        return writes, results_at

    @staticmethod
    def _confirm(batch_id: str, info: BatchInfo, legacy_only: int) -> None:
        """What a lock-free Commit read back: a legacy-only player means not guarded."""
        if legacy_only > 0 and info.guarded:
            logger.warning(
                "batch %r has players only in the legacy array (a LEGACY writer older than "
                "this version?); its next writes go through a transaction",
                batch_id,
                extra={"batch_id": batch_id, "legacy_only_count": legacy_only},
            )
            info.guarded = False

    async def _write_lock_free(
        self,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
        info: BatchInfo,
    ) -> GroupOutcome:
        """Commit the unresolved members; on ALREADY_EXISTS find which exist and go again.

        Where most groups of the batch meet an existing member (redeliveries in flight
        in other processes), the members are read first, so that one conflict does not
        refuse, and re-send, the whole group. A conflict after the group has read its
        members is a member another process committed since (a race with a write in
        flight): the member the refusal names is set aside and read beside the
        re-sent Commit, so that the rest pay one round trip, not two.
        """
        batch_ref = self.refs.batch(batch_id)
        pending = [group[i] for p, i in firsts.items() if p not in state.resolved]
        seen = GroupOutcome(())
        conflicted = read = False
        if info.reads_first and len(pending) > 1:
            refs = {c.player: self.refs.completion(batch_id, c.player) for c in pending}
            found, seen = await read_after_conflict(self.refs, batch_ref, refs, state)
            read, conflicted = True, bool(found)
            pending = [c for c in pending if c.player not in found]
        await self._fault(FaultPoint.AFTER_READS, batch_id, [c.player for c in pending])
        aside: dict[str, asyncio.Task[tuple[set[str], GroupOutcome]]] = {}
        try:
            for _ in range(_MAX_CONFLICT_ROUNDS):
                if not pending:
                    break
                refs = {c.player: self.refs.completion(batch_id, c.player) for c in pending}
                spent = info.to_delete()
                writes, results_at = self._group_commit(batch_id, pending, refs, state, spent)
                await self._fault(FaultPoint.BEFORE_COMMIT, batch_id, list(refs))
                try:
                    state.commits += 1
                    results = await commit_writes(self._client, writes)
                except gexc.Conflict as exc:
                    conflicted = True
                    named = named_member(exc, refs) if read and len(pending) > 1 else None
                    if named is not None:
                        # Whose it is does not change what the rest commit: read it beside.
                        aside[named] = asyncio.ensure_future(
                            read_after_conflict(self.refs, batch_ref, {named: refs[named]}, state)
                        )
                        pending = [c for c in pending if c.player != named]
                        continue
                    # Some member exists. One lock-free read of the batch and the members
                    # says which, whose they are, and where the batch stands.
                    read = True
                    found, seen = await read_after_conflict(self.refs, batch_ref, refs, state)
                    still = [c for c in pending if c.player not in found]
                    if len(still) == len(pending):
                        # Nothing we meant to create exists after all (deleted meanwhile?):
                        # back off and try again rather than spin.
                        raise gexc.Aborted("ALREADY_EXISTS, but no member exists") from None  # type: ignore[no-untyped-call]
                    pending = still
                    await self._fault(FaultPoint.AFTER_READS, batch_id, [c.player for c in pending])
                    continue
                outcome, legacy_only = _landed(pending, state, results, results_at)
                self._confirm(batch_id, info, legacy_only)
                info.spent.difference_update(spent)
                info.note_conflict(conflicted)
                await self._set_aside(aside, seen)
                await self._fault(FaultPoint.AFTER_COMMIT, batch_id, list(refs))
                return outcome
            if pending:
                raise gexc.Aborted("too many rounds of conflicting completions")  # type: ignore[no-untyped-call]
            # Every member was found or set aside (the last one may be in the last round).
            seen = await self._set_aside(aside, seen)
            info.note_conflict(conflicted)
            return seen
        finally:
            for task in aside.values():
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a failed read means the next attempt reads

    @staticmethod
    async def _set_aside(
        aside: dict[str, asyncio.Task[tuple[set[str], GroupOutcome]]], seen: GroupOutcome
    ) -> GroupOutcome:
        """Wait for the reads of the members set aside; the latest view of the batch.

        Raises:
            google.api_core.exceptions.Aborted: A member named by a refusal was not
                found (the next attempt commits it again).
        """
        for player, task in aside.items():
            found, seen = await task
            if player not in found:
                raise gexc.Aborted(f"ALREADY_EXISTS named {player!r}, which does not exist")  # type: ignore[no-untyped-call]
        return seen

    async def _write_transaction(
        self,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
        legacy_read: bool,
        info: BatchInfo,
    ) -> GroupOutcome:
        staged_by: list[_Staged] = []

        async def stage(txn: AsyncTransaction) -> _Staged:
            state.commits += 1  # each attempt of the transaction ends in its Commit
            staged_by.append(
                await self._stage(txn, txn, batch_id, group, firsts, state, legacy_read, info)
            )
            return staged_by[-1]

        try:
            staged, transaction = await self._attempts.attempt(stage)
        except gexc.ServiceUnavailable as exc:
            if not isinstance(exc.__cause__, REFUSED_AT_COMMIT):
                raise
            if staged_by and not staged_by[-1].new:
                # A commit with nothing in it: its outcome changes nothing stored.
                return await self._committed(batch_id, firsts, state, info, staged_by[-1], None)
            # Refused after it was sent (the client re-sent a commit whose answer was
            # lost): the next attempt's reads decide by write id, however many answers
            # are lost. Refused again and again with nothing of ours found in between,
            # it is refused for real: nothing was written.
            state.uncertain_commits += 1
            if state.uncertain_commits > _MAX_UNCERTAIN_COMMITS:
                raise exc.__cause__ from None
            raise
        return await self._committed(
            batch_id, firsts, state, info, staged, transaction.write_results
        )

    async def _write_optimistic(
        self,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
        legacy_read: bool,
        info: BatchInfo,
    ) -> GroupOutcome:
        """Read without a lock, then ONE Commit on the condition that the batch is unchanged.

        Where the legacy array must be read (LEGACY mode, an unguarded batch, a
        whole-map write), a transaction's read would lock the hot batch document
        and serialise every writer behind lock waits. Every write of every mode
        updates the batch document, so its ``update_time`` is the version of all
        the batch's state: a plain read and a Commit with an ``update_time``
        precondition is as safe, and a Commit refused because another write
        landed meanwhile is read again (ABORTED: the retry loop backs off).
        """
        write = self._client.batch()
        staged = await self._stage(None, write, batch_id, group, firsts, state, legacy_read, info)
        results: Any = None
        if staged.new:
            try:
                state.commits += 1
                results = await write.commit(retry=None)
            except (gexc.FailedPrecondition, gexc.Conflict):
                # The batch changed (or a member appeared) since the read: read again.
                raise gexc.Aborted("batch changed since it was read") from None  # type: ignore[no-untyped-call]
        return await self._committed(batch_id, firsts, state, info, staged, results)

    async def _committed(
        self,
        batch_id: str,
        firsts: dict[str, int],
        state: GroupState,
        info: BatchInfo,
        staged: _Staged,
        write_results: Any,
    ) -> GroupOutcome:
        """The outcome of a staged write that committed (or had nothing to write)."""
        if staged.guarded is not None:
            info.guarded = staged.guarded
        outcome = GroupOutcome((), staged.counted, expired=staged.expired)
        if not staged.new or staged.results_at is None:
            return outcome
        info.spent.difference_update(staged.spent)
        state.resolved.update(dict.fromkeys(staged.new, True))
        committed, _ = staged.results_at.read((write_results or [])[-1])
        if committed.expired:
            state.late.update(staged.new)
        await self._fault(FaultPoint.AFTER_COMMIT, batch_id, list(firsts))
        if staged.counted is None:
            return committed
        return dataclasses.replace(outcome, expired=committed.expired)

    async def _stage(
        self,
        transaction: AsyncTransaction | None,
        writes: AsyncTransaction | AsyncWriteBatch,
        batch_id: str,
        group: Sequence[PlayerCompletion],
        firsts: dict[str, int],
        state: GroupState,
        legacy_read: bool,
        info: BatchInfo,
    ) -> _Staged:
        """Stage the group's unresolved members in ``writes``.

        Reads in ``transaction``; without one (the optimistic path) the batch update
        carries an ``update_time`` precondition from the read.
        """
        batch_ref = self.refs.batch(batch_id)
        pending = [p for p in firsts if p not in state.resolved]
        refs = {p: self.refs.completion(batch_id, p) for p in pending}
        # Whether (and when) this group's earlier attempts landed: what they wrote.
        mine = [*decode.write_fields(state.write_id), *map(decode.write_field, state.plans)]
        fields: list[str] = []
        if legacy_read:
            fields = [f.COMPLETED_PLAYERS, f.TOTAL_PREDICTIONS, *f.GUARD_FIELDS, *f.COUNT_FIELDS]
            fields += _BATCH_FINISH
        if self._whole_map(pending):
            fields.append(f.PREDICTIONS_BY_PLAYER)
        if fields:
            fields += mine
        # One read: the batch (where it is read) and the members' completion documents.
        data, members, version = await read_group(self.refs, transaction, batch_ref, refs, fields)
        if not fields and any(m.get(f.WRITE_ID) == state.write_id for m in members.values()):
            # Our own earlier attempt committed: did it land after the batch expired?
            data, _, version = await read_group(self.refs, transaction, batch_ref, {}, mine)
        resolve_found(members, data, state)
        for attempt_id, players in state.plans.items():
            landed, late = decode.write_landed(data, attempt_id)
            if landed:  # an earlier attempt without completion documents committed
                state.resolved.update(dict.fromkeys(players, True))
                if late:
                    state.late.update(players)
        if any(state.resolved.get(p) for p in pending):
            state.uncertain_commits = 0  # what was uncertain is found: it landed
        array = set(data.get(f.COMPLETED_PLAYERS) or ()) if legacy_read else set()
        # Completion documents guard the batch: every writer keeps them, LEGACY included.
        docs = self._mode.writes_subcollection or decode.guarded(data)
        whole_map: dict[str, Any] | None = None
        if f.PREDICTIONS_BY_PLAYER in fields:
            stored = data.get(f.PREDICTIONS_BY_PLAYER)
            whole_map = dict(stored) if isinstance(stored, dict) else {}
        if legacy_read:
            # Players recorded in LEGACY mode are in the array without a completion
            # doc: they are duplicates too, or Increment counts them twice.
            for player in pending:
                if player in array:
                    state.resolved.setdefault(player, False)
        await self._fault(FaultPoint.AFTER_READS, batch_id, list(firsts))

        new = [group[firsts[p]] for p in pending if p not in state.resolved]
        # What the batch's guard is after this write (the commit is conditional on the
        # batch being unchanged since this read). A batch with no legacy structure at
        # all (an older version's SUBCOLLECTION_ONLY batch) is stated guarded by the
        # first write that creates completion documents on it; one with a legacy array
        # waits for backfill (a LEGACY writer of 0.1 keeps no legacy_only_count: only
        # the array tells its players).
        was_guarded = decode.guarded(data)
        guard = (
            legacy_read
            and docs
            and not was_guarded
            and f.COMPLETED_PLAYERS not in data
            and f.TOTAL_PREDICTIONS not in data
            and not as_int(data.get(f.LEGACY_ONLY_COUNT))
        )
        expired = data.get(f.STATUS) == f.STATUS_EXPIRED
        if not new:
            # Nothing committed: only what is stored counts (a guard never written is
            # never believed).
            guarded = was_guarded if legacy_read else None
            counted = (
                decode.counted(data, array_counts=not self._mode.reads_subcollection)
                if legacy_read
                else None
            )
            await self._fault(FaultPoint.BEFORE_COMMIT, batch_id, list(firsts))
            return _Staged((), None, counted, expired, guarded)
        guarded = (was_guarded or guard) if legacy_read else None  # once committed
        names = [c.player for c in new]
        if docs:
            write_key = state.write_id  # its completion documents carry it too
            for completion in new:
                writes.create(refs[completion.player], self._completion_doc(completion, state))
        else:
            write_key = f"{state.write_id}.{len(state.plans)}"
            state.plans[write_key] = frozenset(names)
        spent = info.to_delete()
        update, results_at = batch_update(
            self._mode, new, whole_map, docs=docs, write_key=write_key, spent=spent, guard=guard
        )
        if transaction is None:
            if version is None:
                raise gexc.Aborted("the batch was not read before an optimistic write")  # type: ignore[no-untyped-call]
            option = self._client.write_option(last_update_time=version)
            writes.update(batch_ref, update, option=option)
        else:
            writes.update(batch_ref, update)
        counted = None
        if legacy_read:  # the batch's count after this commit, from what the transaction read
            after = dict(data)
            if docs:
                after[f.COMPLETED_COUNT] = as_int(data.get(f.COMPLETED_COUNT)) + len(new)
            else:
                after[f.LEGACY_ONLY_COUNT] = as_int(data.get(f.LEGACY_ONLY_COUNT)) + len(new)
            if self._mode.writes_legacy:
                after[f.COMPLETED_PLAYERS] = [*array, *names]
            if guard:
                after[f.COMPLETIONS_BACKFILLED] = True
            counted = decode.counted(after, array_counts=not self._mode.reads_subcollection)
        await self._fault(FaultPoint.BEFORE_COMMIT, batch_id, list(firsts))
        return _Staged(tuple(names), results_at, counted, expired, guarded, tuple(spent))

    # -- pieces ----------------------------------------------------------------------

    def _completion_doc(self, completion: PlayerCompletion, state: GroupState) -> dict[str, Any]:
        return completion_doc(completion.player, completion.predictions_count, state.write_id)

    def _whole_map(self, players: Iterable[str]) -> bool:
        """Whether a write of ``players`` rewrites the whole legacy map (and must read it)."""
        return self._mode.writes_legacy and any(needs_whole_map_write(p) for p in players)


def _landed(
    pending: Sequence[PlayerCompletion], state: GroupState, results: Any, results_at: ResultsAt
) -> tuple[GroupOutcome, int]:
    """A group Commit landed: its members are resolved (LATE if the batch had expired).

    Returns the outcome the batch update's transform results say, and the batch's
    ``legacy_only_count``.
    """
    outcome, legacy_only = results_at.read(results[-1])
    for completion in pending:
        state.resolved[completion.player] = True
        if outcome.expired:
            state.late.add(completion.player)
    return outcome, legacy_only


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's exception (whoever awaited it may have left)."""
    if not task.cancelled():
        task.exception()
