"""Id and count validation (unit, no I/O)."""

from __future__ import annotations

import pytest

from async_batchstate import InvalidCountError, InvalidIdError, Layout
from async_batchstate._store.ids import (
    player_field,
    validate_count,
    validate_id,
    validate_legacy_key,
)

pytestmark = pytest.mark.guarantee("bad-input")


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", "a/b", "__x__", "____", "x" * 1501, "é" * 751, "\ud800", 5, None, b"bytes"],
)
def test_ids_firestore_cannot_store_are_rejected(bad: object) -> None:
    """Empty, reserved, slashed, oversized, non-UTF-8 and non-str ids raise InvalidIdError."""
    with pytest.raises(InvalidIdError):
        validate_id("player id", bad)


@pytest.mark.parametrize(
    "good", ["a.b", "`x`", "total_predictions", "spaces and ü", "x" * 1500, "__x", "..."]
)
def test_storable_ids_pass_unchanged(good: str) -> None:
    """Dots, backticks, field-like names and 1,500-byte ids are valid document ids."""
    assert good == validate_id("player id", good)


@pytest.mark.parametrize(
    ("bad", "match"), [(-1, ">= 0"), (2**63, "64-bit"), (1.0, "int"), (True, "int"), ("3", "int")]
)
def test_bad_counts_are_rejected(bad: object, match: str) -> None:
    """Negative, too large, float, bool and str counts raise InvalidCountError."""
    with pytest.raises(InvalidCountError, match=match):
        validate_count("predictions_count", bad)


def test_player_field_quotes_special_characters() -> None:
    """A dotted or backticked id becomes one quoted path segment, not a nested path."""
    assert "predictions_by_player.`a.b`" == player_field("a.b")
    assert "predictions_by_player.`\\`x\\``" == player_field("`x`")
    assert "predictions_by_player.plain" == player_field("plain")


def test_legacy_key_that_makes_too_long_a_field_path_is_rejected() -> None:
    """A 1,500-byte id is a valid doc id but too long as a map key under the legacy map."""
    with pytest.raises(InvalidIdError, match="field path"):
        validate_legacy_key("x" * 1500)


@pytest.mark.parametrize("bad", ["a/b", "", "a/b/c/d", "__x__"])
def test_layout_rejects_paths_that_are_not_collections(bad: str) -> None:
    """A collection path needs an odd number of valid segments."""
    with pytest.raises(InvalidIdError):
        Layout(collection=bad)


def test_layout_accepts_nested_collections() -> None:
    """tenants/t1/batches is a collection path."""
    assert "tenants/t1/batches" == Layout(collection="tenants/t1/batches").collection


def test_layout_reserves_the_roster_subcollection_name() -> None:
    """Completions named 'roster' would share a subcollection with the roster's chunks and
    the ``unchecked`` marker (the marker would read as a completion of player 'unchecked')."""
    with pytest.raises(InvalidIdError, match="reserved"):
        Layout(completions="roster")
