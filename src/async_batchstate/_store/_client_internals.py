"""Every use of google-cloud-firestore's (and grpc.aio's) private internals, in one place.

The library needs six things no public API offers. Each is a small function
here, and ``tests/test_client_internals.py`` exercises every one of them
against the emulator with the installed client, whose version it checks
against the range ``pyproject.toml`` allows: a client upgrade that moves one
of these breaks that one visible test, not a code path far away.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.cloud.firestore_v1.async_client import AsyncClient


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


def add_writes(batch: Any, writes: list[Any]) -> None:
    """Add prebuilt ``Write`` messages to a ``WriteBatch`` (its builders take only dicts)."""
    batch._add_write_pbs(writes)


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
