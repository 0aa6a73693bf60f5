"""Every use of google-cloud-firestore's (and grpc.aio's) private internals, in one place.

The library needs six things no public API offers. Each is a small function
here, and ``tests/store/test_client_internals.py`` exercises every one of them
against the emulator with the installed client, whose version it checks
against the range ``pyproject.toml`` allows: a client upgrade that moves one
of these breaks that one visible test, not a code path far away.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.api_core import gapic_v1
from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.types import Write
from google.cloud.firestore_v1.types import firestore as firestore_types


async def rollback_by_id(client: AsyncClient, transaction_id: bytes) -> None:
    """Roll back the server-side transaction ``transaction_id`` (no public API does by id).

    Raises:
        Whatever the ``Rollback`` RPC raises (an expired or finished transaction:
        ``InvalidArgument`` / ``NotFound``).
    """
    orphan = client.transaction()
    orphan._id = transaction_id  # type: ignore[assignment]
    await orphan._rollback()


ROLLBACK_FRAME = "_rollback"
"""Name of the client's method whose error replaces a transaction's real one."""


def raised_by_rollback(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the client's rollback (a frame named ``_rollback``).

    ``async_transactional`` rolls back on any failure, and an error of that
    rollback hides the real one; no attribute of the error says so, its frames do.
    """
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == ROLLBACK_FRAME:
            return True
        tb = tb.tb_next
    return False


async def close_channel(client: AsyncClient) -> None:
    """Close the client's gRPC channel (``AsyncClient`` has no public ``close``).

    A client that never opened its channel has nothing to close.
    """
    api = getattr(client, "_firestore_api_internal", None)
    if api is not None:
        await api.transport.close()


def document_name(reference: Any) -> str:
    """The full resource name of a ``DocumentReference`` (``projects/.../documents/...``)."""
    name: str = reference._document_path
    return name


def grpc_channel(client: Any) -> grpc.aio.Channel:
    """The gRPC channel of a google-cloud-firestore ``AsyncClient`` (opened if need be)."""
    channel: grpc.aio.Channel = client._firestore_api.transport.grpc_channel
    return channel


def interceptor_lists(channel: grpc.aio.Channel) -> tuple[list[Any], list[Any]]:
    """The live unary-unary and unary-stream interceptor lists of a ``grpc.aio`` channel.

    grpc.aio takes interceptors only when a channel is made; the client makes
    its own, so an interceptor is added to (and removed from) these lists.
    """
    return channel._unary_unary_interceptors, channel._unary_stream_interceptors


_COMMIT = "/google.firestore.v1.Firestore/Commit"
_COMMIT_REQUEST: Any = firestore_types.CommitRequest.pb()
_COMMIT_RESPONSE: Any = firestore_types.CommitResponse.pb()
COMMIT_TIMEOUT = 60.0
"""Seconds, as the client's own default for ``Commit``."""
# Per channel (so per client): the Commit callable and the headers the client sends with it.
_commit_calls: weakref.WeakKeyDictionary[grpc.aio.Channel, tuple[Any, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


async def commit_writes(
    client: AsyncClient, writes: Sequence[Write], *, timeout: float = COMMIT_TIMEOUT
) -> Sequence[Any]:
    """One ``Commit`` of prebuilt ``Write`` messages, without retry; the write results.

    What ``WriteBatch.commit(retry=None)`` sends (the same request, the client's
    metadata and routing header, the same error mapping), on the client's channel
    and through its interceptors, without the client's proto-plus request and
    response wrappers, which cost a lone completion more client CPU than building
    its writes.

    Raises:
        google.api_core.exceptions.GoogleAPICallError: What the RPC failed with,
            mapped as the client maps it (ALREADY_EXISTS: ``Conflict``).
    """
    channel = grpc_channel(client)
    database = client._database_string
    known = _commit_calls.get(channel)
    if known is None:
        routing = gapic_v1.routing_header.to_grpc_metadata((("database", database),))  # type: ignore[no-untyped-call]
        known = _commit_calls[channel] = (
            channel.unary_unary(
                _COMMIT,
                request_serializer=_COMMIT_REQUEST.SerializeToString,
                response_deserializer=_COMMIT_RESPONSE.FromString,
            ),
            (*client._rpc_metadata, routing),
        )
    call, metadata = known
    request = _COMMIT_REQUEST(database=database, writes=[Write.pb(w) for w in writes])
    try:
        response = await call(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        raise gexc.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]
    return response.write_results  # type: ignore[no-any-return]
