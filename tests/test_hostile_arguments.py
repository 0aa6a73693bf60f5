"""Every argument of every public entry point against a table of hostile values, on the emulator.

A value an argument refuses raises that argument's ``BatchStateError`` subclass
(exactly that class), its message names the argument, and it is refused
before any I/O: not one RPC is sent, and the test's collections (batches,
their completion and roster documents, the migration checkpoints) are as they
were. A value an argument accepts runs the call to its end: a result, or a
``BatchStateError`` (a batch that does not exist...), never another exception.

And with the client's channel closed, every entry point that reads or writes
raises a ``BatchStateError``, never ``grpc.aio.UsageError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import (
    AsyncBatchStateManager,
    BatchStateError,
    ConfigurationError,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    Layout,
    MigrationMode,
    RetryPolicy,
    WriteFailedError,
)
from async_batchstate.consistency import SlackWebhookAlerter, reconcile, validate
from async_batchstate.migration import (
    FileCheckpoint,
    FirestoreCheckpoint,
    MigrationError,
    backfill,
    backfill_batch,
    cleanup_legacy,
    status,
    verify,
)
from async_batchstate.testing import EmulatorInfo, RpcCounter, aclose_client, make_client

pytestmark = [pytest.mark.guarantee("typed-errors"), pytest.mark.guarantee("bad-input")]


def _function(*args: object) -> None:
    """A plain callable: what a callback, a hook or a progress argument may be."""


HOSTILE: dict[str, Callable[[], object]] = {
    "None": lambda: None,
    "True": lambda: True,
    "zero": lambda: 0,
    "int": lambda: 5,
    "negative": lambda: -1,
    "huge int": lambda: 2**64,
    "float": lambda: 1.5,
    "nan": lambda: math.nan,
    "inf": lambda: math.inf,
    "str": lambda: "5",
    "empty str": lambda: "",
    "bytes": lambda: b"p1",
    "list": lambda: ["p1"],
    "nested list": lambda: [["p1"]],
    "dict": lambda: {"p1": 1},
    "generator": lambda: (p for p in ["p1"]),
    "naive datetime": lambda: dt.datetime(2030, 1, 1),
    "aware datetime": lambda: dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "timedelta": lambda: dt.timedelta(seconds=1),
    "function": lambda: _function,
    "object": lambda: object(),
}
"""Hostile values by name (made afresh for each test: a generator is read once)."""

SECONDS = frozenset({"zero", "int", "float", "huge int"})
"""What a duration in seconds (>= 0) accepts."""


@dataclass(frozen=True)
class Arg:
    """One argument: the error a refused value raises, and the values it accepts."""

    error: type[BatchStateError]
    accepts: frozenset[str] = frozenset()
    errors: Mapping[str, type[BatchStateError]] = field(default_factory=dict)
    """Per hostile value, an error other than ``error``."""
    named: tuple[str, ...] = ()
    """What the message may call the argument besides its parameter name."""
    drop: tuple[str, ...] = ()
    """Base arguments left out when this one is under test."""


def accepts(*names: str | frozenset[str]) -> frozenset[str]:
    """The union of hostile value names and sets of them."""
    out: set[str] = set()
    for name in names:
        out |= {name} if isinstance(name, str) else name
    return frozenset(out)


@dataclass
class Target:
    """What an entry point is called on: a seeded collection, its client and a manager."""

    client: AsyncClient
    collection: str
    layout: Layout
    manager: AsyncBatchStateManager
    folder: Path


Call = Callable[[Target, dict[str, Any]], Any]


@dataclass(frozen=True)
class Entry:
    """A public entry point: how to call it, valid arguments, and the rule of each argument."""

    name: str
    call: Call
    base: Callable[[Target], dict[str, Any]]
    args: dict[str, Arg]


BATCH_ID = Arg(InvalidIdError, accepts("str"), named=("batch id",))
CLIENT = Arg(InvalidInputError)
LAYOUT = Arg(InvalidInputError)
MODE = Arg(InvalidInputError)
RETRY = Arg(InvalidInputError, accepts("None"))
CLOCK = Arg(InvalidInputError)
BOOL = Arg(InvalidInputError, accepts("True"))
BATCH_IDS = Arg(
    InvalidInputError,
    accepts("None", "list", "generator"),
    errors={"nested list": InvalidIdError},
    named=("batch id",),
)
CONCURRENCY = Arg(MigrationError, accepts("int", "huge int"))
PROGRESS = Arg(InvalidInputError, accepts("None", "function"))


def _method(name: str) -> Call:
    return lambda target, kwargs: getattr(target.manager, name)(**kwargs)


def _store(target: Target, mode: MigrationMode = MigrationMode.DUAL_WRITE) -> dict[str, Any]:
    return {"client": target.client, "layout": target.layout, "mode": mode}


MANAGER_ENTRIES = [
    Entry(
        "create_batch",
        _method("create_batch"),
        lambda t: {"batch_id": "n", "expected_count": 2},
        {
            "batch_id": BATCH_ID,
            "expected_players": Arg(
                InvalidInputError,
                accepts("list", "generator"),
                errors={"None": ConfigurationError, "nested list": InvalidIdError},
                drop=("expected_count",),
            ),
            "expected_count": Arg(
                InvalidCountError, accepts("int"), errors={"None": ConfigurationError}
            ),
            "deadline": Arg(InvalidInputError, accepts("None", "aware datetime", "timedelta")),
        },
    ),
    Entry(
        "record_completion",
        _method("record_completion"),
        lambda t: {"batch_id": "b", "player": "p2", "predictions_count": 1},
        {
            "batch_id": BATCH_ID,
            "player": Arg(InvalidIdError, accepts("str"), named=("player id",)),
            "predictions_count": Arg(InvalidCountError, accepts("zero", "int")),
            "timeout": Arg(InvalidInputError, accepts("None", SECONDS)),
        },
    ),
    Entry(
        "expire",
        _method("expire"),
        lambda t: {"batch_id": "b", "reason": "stuck"},
        {
            "batch_id": BATCH_ID,
            "reason": Arg(InvalidInputError, accepts("None", "str", "empty str")),
        },
    ),
    Entry("finalize", _method("finalize"), lambda t: {"batch_id": "b"}, {"batch_id": BATCH_ID}),
    Entry(
        "deliver_owed_callbacks",
        _method("deliver_owed_callbacks"),
        lambda t: {"batch_id": "b"},
        {"batch_id": BATCH_ID},
    ),
    Entry(
        "get_progress",
        _method("get_progress"),
        lambda t: {"batch_id": "b"},
        {"batch_id": BATCH_ID, "include_players": BOOL},
    ),
    Entry(
        "list_batches",
        _method("list_batches"),
        lambda t: {},
        {
            "status": Arg(InvalidInputError, accepts("None")),
            "created_before": Arg(InvalidInputError, accepts("None", "aware datetime")),
            "limit": Arg(InvalidCountError, accepts("None", "int")),
            "page_size": Arg(InvalidCountError, accepts("int")),
        },
    ),
    Entry(
        "stalled",
        _method("stalled"),
        lambda t: {"older_than": 1},
        {"older_than": Arg(InvalidInputError, accepts("zero", "int", "float", "timedelta"))},
    ),
    Entry(
        "wait_until_complete",
        _method("wait_until_complete"),
        lambda t: {"batch_id": "done", "timeout": 5},
        {
            "batch_id": BATCH_ID,
            "timeout": Arg(InvalidInputError, accepts("None", SECONDS)),
            "poll_interval": Arg(InvalidInputError, accepts("int", "float", "huge int")),
        },
    ),
    Entry("validate", _method("validate"), lambda t: {"batch_id": "b"}, {"batch_id": BATCH_ID}),
    Entry(
        "reconcile",
        _method("reconcile"),
        lambda t: {"batch_id": "b"},
        {"batch_id": BATCH_ID, "source": Arg(InvalidInputError, accepts("None")), "dry_run": BOOL},
    ),
    Entry(
        "aclose",
        _method("aclose"),
        lambda t: {},
        {"drain_timeout": Arg(InvalidInputError, accepts("None", SECONDS))},
    ),
]
"""Every public method of ``AsyncBatchStateManager`` with an argument."""


SETTING = Arg(ConfigurationError)
BOOL_SETTING = Arg(ConfigurationError, accepts("True"))
CONSTRUCTOR = Entry(
    "AsyncBatchStateManager",
    lambda target, kwargs: AsyncBatchStateManager(**kwargs),
    lambda t: {"client": t.client, "collection": t.collection, "mode": MigrationMode.DUAL_WRITE},
    {
        "client": SETTING,
        "collection": Arg(InvalidIdError, accepts("str")),
        "completions_subcollection": Arg(
            InvalidIdError, accepts("str"), named=("completions subcollection",)
        ),
        "mode": Arg(ConfigurationError, accepts("None")),
        "write_path": SETTING,
        "coalesce": Arg(ConfigurationError, accepts("True")),
        "max_group_size": Arg(ConfigurationError, accepts("int")),
        "max_in_flight_per_batch": Arg(ConfigurationError, accepts("None", "int")),
        "linger": Arg(ConfigurationError, SECONDS),
        "retry": Arg(ConfigurationError, accepts("None")),
        "rate_limit": Arg(ConfigurationError, accepts("None", "int", "float", "huge int")),
        "document_write_rate": Arg(ConfigurationError, accepts("None", "int", "float", "huge int")),
        "on_complete": Arg(ConfigurationError, accepts("None", "function")),
        "on_expired": Arg(ConfigurationError, accepts("None", "function")),
        "callback_lease": Arg(ConfigurationError, accepts("int", "float", "huge int")),
        "callback_sweep_interval": Arg(
            ConfigurationError, accepts("None", "int", "float", "huge int")
        ),
        "retain_for": Arg(ConfigurationError, accepts("None", "int", "float", "timedelta")),
        "hooks": Arg(ConfigurationError),
        "legacy_array_limit": Arg(ConfigurationError, accepts("int")),
        "legacy_array_warn_ratio": Arg(ConfigurationError),
        "clock": SETTING,
        "rng": Arg(ConfigurationError, accepts("None")),
        "fault_injector": Arg(ConfigurationError, accepts("None", "function")),
        "validation_rate": Arg(ConfigurationError, accepts("zero")),
        "validation_interval": Arg(ConfigurationError, SECONDS),
        "alert_hooks": Arg(ConfigurationError),
        "validation_rng": Arg(ConfigurationError, accepts("None")),
    },
)

CONSISTENCY_ENTRIES = [
    Entry(
        "consistency.validate",
        lambda target, kwargs: validate(**kwargs),
        lambda t: _store(t) | {"batch_id": "b"},
        {
            "client": CLIENT,
            "layout": LAYOUT,
            "mode": MODE,
            "batch_id": BATCH_ID,
            "retry": RETRY,
            "clock": CLOCK,
        },
    ),
    Entry(
        "consistency.reconcile",
        lambda target, kwargs: reconcile(**kwargs),
        lambda t: _store(t) | {"batch_id": "b"},
        {
            "client": CLIENT,
            "layout": LAYOUT,
            "mode": MODE,
            "batch_id": BATCH_ID,
            "source": Arg(InvalidInputError, accepts("None")),
            "dry_run": BOOL,
            "retry": RETRY,
            "clock": CLOCK,
        },
    ),
    Entry(
        "consistency.SlackWebhookAlerter",
        lambda target, kwargs: SlackWebhookAlerter(**kwargs),
        lambda t: {"url": "https://hooks.example.invalid/x"},
        {
            "url": SETTING,
            "timeout": Arg(ConfigurationError, accepts("int", "float", "huge int")),
            "username": Arg(ConfigurationError, accepts("None", "str", "empty str")),
        },
    ),
]

_RUN_ARGS = {
    "client": CLIENT,
    "layout": LAYOUT,
    "mode": MODE,
    "batch_ids": BATCH_IDS,
    "concurrency": CONCURRENCY,
    "progress": PROGRESS,
    "retry": RETRY,
    "clock": CLOCK,
}
MIGRATION_ENTRIES = [
    Entry(
        "migration.backfill",
        lambda target, kwargs: backfill(**kwargs),
        lambda t: _store(t) | {"dry_run": True},  # an accepted value writes nothing
        _RUN_ARGS
        | {
            "dry_run": BOOL,
            "checkpoint": Arg(InvalidInputError, accepts("None")),
            "checkpoint_interval": Arg(InvalidInputError, SECONDS),
        },
    ),
    Entry(
        "migration.backfill_batch",
        lambda target, kwargs: backfill_batch(**kwargs),
        lambda t: {"client": t.client, "layout": t.layout, "batch_id": "b", "dry_run": True},
        {
            "client": CLIENT,
            "layout": LAYOUT,
            "batch_id": BATCH_ID,
            "dry_run": BOOL,
            "retry": RETRY,
            "clock": CLOCK,
        },
    ),
    Entry("migration.verify", lambda target, kwargs: verify(**kwargs), _store, _RUN_ARGS),
    Entry("migration.status", lambda target, kwargs: status(**kwargs), _store, _RUN_ARGS),
    Entry(
        "migration.cleanup_legacy",
        lambda target, kwargs: cleanup_legacy(**kwargs),
        lambda t: _store(t, MigrationMode.SUBCOLLECTION_ONLY),
        _RUN_ARGS | {"dry_run": BOOL},
    ),
    Entry(
        "migration.FirestoreCheckpoint",
        lambda target, kwargs: FirestoreCheckpoint(**kwargs),
        lambda t: {"client": t.client, "layout": t.layout},
        {
            "client": SETTING,
            "layout": SETTING,
            "name": Arg(InvalidIdError, accepts("str"), named=("checkpoint name",)),
        },
    ),
    Entry(
        "migration.FirestoreCheckpoint.save",
        lambda target, kwargs: FirestoreCheckpoint(target.client, target.layout).save(**kwargs),
        lambda t: {"state": {"last_done": None}},
        {"state": Arg(InvalidInputError, accepts("dict"))},
    ),
    Entry(
        "migration.FileCheckpoint",
        lambda target, kwargs: FileCheckpoint(**kwargs),
        lambda t: {"path": str(t.folder / "checkpoint.json")},
        {"path": Arg(ConfigurationError, accepts("str"))},
    ),
    Entry(
        "migration.FileCheckpoint.save",
        lambda target, kwargs: FileCheckpoint(target.folder / "checkpoint.json").save(**kwargs),
        lambda t: {"state": {"last_done": None}},
        {"state": Arg(InvalidInputError, accepts("dict"))},
    ),
]

TOP_LEVEL_ENTRIES = [
    Entry(
        "RetryPolicy",
        lambda target, kwargs: RetryPolicy(**kwargs),
        lambda t: {},
        {
            # 5 and 2**64 s exceed the default max_delay of 2 s: refused too
            "base_delay": Arg(ConfigurationError, accepts("float")),
            "max_delay": Arg(ConfigurationError, accepts("int", "float", "huge int")),
            "max_attempts": Arg(ConfigurationError, accepts("int", "huge int")),
            "deadline": Arg(ConfigurationError, accepts("int", "float", "huge int")),
            "attempt_timeout": Arg(ConfigurationError, accepts("int", "float", "huge int")),
        },
    ),
    Entry(
        "Layout",
        lambda target, kwargs: Layout(**kwargs),
        lambda t: {},
        {
            "collection": Arg(InvalidIdError, accepts("str")),
            "completions": Arg(
                InvalidIdError, accepts("str"), named=("completions subcollection",)
            ),
        },
    ),
    Entry(
        "MigrationMode.from_env",
        lambda target, kwargs: MigrationMode.from_env(**kwargs),
        lambda t: {"env": {}},
        {"env": Arg(ConfigurationError, accepts("None", "dict"))},
    ),
    Entry(
        "MigrationMode.from_flags",
        lambda target, kwargs: MigrationMode.from_flags(**kwargs),
        lambda t: {"enable_subcollection": True, "dual_write": True, "subcollection_reads": False},
        dict.fromkeys(["enable_subcollection", "dual_write", "subcollection_reads"], BOOL_SETTING),
    ),
]

ENTRIES = [
    *MANAGER_ENTRIES,
    CONSTRUCTOR,
    *CONSISTENCY_ENTRIES,
    *MIGRATION_ENTRIES,
    *TOP_LEVEL_ENTRIES,
]


def _rows(*, accepted: bool) -> list[Any]:
    return [
        pytest.param(entry, name, value, id=f"{entry.name}-{name}-{value}")
        for entry in ENTRIES
        for name, arg in entry.args.items()
        for value in HOSTILE
        if (value in arg.accepts) == accepted
    ]


REFUSED = _rows(accepted=False)
ACCEPTED = _rows(accepted=True)


async def _seed(client: AsyncClient, collection: str) -> None:
    """Batch ``b`` (roster p1, p2; p1 recorded) and ``done`` (complete) in DUAL_WRITE."""
    manager = AsyncBatchStateManager(
        client, collection=collection, mode=MigrationMode.DUAL_WRITE, validation_rate=0.0
    )
    await manager.create_batch("b", expected_players=["p1", "p2"])
    await manager.record_completion("b", "p1", 1)
    await manager.create_batch("done", expected_count=1)
    await manager.record_completion("done", "p1", 1)
    await manager.aclose()


async def snapshot(client: AsyncClient, collection: str, folder: Path) -> dict[str, Any]:
    """Every document (subcollections included) with its update time, and the files."""
    docs: dict[str, Any] = {}

    async def walk(parent: Any) -> None:
        async for snap in parent.stream():
            docs[snap.reference.path] = (snap.to_dict(), snap.update_time)
            async for sub in snap.reference.collections():
                await walk(sub)

    for name in (collection, f"{collection}_migration"):
        await walk(client.collection(name))
    return {"documents": docs, "files": sorted(p.name for p in folder.iterdir())}


@dataclass(frozen=True)
class Seeded:
    """A collection seeded once for the module, and a folder for checkpoint files."""

    collection: str
    folder: Path


@contextlib.contextmanager
def _seeded(emulator: EmulatorInfo, folder: Path, *, unchanged: bool) -> Iterator[Seeded]:
    """Seed a collection of the module's own; with ``unchanged``, check it is so at the end."""
    seeded = Seeded(f"t_hostile_{uuid.uuid4().hex[:8]}_batches", folder)

    async def read(seed: bool) -> dict[str, Any]:
        client = make_client(emulator)
        try:
            if seed:
                await _seed(client, seeded.collection)
            return await snapshot(client, seeded.collection, folder)
        finally:
            await aclose_client(client)

    before = asyncio.run(read(seed=True))
    assert f"{seeded.collection}/b/completions/p1" in before["documents"]  # read deep
    yield seeded
    if unchanged:
        assert before == asyncio.run(read(seed=False)), "a refused value wrote"


@pytest.fixture(scope="module")
def untouched(
    firestore_emulator: EmulatorInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """What every refused value is tried on; after the module, exactly as seeded.

    A refused value must write nothing, so all the refused rows share it: the
    module's last teardown reads it whole (completion and roster documents,
    update times, checkpoint documents and files) and compares. Each row itself
    proves it sent not one RPC.
    """
    with _seeded(firestore_emulator, tmp_path_factory.mktemp("untouched"), unchanged=True) as s:
        yield s


@pytest.fixture(scope="module")
def scratch(
    firestore_emulator: EmulatorInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """What the accepted values run on (they may write to it)."""
    with _seeded(firestore_emulator, tmp_path_factory.mktemp("scratch"), unchanged=False) as s:
        yield s


async def _target(client: AsyncClient, seeded: Seeded) -> AsyncIterator[Target]:
    manager = AsyncBatchStateManager(
        client, collection=seeded.collection, mode=MigrationMode.DUAL_WRITE, validation_rate=0.0
    )
    yield Target(client, seeded.collection, manager.layout, manager, seeded.folder)
    await manager.aclose(drain_timeout=1.0)


@pytest_asyncio.fixture
async def refusing(firestore_client: AsyncClient, untouched: Seeded) -> AsyncIterator[Target]:
    """A manager (no I/O of its own) on the untouched collection."""
    async for target in _target(firestore_client, untouched):
        yield target


@pytest_asyncio.fixture
async def accepting(firestore_client: AsyncClient, scratch: Seeded) -> AsyncIterator[Target]:
    """A manager on the scratch collection."""
    async for target in _target(firestore_client, scratch):
        yield target


async def run(entry: Entry, target: Target, kwargs: dict[str, Any]) -> object:
    """Call ``entry`` with ``kwargs`` to its end: await it, iterate it, close what it made."""
    result = entry.call(target, kwargs)
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        return [item async for item in result]
    if isinstance(result, AsyncBatchStateManager):
        await result.aclose()
    return result


def _kwargs(entry: Entry, target: Target, name: str, value: str) -> dict[str, Any]:
    kwargs = entry.base(target)
    for dropped in entry.args[name].drop:
        kwargs.pop(dropped, None)
    return kwargs | {name: HOSTILE[value]()}


@pytest.mark.parametrize(("entry", "name", "value"), REFUSED)
async def test_a_refused_value_raises_its_error_before_any_io(
    entry: Entry, name: str, value: str, refusing: Target
) -> None:
    """The argument's own error, naming it; not one RPC (``untouched`` checks the documents)."""
    target = refusing
    arg = entry.args[name]
    kwargs = _kwargs(entry, target, name, value)
    with RpcCounter().attach(target.client) as rpcs, pytest.raises(BatchStateError) as raised:
        await run(entry, target, kwargs)
    assert arg.errors.get(value, arg.error) is type(raised.value)
    assert any(n in str(raised.value) for n in (name, *arg.named)), str(raised.value)
    assert {} == dict(rpcs.counts)


@pytest.mark.parametrize(("entry", "name", "value"), ACCEPTED)
async def test_an_accepted_value_runs_to_its_end(
    entry: Entry, name: str, value: str, accepting: Target
) -> None:
    """A result, or a BatchStateError (no such batch...): never another exception."""
    with contextlib.suppress(BatchStateError):
        await run(entry, accepting, _kwargs(entry, accepting, name, value))


def test_every_argument_of_every_manager_method_is_in_the_table() -> None:
    """A new public method or argument of the manager fails here until it has its rows."""
    listed = {entry.name: set(entry.args) for entry in MANAGER_ENTRIES}
    public = {
        name: set(inspect.signature(method).parameters) - {"self"}
        for name, method in inspect.getmembers(AsyncBatchStateManager, inspect.isfunction)
        if not name.startswith("_") and set(inspect.signature(method).parameters) - {"self"}
    }
    constructor = set(inspect.signature(AsyncBatchStateManager).parameters)
    assert public == listed
    assert constructor == set(CONSTRUCTOR.args)


# -- a closed channel ---------------------------------------------------------------

CLOSED_CALLS: dict[str, Callable[[AsyncBatchStateManager, AsyncClient], Awaitable[object]]] = {
    "create_batch": lambda m, c: m.create_batch("n", expected_count=1),
    "record_completion": lambda m, c: m.record_completion("b", "p2", 1),
    "expire": lambda m, c: m.expire("b"),
    "finalize": lambda m, c: m.finalize("b"),
    "deliver_owed_callbacks": lambda m, c: m.deliver_owed_callbacks("b"),
    "get_progress": lambda m, c: m.get_progress("b"),
    "wait_until_complete": lambda m, c: m.wait_until_complete("b", timeout=5),
    "validate": lambda m, c: m.validate("b"),
    "reconcile": lambda m, c: m.reconcile("b"),
    "list_batches": lambda m, c: _drain(m.list_batches()),
    "stalled": lambda m, c: _drain(m.stalled(0)),
    "consistency.validate": lambda m, c: validate(c, m.layout, m.mode, "b"),
    "consistency.reconcile": lambda m, c: reconcile(c, m.layout, m.mode, "b"),
    "migration.backfill": lambda m, c: backfill(c, m.layout, m.mode, dry_run=True),
    "migration.backfill_batch": lambda m, c: backfill_batch(c, m.layout, "b", dry_run=True),
    "migration.verify": lambda m, c: verify(c, m.layout, m.mode),
    "migration.status": lambda m, c: status(c, m.layout, m.mode),
    "migration.cleanup_legacy": lambda m, c: cleanup_legacy(
        c, m.layout, MigrationMode.SUBCOLLECTION_ONLY
    ),
    "migration.FirestoreCheckpoint.load": lambda m, c: FirestoreCheckpoint(c, m.layout).load(),
    "migration.FirestoreCheckpoint.save": lambda m, c: FirestoreCheckpoint(c, m.layout).save({}),
}


async def _drain(items: AsyncIterator[object]) -> list[object]:
    return [item async for item in items]


@pytest.mark.parametrize("call", list(CLOSED_CALLS), ids=list(CLOSED_CALLS))
async def test_a_closed_channel_is_a_batch_state_error(
    call: str, firestore_emulator: EmulatorInfo, batch_collection: str
) -> None:
    """With the client's channel closed: WriteFailedError (the UsageError as its cause)."""
    client = make_client(firestore_emulator)
    manager = AsyncBatchStateManager(
        client,
        collection=batch_collection,
        mode=MigrationMode.DUAL_WRITE,
        validation_rate=0.0,
        on_complete=_function,  # so that deliver_owed_callbacks reads the batch
        callback_sweep_interval=None,
    )
    await manager.create_batch("b", expected_players=["p1", "p2"])
    await aclose_client(client)
    try:
        with pytest.raises(BatchStateError) as raised:
            await CLOSED_CALLS[call](manager, client)
        assert WriteFailedError is type(raised.value)
        assert isinstance(raised.value.__cause__, grpc.aio.UsageError)
    finally:
        await manager.aclose(drain_timeout=1.0)


def test_the_closed_channel_table_covers_every_manager_entry_point() -> None:
    """Every manager method that reads or writes is in CLOSED_CALLS."""
    io_free = {"aclose", "stats"}
    public = {
        name
        for name, _ in inspect.getmembers(AsyncBatchStateManager, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public - io_free == {name for name in CLOSED_CALLS if "." not in name}


# -- point 6: a roster given as any iterable ---------------------------------------


@pytest.mark.parametrize(
    "roster",
    [
        pytest.param(lambda: (p for p in ["p1", "p2", "p3"]), id="generator"),
        pytest.param(lambda: iter(["p1", "p2", "p3"]), id="iterator"),
        pytest.param(lambda: {"p1", "p2", "p3"}, id="set"),
        pytest.param(lambda: dict.fromkeys(["p1", "p2", "p3"]).keys(), id="dict keys"),
        pytest.param(lambda: map(str.lower, ["P1", "P2", "P3"]), id="map"),
    ],
)
@pytest.mark.parametrize("mode", list(MigrationMode), ids=lambda m: m.value)
async def test_a_roster_given_as_any_iterable_is_stored_whole_and_completes(
    roster: Callable[[], Any],
    mode: MigrationMode,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """A one-shot roster is read once: all three players stored, each recorded, the batch done."""
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=mode, validation_rate=0.0
    )
    try:
        assert await manager.create_batch("b", expected_players=roster())
        assert await manager.create_batch("b", expected_players=roster()) is False  # same roster
        results = [await manager.record_completion("b", p, 1) for p in ("p1", "p2", "p3")]
        progress = await manager.get_progress("b")
    finally:
        await manager.aclose()
    assert [False, False, True] == [r.batch_completed for r in results]
    assert ("p1", "p2", "p3") == tuple(sorted(progress.completed_players))
    assert progress.is_complete
    doc = (await firestore_client.collection(batch_collection).document("b").get()).to_dict()
    assert doc is not None
    assert 3 == doc["expected_count"]
    assert ["p1", "p2", "p3"] == sorted(doc["roster"])


@pytest.mark.parametrize(
    "roster",
    [
        pytest.param("p1", id="str"),
        pytest.param(b"p1", id="bytes"),
        pytest.param({"p1": 1}, id="mapping"),
        pytest.param(5, id="int"),
        pytest.param(object(), id="object"),
        pytest.param([], id="empty"),
    ],
)
async def test_a_roster_that_is_not_an_iterable_of_ids_is_refused_before_anything_is_written(
    roster: object, firestore_client: AsyncClient, batch_collection: str
) -> None:
    """InvalidInputError naming expected_players; no batch document."""
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.DUAL_WRITE
    )
    try:
        with pytest.raises(InvalidInputError, match="expected_players") as raised:
            await manager.create_batch("b", expected_players=roster)  # type: ignore[arg-type]
    finally:
        await manager.aclose()
    assert InvalidInputError is type(raised.value)
    assert not (await firestore_client.collection(batch_collection).document("b").get()).exists


def test_the_table_has_a_row_per_hostile_value_of_every_argument() -> None:
    """Each argument meets every hostile value, refused or accepted."""
    arguments = sum(len(entry.args) for entry in ENTRIES)
    assert arguments * len(HOSTILE) == len(REFUSED) + len(ACCEPTED)
    assert all(set(arg.accepts) <= set(HOSTILE) for e in ENTRIES for arg in e.args.values())
    assert dataclasses.is_dataclass(Arg)
