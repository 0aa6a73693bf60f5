"""The lock-free group's raw ``Write`` messages equal what the client's builders make.

Pure: no emulator. The writer's whole test suite runs the lock-free path on the
emulator; these pin the encoding itself, message for message, for every kind of
update the writer makes (every mode, odd player ids, many players).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.firestore_v1 import SERVER_TIMESTAMP, Increment, _helpers
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batchstate import MigrationMode
from async_batchstate._store.completion import completion_doc
from async_batchstate._store.ids import needs_whole_map_write
from async_batchstate._write.group import PlayerCompletion
from async_batchstate._write.update import batch_update
from async_batchstate._write.wire import create_write, update_write

NAME = "projects/p/databases/(default)/documents/batches/b"


def client_create(data: dict[str, Any]) -> Any:
    [write] = _helpers.pbs_for_create(NAME, data)
    return write


def client_update(data: dict[str, Any]) -> Any:
    [write] = _helpers.pbs_for_update(NAME, data, None)
    return write


# Player ids as the manager accepts them, odd ones included: dots, backticks,
# backslashes, spaces, non-ASCII (a CR goes through the whole-map path instead).
PLAYER = st.text(
    alphabet=st.characters(categories=None, exclude_categories=["Cs"], exclude_characters="/\r"),
    min_size=1,
    max_size=20,
).filter(lambda p: p not in (".", "..") and not needs_whole_map_write(p))


@pytest.mark.parametrize("mode", list(MigrationMode))
@settings(max_examples=40, deadline=None)
@given(
    players=st.lists(PLAYER, min_size=1, max_size=12, unique=True),
    count=st.integers(min_value=0, max_value=2**40),  # a group's total stays an int64
)
def test_update_write_equals_the_clients(
    mode: MigrationMode, players: list[str], count: int
) -> None:
    group = [PlayerCompletion(p, count) for p in players]
    for docs in (True, False):
        data, _ = batch_update(
            mode, group, docs=docs, write_key="0a1b", spent=["w.0", "9f"], guard=not docs
        )

        assert client_update(data) == update_write(NAME, data)


def test_update_write_with_a_whole_map_and_a_list_equals_the_clients() -> None:
    """A literal map value (the whole legacy map) and a list, as the optimistic path writes."""
    data, _ = batch_update(
        MigrationMode.DUAL_WRITE,
        [PlayerCompletion("a\rb", 2)],
        {"x": 1, "y.z": 0},
        docs=True,
        write_key="w.1",
    )
    data["a_list"] = ["w.0", "w.1"]

    assert client_update(data) == update_write(NAME, data)


@settings(max_examples=60, deadline=None)
@given(player=PLAYER, count=st.integers(min_value=0, max_value=2**63 - 1), with_id=st.booleans())
def test_create_write_equals_the_clients(player: str, count: int, with_id: bool) -> None:
    data = completion_doc(player, count, "write-1" if with_id else None)

    assert client_create(data) == create_write(NAME, data)


def test_an_update_of_transforms_only_keeps_its_empty_mask() -> None:
    """Without a mask an update would replace the whole document with no fields."""
    data = {"n": Increment(1), "t": SERVER_TIMESTAMP}
    write = update_write(NAME, data)

    assert "update_mask" in write
    assert [] == list(write.update_mask.field_paths)
    assert client_update(data) == write


def test_an_empty_map_stays_a_map() -> None:
    data = {"m": {}, "n": True}

    assert client_update(data) == update_write(NAME, data)


def test_a_value_it_cannot_encode_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="float"):
        update_write(NAME, {"x": 1.5})


@pytest.mark.parametrize("player", ["abc\n", "a b", "x.y", "`q`", "\\", "é", "_1", "1a"])
def test_odd_player_ids_are_written_as_the_client_writes_them(player: str) -> None:
    """Quoting follows the client's own rule, a trailing newline included."""
    data, _ = batch_update(
        MigrationMode.DUAL_WRITE, [PlayerCompletion(player, 3)], docs=True, write_key=player
    )

    assert client_update(data) == update_write(NAME, data)
