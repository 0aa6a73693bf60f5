"""Property-based: every id and count is stored faithfully or rejected typed before any write.

Hypothesis generates player ids (unicode, dots, backticks, slashes, reserved
``__x__`` names, lone surrogates, ids near and over Firestore's 1,500 bytes,
non-``str`` values) and counts (huge, negative, ``bool``, ``float``, ``str``).
For each one the manager either records it, and reading the documents back
gives exactly it (as a literal key of ``predictions_by_player``, never a
path into another field), or raises ``InvalidInputError`` and nothing at all
was written. Which one happens must match the documented rules exactly.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from async_batchstate import (
    CompletionStatus,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    MigrationMode,
)
from async_batchstate._store.ids import player_field
from async_batchstate.testing import batch_violations

from ..helpers import ManagerFactory, read_batch, read_completions

pytestmark = pytest.mark.guarantee("bad-input")

SETTINGS = settings(  # max_examples: the Hypothesis profile (tests/conftest.py)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WRITTEN_FIELDS = {
    "status",
    "finalised_by",
    "expired_flag",
    "legacy_only_count",
    "callback_owed",
    "callback_claimed_by",
    "callback_claimed_at",
    "callback_done_at",
    "completed_at",
    "updated_at",
    "last_updated",
    "completed_players",
    "predictions_by_player",
    "total_predictions",
    "completed_count",
    "total_predictions_subcoll",
    "open_writes",  # one entry per group write (its id), deleted once told
}
"""Top-level fields a completion (and finalization) may set on the batch document."""
_numbers = itertools.count()

tricky = st.sampled_from(
    [
        ".",
        "..",
        "a.b",
        "`a`",
        "a`b.c",
        "total_predictions",
        "predictions_by_player.x",
        "a/b",
        "/",
        "__x__",
        "__",
        "___",
        "_x_",
        " ",
        "\x00",
        "a\rb",
        "\r",
        "x\r\n",
        "\ud800",
        "é" * 750,
        "é" * 751,
        "x" * 1500,
        "x" * 1501,
        "x" * 1470,
        "🎲" * 375,
    ]
)
player_ids = st.one_of(
    tricky,
    st.text(min_size=0, max_size=30),
    st.text(alphabet=st.sampled_from("./`\\_é🎲a\r\n"), min_size=1, max_size=12),
    st.text(min_size=370, max_size=800),
    st.integers(),
    st.none(),
    st.binary(max_size=5),
)
counts = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 2**63 - 1, 2**63, -1, True, False]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
)


def valid_id(value: Any) -> bool:
    """The documented rule for a Firestore document id."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value:
        return False
    if len(value) >= 4 and value.startswith("__") and value.endswith("__"):
        return False
    try:
        return len(value.encode("utf-8")) <= 1500
    except UnicodeEncodeError:
        return False


def valid_player(value: Any, mode: MigrationMode) -> bool:
    if not valid_id(value):
        return False
    return not mode.writes_legacy or len(player_field(value).encode("utf-8")) <= 1500


def valid_count(value: Any) -> bool:
    """What one completion may carry (at most 2**32: totals stay exact with extra players)."""
    return type(value) is int and 0 <= value <= 2**32


def valid_expected(value: Any) -> bool:
    """What ``expected_count`` may be: an int in [1, 2**63 - 1] (a Firestore integer)."""
    return type(value) is int and 1 <= value <= 2**63 - 1


async def assert_nothing_written(
    client: AsyncClient, collection: str, batch_id: str, mode: MigrationMode
) -> None:
    doc = await read_batch(client, collection, batch_id)
    assert [] == doc.get("completed_players", [])
    assert {} == doc.get("predictions_by_player", {})
    assert 0 == doc.get("completed_count", 0)
    assert {} == await read_completions(client, collection, batch_id)
    assert [] == await batch_violations(client, collection, batch_id, mode, expected={})


@pytest.mark.parametrize("mode", [MigrationMode.DUAL_WRITE, MigrationMode.SUBCOLLECTION_ONLY])
@SETTINGS
@given(player=player_ids, count=counts)
async def test_player_and_count_stored_faithfully_or_rejected_before_any_write(
    mode: MigrationMode,
    player: Any,
    count: Any,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """record_completion(player, count): read back equal, or InvalidInputError and no write."""
    manager = make_manager(mode=mode)
    batch_id = f"b{next(_numbers)}"
    await manager.create_batch(batch_id, expected_count=1)
    created_fields = set(await read_batch(firestore_client, batch_collection, batch_id))
    try:
        result = await manager.record_completion(batch_id, player, count)
    except InvalidInputError as exc:
        assert not (valid_player(player, mode) and valid_count(count)), f"wrongly refused: {exc}"
        if not valid_player(player, mode):
            assert isinstance(exc, InvalidIdError)
        else:
            assert isinstance(exc, InvalidCountError)
        await assert_nothing_written(firestore_client, batch_collection, batch_id, mode)
        return

    assert valid_player(player, mode) and valid_count(count)
    assert (CompletionStatus.RECORDED, player, True) == (
        result.status,
        result.player,
        result.batch_completed,
    )
    doc = await read_batch(firestore_client, batch_collection, batch_id)
    assert set(doc) - created_fields <= WRITTEN_FIELDS, "a player id became a field of its own"
    if mode.writes_legacy:
        assert [player] == doc["completed_players"]
        assert {player: count} == doc["predictions_by_player"]
        assert count == doc["total_predictions"]
    completions = await read_completions(firestore_client, batch_collection, batch_id)
    assert [player] == list(completions)
    assert (player, count) == (
        completions[player]["player_lookup"],
        completions[player]["predictions_count"],
    )
    assert [] == await batch_violations(
        firestore_client,
        batch_collection,
        batch_id,
        mode,
        expected={player: count},
        require_finalized=True,
    )


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch_id=player_ids, expected=counts.filter(lambda c: c is not None))  # None: not given
@example(batch_id="big", expected=231_477_650_399_995_008)  # above 2**32: a valid expected count
@example(batch_id="biggest", expected=2**63 - 1)
async def test_batch_id_and_expected_count_stored_faithfully_or_rejected(
    batch_id: Any,
    expected: Any,
    make_manager: ManagerFactory,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """create_batch(id, expected_count): the document exists at exactly that id, or a typed
    InvalidInputError and the collection is untouched."""
    manager = make_manager(mode=MigrationMode.SUBCOLLECTION_ONLY)  # no legacy count limit
    before = {d.id async for d in firestore_client.collection(batch_collection).stream()}
    assume(not (isinstance(batch_id, str) and batch_id in before))  # created by an earlier example
    try:
        created = await manager.create_batch(batch_id, expected_count=expected)
    except InvalidInputError:
        assert not (valid_id(batch_id) and valid_expected(expected))
        after = {d.id async for d in firestore_client.collection(batch_collection).stream()}
        assert before == after
        return

    assert valid_id(batch_id) and valid_expected(expected)
    assert created
    doc = await read_batch(firestore_client, batch_collection, batch_id)
    assert (expected, "in_progress") == (doc["expected_count"], doc["status"])
    progress = await manager.get_progress(batch_id)
    assert (batch_id, expected, 0) == (
        progress.batch_id,
        progress.expected_count,
        progress.completed_count,
    )
