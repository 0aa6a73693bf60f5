"""The write strategies compared, as one table: plain-client baselines and the manager.

Every strategy records one completion per call into the DUAL_WRITE layout of
DESIGN.md section 2 (legacy array + map + total, completion document +
counters), so a cell's final documents can be checked the same way for all.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.cloud.firestore_v1 import SERVER_TIMESTAMP, ArrayUnion, Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction, async_transactional
from google.cloud.firestore_v1.field_path import FieldPath

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate._retry import classify

MODE = MigrationMode.DUAL_WRITE
COMPLETIONS = "completions"
# Field names of the data layout (DESIGN.md section 2).
PLAYERS, BY_PLAYER, TOTAL = "completed_players", "predictions_by_player", "total_predictions"
COUNT, TOTAL_SUB = "completed_count", "total_predictions_subcoll"


def player_field(player: str) -> str:
    """``predictions_by_player.<player>`` built safely (never by string formatting)."""
    return FieldPath(BY_PLAYER, player).to_api_repr()


def completion_doc(player: str, count: int) -> dict[str, Any]:
    """The completion document of one player."""
    return {"player_lookup": player, "predictions_count": count, "completed_at": SERVER_TIMESTAMP}


def legacy_update(players: dict[str, int]) -> dict[str, Any]:
    """Legacy-structure transforms for ``players`` (player -> predictions)."""
    update: dict[str, Any] = {
        PLAYERS: ArrayUnion(list(players)),
        TOTAL: Increment(sum(players.values())),
        "updated_at": SERVER_TIMESTAMP,
    }
    update.update({player_field(p): n for p, n in players.items()})
    return update


def counters_update(players: dict[str, int]) -> dict[str, Any]:
    """New-structure counter transforms for ``players``."""
    return {
        COUNT: Increment(len(players)),
        TOTAL_SUB: Increment(sum(players.values())),
        "last_updated": SERVER_TIMESTAMP,
    }


# -- plain-client writes: one completion, no retry of our own ------------------------

Tick = Callable[[], None]
"""Called once per transaction attempt, to count attempts."""
PlainWrite = Callable[[AsyncClient, Any, Any, str, int, Tick], Awaitable[int]]
"""``(client, batch_ref, completion_ref, player, count, tick) -> commits``."""


async def two_writes(client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick) -> int:
    """The old bug: the legacy update, then the subcollection write; not atomic."""
    tick()
    await batch.update(legacy_update({p: n}))
    wb = client.batch()
    wb.set(comp, completion_doc(p, n))
    wb.update(batch, counters_update({p: n}))
    await wb.commit()
    return 2


async def batched_write(
    client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick
) -> int:
    """One ``WriteBatch``: atomic, one round trip, not idempotent."""
    tick()
    wb = client.batch()
    wb.set(comp, completion_doc(p, n))
    wb.update(batch, {**legacy_update({p: n}), **counters_update({p: n})})
    await wb.commit()
    return 1


async def create_batch_write(
    client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick
) -> int:
    """One ``WriteBatch`` that ``create``s the completion: a redelivery fails whole
    (ALREADY_EXISTS), so it is idempotent in one round trip, without a transaction."""
    tick()
    wb = client.batch()
    wb.create(comp, completion_doc(p, n))
    wb.update(batch, {**legacy_update({p: n}), **counters_update({p: n})})
    await wb.commit()
    return 1


async def blind_txn(client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick) -> int:
    """(b) The old fix (seed file): ``async_transactional`` dual-write, reads nothing."""

    async def body(tx: AsyncTransaction) -> None:
        tick()
        tx.update(batch, legacy_update({p: n}))
        tx.set(comp, completion_doc(p, n))
        tx.update(batch, counters_update({p: n}))

    await async_transactional(body)(client.transaction())
    return 1


async def idempotent_txn(
    client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick
) -> int:
    """Reads the completion document, writes only if absent: the manager's write, by hand."""

    async def body(tx: AsyncTransaction) -> None:
        tick()
        if (await comp.get(transaction=tx)).exists:
            return
        tx.create(comp, completion_doc(p, n))
        tx.update(batch, {**legacy_update({p: n}), **counters_update({p: n})})

    await async_transactional(body)(client.transaction())
    return 1


async def rmw_txn(client: AsyncClient, batch: Any, comp: Any, p: str, n: int, tick: Tick) -> int:
    """(a) The natural naive code: read the batch document, compute, write it back."""

    async def body(tx: AsyncTransaction) -> None:
        tick()
        data = (await batch.get(transaction=tx)).to_dict() or {}
        players = list(data.get(PLAYERS, []))
        if p in players:
            return
        tx.update(
            batch,
            {
                PLAYERS: [*players, p],
                player_field(p): n,
                TOTAL: data.get(TOTAL, 0) + n,
                COUNT: data.get(COUNT, 0) + 1,
                TOTAL_SUB: data.get(TOTAL_SUB, 0) + n,
                "updated_at": SERVER_TIMESTAMP,
                "last_updated": SERVER_TIMESTAMP,
            },
        )
        tx.set(comp, completion_doc(p, n))

    await async_transactional(body)(client.transaction())
    return 1


# -- recorders: what the load driver calls --------------------------------------------


@dataclass(frozen=True)
class Costs:
    """What a recorder spent since it was created."""

    attempts: int = 0  # transaction (or write) attempts, committed or not
    commits: int = 0  # committed transactions or batches (the manager: committed groups)
    aborts: dict[str, int] = field(default_factory=dict)  # failed attempts by cause
    duplicates: int = 0  # calls told "already recorded" (only the manager can tell)
    grouped: int = 0  # completions carried by the committed groups (plain: one per commit)
    validation_reads: int | None = None  # documents read by validation, if the manager says


class Recorder(Protocol):
    """Records completions into one collection and counts what it cost."""

    async def record(self, batch_id: str, player: str, count: int) -> int:
        """Record one completion; returns the transaction attempts it took."""
        ...

    def counters(self) -> Costs:
        """What it cost since creation."""
        ...

    async def prepare(self, batch_ids: Sequence[str]) -> None:
        """Read what it keeps per batch (unmeasured: a process's earlier messages did)."""
        ...

    async def aclose(self) -> None:
        """Release resources (drain the manager)."""
        ...


class PlainRecorder:
    """A plain-client write with the client's own retry (5 attempts, no backoff)."""

    def __init__(self, client: AsyncClient, collection: str, write: PlainWrite) -> None:
        self._client, self._collection, self._write = client, collection, write
        self.attempts = self.commits = 0
        self.aborts: Counter[str] = Counter()

    async def record(self, batch_id: str, player: str, count: int) -> int:
        batch = self._client.collection(self._collection).document(batch_id)
        completion = batch.collection(COMPLETIONS).document(player)
        tries = 0

        def tick() -> None:
            nonlocal tries
            tries += 1

        try:
            commits = await self._write(self._client, batch, completion, player, count, tick)
        except Exception as exc:
            self.aborts["aborted"] += tries - 1  # the client retries only ABORTED commits
            self.aborts[classify(exc).value] += 1
            raise
        finally:
            self.attempts += tries
        self.commits += commits  # not ``+= await``: concurrent callers would lose counts
        self.aborts["aborted"] += tries - 1
        return tries

    def counters(self) -> Costs:
        aborts = {k: v for k, v in self.aborts.items() if v}
        return Costs(self.attempts, self.commits, aborts, grouped=self.commits)

    async def prepare(self, batch_ids: Sequence[str]) -> None:
        return None  # keeps nothing per batch

    async def aclose(self) -> None:
        return None


class ManagerRecorder:
    """``AsyncBatchStateManager`` with the given knobs; costs come from ``stats()``."""

    def __init__(self, client: AsyncClient, collection: str, **knobs: Any) -> None:
        self.manager = AsyncBatchStateManager(client, collection=collection, mode=MODE, **knobs)

    async def record(self, batch_id: str, player: str, count: int) -> int:
        return (await self.manager.record_completion(batch_id, player, count)).attempts

    def counters(self) -> Costs:
        s = self.manager.stats()
        return Costs(
            s.attempts,
            s.commits,
            dict(s.failures_by_cause),
            s.duplicates,
            grouped=sum(size * n for size, n in s.group_sizes.items()),
            # Being added to ``Stats`` by another change; absent: not reported.
            validation_reads=getattr(s, "validation_reads", None),
        )

    async def prepare(self, batch_ids: Sequence[str]) -> None:
        # The batch settings each process caches on its first message of a batch; no
        # public call reads them without writing, so the cache is filled directly.
        infos = self.manager._infos
        await asyncio.gather(*(infos.get(b) for b in batch_ids))

    async def aclose(self) -> None:
        await self.manager.aclose(drain_timeout=10.0)


@dataclass(frozen=True)
class Strategy:
    """One row of the comparison."""

    key: str
    label: str
    open: Callable[[AsyncClient, str], Recorder]
    pace: float | None = None
    """``document_write_rate`` as a share of a ceiling cell's modelled writes/s per document."""

    def recorder(self, client: AsyncClient, collection: str, ceiling: float = 0.0) -> Recorder:
        """A recorder for one process; a pacing strategy paces to ``ceiling`` (0: none)."""
        if self.pace is None or ceiling <= 0:
            return self.open(client, collection)
        return ManagerRecorder(client, collection, document_write_rate=self.pace * ceiling)


def _plain(write: PlainWrite) -> Callable[[AsyncClient, str], Recorder]:
    return lambda client, collection: PlainRecorder(client, collection, write)


_MANAGER_KNOBS = inspect.signature(AsyncBatchStateManager).parameters


def _managed(**knobs: Any) -> Callable[[AsyncClient, str], Recorder]:
    # ``write_path`` is newer than some managers this benchmark runs against: without it
    # the manager has only the transactional path, which is what "transaction" asks for.
    if "write_path" not in _MANAGER_KNOBS:
        knobs.pop("write_path", None)
    return lambda client, collection: ManagerRecorder(client, collection, **knobs)


def has_write_path() -> bool:
    """Whether this manager has ``write_path`` (else ``manager`` is the transactional path)."""
    return "write_path" in _MANAGER_KNOBS


STRATEGIES: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("two_writes", "two separate writes (old bug)", _plain(two_writes)),
        Strategy("batched_write", "one batched write", _plain(batched_write)),
        Strategy(
            "create_batch_write", "batched write, create precondition", _plain(create_batch_write)
        ),
        Strategy("rmw_txn", "(a) plain read-modify-write txn", _plain(rmw_txn)),
        Strategy("blind_txn", "(b) plain blind txn (old fix)", _plain(blind_txn)),
        Strategy("idempotent_txn", "plain idempotent txn", _plain(idempotent_txn)),
        Strategy("manager_no_coalesce", "(c) manager, coalesce=False", _managed(coalesce=False)),
        Strategy("manager", "(d) manager, defaults", _managed()),
        Strategy(
            "manager_txn",
            "(d) manager, write_path=transaction",
            _managed(write_path="transaction"),
        ),
        # One Commit in flight per batch per process: under a per-document write ceiling
        # the group grows with the arrivals instead of queueing Commits at the document.
        Strategy(
            "manager_one_in_flight",
            "(d) manager, max_in_flight_per_batch=1",
            _managed(max_in_flight_per_batch=1),
        ),
        # Fleet pacing: each process spaces its writes of a batch so that the fleet's
        # stay at 0.8 of the cell's modelled ceiling (outside ceiling cells: defaults).
        Strategy(
            "manager_paced",
            "(d) manager, document_write_rate=0.8 C (ceiling cells; elsewhere unpaced)",
            _managed(),
            pace=0.8,
        ),
        # The defaults include sampled validation (10 % of completions start a background
        # scan of the batch); this variant shows what it costs.
        Strategy(
            "manager_no_validation", "(d) manager, validation_rate=0", _managed(validation_rate=0.0)
        ),
        Strategy(
            "manager_txn_no_validation",
            "(d) manager, write_path=transaction, validation_rate=0",
            _managed(write_path="transaction", validation_rate=0.0),
        ),
    )
}
OVERHEAD = (
    "two_writes",
    "batched_write",
    "create_batch_write",
    "blind_txn",
    "idempotent_txn",
    "manager_no_coalesce",
    "manager",
    "manager_txn",
    "manager_no_validation",
)
SWEEP = (
    "rmw_txn",
    "blind_txn",
    "manager_no_coalesce",
    "manager",
    "manager_txn",
    "manager_no_validation",
)
MULTIPROCESS = ("blind_txn", "manager", "manager_txn")
REDELIVERY = ("blind_txn", "manager", "manager_txn")
OPEN_LOOP = ("blind_txn", "manager", "manager_txn")
"""The open-loop sweeps: the old fix, the manager's default and its transactional path."""
NOT_IDEMPOTENT = frozenset({"two_writes", "batched_write", "blind_txn"})
"""Strategies that count a redelivered completion twice: their cells are reported
not exact, which the open-loop SLO does not hold against them (it is the finding)."""
RPC_COST = ("batched_write", "blind_txn", "manager_no_validation", "manager_txn_no_validation")
"""Strategies whose RPCs per group are counted in isolation (no background reads)."""
