"""The client's private internals the library uses (``_store/_client_internals.py``), each one
exercised on the emulator with the installed google-cloud-firestore, whose version must be in
the range ``pyproject.toml`` allows: an upgrade that moves one of them fails here, visibly."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import Increment
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from packaging.requirements import Requirement

from async_batchstate._store import _client_internals as internals
from async_batchstate._store.transact import run_transactional
from async_batchstate._write.wire import create_write, update_write
from async_batchstate.testing import EmulatorInfo, RpcCounter, make_client

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _client_requirement() -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    matches = [Requirement(d) for d in dependencies if re.match(r"google-cloud-firestore\b", d)]
    assert 1 == len(matches), dependencies
    return matches[0]


def test_the_installed_client_is_in_the_range_pyproject_allows() -> None:
    """The pinned range has an upper bound, and the client these tests run is inside it."""
    requirement = _client_requirement()

    assert any(spec.operator == "<" for spec in requirement.specifier), requirement
    assert requirement.specifier.contains(version("google-cloud-firestore")), requirement


async def test_rollback_by_id_releases_a_live_transaction(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """A transaction rolled back by its id from another transaction object cannot commit."""
    ref = firestore_client.collection(batch_collection).document("b")
    rolled_back: list[bytes] = []

    async def body(transaction: AsyncTransaction) -> None:
        async for _ in firestore_client.get_all([ref], transaction=transaction):
            pass  # the body runs inside a begun transaction; a read joins it
        await internals.rollback_by_id(firestore_client, transaction.id)
        rolled_back.append(transaction.id)
        transaction.set(ref, {"written": True})

    with pytest.raises(gexc.GoogleAPICallError):
        await run_transactional(body, firestore_client.transaction(max_attempts=1))

    assert 1 == len(rolled_back)
    assert not (await ref.get()).exists


async def test_an_error_of_the_clients_rollback_is_told_from_the_real_one(
    firestore_emulator: EmulatorInfo,
) -> None:
    """The transaction cannot begin (its client's channel is closed): the client's rollback
    then fails too (nothing to roll back) from a frame named ``_rollback``, which
    ``raised_by_rollback`` recognises, and ``run_transactional`` raises the real error."""
    client = make_client(firestore_emulator)
    await client.collection("c").document("d").get()
    await internals.close_channel(client)

    async def body(transaction: AsyncTransaction) -> None:
        raise AssertionError("never runs: the transaction did not begin")

    with pytest.raises(Exception) as raised:
        await run_transactional(body, client.transaction(max_attempts=1))

    assert hasattr(AsyncTransaction, internals.ROLLBACK_FRAME)
    assert not isinstance(raised.value, AssertionError)
    assert "cannot be rolled back" not in str(raised.value)


def test_raised_by_rollback_finds_a_frame_of_that_name() -> None:
    """Only an error raised through a function named like the client's rollback counts."""

    def _rollback() -> None:
        raise ValueError("cannot be rolled back")

    def other() -> None:
        raise ValueError("elsewhere")

    caught: list[BaseException] = []
    for function in (_rollback, other):
        try:
            function()
        except ValueError as exc:
            caught.append(exc)

    assert [True, False] == [internals.raised_by_rollback(exc) for exc in caught]


async def test_interceptors_added_to_the_clients_channel_see_its_requests(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """``grpc_channel`` and ``interceptor_lists`` reach the live channel (what RpcCounter uses)."""
    ref = firestore_client.collection(batch_collection).document("b")
    unary, stream = internals.interceptor_lists(internals.grpc_channel(firestore_client))
    assert isinstance(unary, list) and isinstance(stream, list)

    with RpcCounter().attach(firestore_client) as rpcs:
        await ref.get()

    assert rpcs.total >= 1


async def test_close_channel_closes_the_clients_channel(firestore_emulator: EmulatorInfo) -> None:
    """After ``close_channel`` the client's channel refuses requests; a never-used client
    (no channel yet) closes without error."""
    await internals.close_channel(make_client(firestore_emulator))
    client = make_client(firestore_emulator)
    await client.collection("c").document("d").get()

    await internals.close_channel(client)

    with pytest.raises(Exception) as refused:
        await client.collection("c").document("d").get()
    assert not isinstance(refused.value, AssertionError)


async def test_prebuilt_writes_commit_in_one_rpc_the_interceptors_see(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """document_name gives the full resource name; commit_writes commits prebuilt Writes
    in one Commit on the client's channel (its interceptors see it) and returns one
    result per write, transform results included."""
    ref = firestore_client.collection(batch_collection).document("b")
    await ref.set({"n": 1, "keep": "me"})
    created = ref.collection("c").document("x.y")
    name = internals.document_name(ref)

    with RpcCounter().attach(firestore_client) as rpcs:
        results = await internals.commit_writes(
            firestore_client,
            [
                create_write(internals.document_name(created), {"v": True}),
                update_write(name, {"m.`x.y`": 2, "t": "s", "n": Increment(4)}),
            ],
        )

    assert {"Commit": 1} == dict(rpcs.counts)
    assert 2 == len(results) and 5 == results[-1].transform_results[0].integer_value
    assert name.startswith("projects/") and name.endswith(f"/documents/{batch_collection}/b")
    assert {"n": 5, "keep": "me", "m": {"x.y": 2}, "t": "s"} == (await ref.get()).to_dict()
    assert {"v": True} == (await created.get()).to_dict()


async def test_commit_writes_maps_errors_as_the_client_does(
    firestore_client: AsyncClient, batch_collection: str
) -> None:
    """ALREADY_EXISTS is Conflict (with the server's message), a missing document NotFound,
    and nothing of a refused Commit is applied."""
    ref = firestore_client.collection(batch_collection).document("b")
    await ref.set({"n": 1})
    taken = ref.collection("c").document("taken")
    await taken.set({"v": 1})
    fresh = ref.collection("c").document("fresh")

    with pytest.raises(gexc.Conflict) as conflict:
        await internals.commit_writes(
            firestore_client,
            [
                create_write(internals.document_name(fresh), {"v": 2}),
                create_write(internals.document_name(taken), {"v": 2}),
                update_write(internals.document_name(ref), {"n": Increment(1)}),
            ],
        )
    with pytest.raises(gexc.NotFound):
        await internals.commit_writes(
            firestore_client,
            [update_write(internals.document_name(ref.collection("c").document("no")), {"v": 3})],
        )

    assert "taken" in conflict.value.message
    assert not (await fresh.get()).exists
    assert {"n": 1} == (await ref.get()).to_dict()
