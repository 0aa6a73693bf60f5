"""The lock-free reads of a group write: its members' completion documents and the batch.

One RPC each time: after a refused Commit (which members exist, whose, and where
the batch stands), or before a write that must read the batch (its fields, the
members, and the batch document's version for a conditional Commit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from .._errors import batch_not_found
from .._store import decode
from .._store import names as f
from .._store.decode import as_int
from .._store.refs import Refs
from .group import BatchView, GroupOutcome, GroupState

MEMBER_FIELDS = [f.WRITE_ID]
"""What a retry needs of a member it finds: whose write created it."""


async def read_after_conflict(
    store: Refs, batch_ref: Any, refs: dict[str, Any], state: GroupState
) -> tuple[set[str], GroupOutcome]:
    """Which members exist (resolved into ``state``) and where the batch stands (one RPC).

    A member with this group's write id is this group's (an earlier attempt
    whose answer was lost): LATE if that write landed after the batch's expiry.
    """
    fields = [
        *MEMBER_FIELDS,
        *decode.write_fields(state.write_id),
        f.STATUS,
        f.EXPECTED_COUNT,
        *f.COUNT_FIELDS,
        f.CALLBACK_OWED,
    ]
    members: dict[str, dict[str, Any]] = {}
    data: dict[str, Any] | None = None
    async for snap in store.client.get_all(
        [batch_ref, *refs.values()], field_paths=fields, retry=None
    ):
        if not snap.exists:
            continue
        if snap.reference.path == batch_ref.path:
            data = snap.to_dict() or {}
        else:
            members[snap.reference.id] = snap.to_dict() or {}
    if data is None:
        raise batch_not_found(batch_ref.id, store.layout.collection)
    resolve_found(members, data, state)
    batch = BatchView(
        str(data.get(f.STATUS, f.STATUS_IN_PROGRESS)),
        as_int(data.get(f.EXPECTED_COUNT)),
        data.get(f.CALLBACK_OWED) is True,
    )
    expired = batch.status == f.STATUS_EXPIRED
    return set(members), GroupOutcome((), decode.counted(data), batch, expired=expired)


_PATH_ENDS = frozenset("}\"' ,;)]\n")


def named_member(refusal: Exception, refs: Mapping[str, Any]) -> str | None:
    """The one member whose path an ALREADY_EXISTS refusal names, if exactly one.

    A hint, never an outcome: the member is still read to learn whose it is. Firestore
    says ``Document already exists: projects/.../documents/<path>``, the emulator
    ``entity already exists: EntityRef{..., path=/<path>}``. An id that could be read
    as another member's path with more after it (``a`` and ``a}``) names nobody.
    """
    text = str(getattr(refusal, "message", refusal))
    named = [player for player, ref in refs.items() if _names(text, "/" + ref.path)]
    return named[0] if len(named) == 1 else None


def _names(text: str, path: str) -> bool:
    at = text.find(path)
    while at >= 0:
        end = at + len(path)
        if end == len(text) or text[end] in _PATH_ENDS:
            return True
        at = text.find(path, at + 1)
    return False


def resolve_found(
    members: dict[str, dict[str, Any]], batch: dict[str, Any], state: GroupState
) -> None:
    """Record found members as this group's (its write id) or someone else's.

    ``batch`` read with ``decode.write_fields(state.write_id)`` where a member may be
    this group's: whether it landed after the expiry is what the write itself set.
    """
    late = decode.write_landed(batch, state.write_id)[1]
    for player, member in members.items():
        mine = member.get(f.WRITE_ID) == state.write_id
        state.resolved[player] = mine
        if mine and late:
            state.late.add(player)


async def read_group(
    store: Refs,
    transaction: AsyncTransaction | None,
    batch_ref: Any,
    refs: Mapping[str, Any],
    fields: list[str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Any]:
    """In one RPC: the batch's fields, the members that exist, the batch's version.

    ``fields`` empty: the batch is not read. The version is the batch document's
    ``update_time`` (None when not read).

    Raises:
        BatchNotFoundError: The batch was to be read and does not exist.
    """
    wanted = ([batch_ref] if fields else []) + list(refs.values())
    if not wanted:
        return {}, {}, None
    batch: dict[str, Any] | None = None
    version: Any = None
    members: dict[str, dict[str, Any]] = {}
    async for snap in store.client.get_all(
        wanted, field_paths=[*fields, *MEMBER_FIELDS], transaction=transaction, retry=None
    ):
        if snap.reference.path == batch_ref.path:
            batch = (snap.to_dict() or {}) if snap.exists else None
            version = snap.update_time
        elif snap.exists:
            members[snap.reference.id] = snap.to_dict() or {}
    if fields and batch is None:
        raise batch_not_found(batch_ref.id, store.layout.collection)
    return batch or {}, members, version
