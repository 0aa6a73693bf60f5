"""Id validation, the batches' ``Layout``, and safe field paths into the legacy map.

Field paths into ``predictions_by_player`` are always built with ``FieldPath``:
a player id such as ``a.b`` or ``total_predictions`` must become a literal map
key, never a path to another field (the old code's ``'{}'.format`` bug). An
id with a carriage return is never put in a field path at all: its entry is
written with the whole map (``needs_whole_map_write``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from .._config import MigrationMode
from .._errors import BatchStateError, InvalidCountError, InvalidIdError, InvalidInputError
from .._retry import RetryPolicy
from .names import PREDICTIONS_BY_PLAYER, ROSTER

MAX_ID_BYTES = 1500
MAX_FIELD_PATH_BYTES = 1500
MAX_COUNT = 2**63 - 1  # Firestore integers are signed 64-bit.
_RESERVED_ID = re.compile(r"^__.*__$", re.DOTALL)
T = TypeVar("T")


def validate_id(kind: str, value: object) -> str:
    """Return ``value`` if Firestore can store it as a document id, else raise.

    Args:
        kind: What the id names, for the error message ("batch id", "player id").
        value: The candidate id.

    Raises:
        InvalidIdError: Not a ``str``, empty, ``.`` or ``..``, contains ``/``,
            matches ``__.*__``, is not valid UTF-8 or is over 1,500 bytes.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{kind} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"{kind} must not be empty")
    if value in (".", ".."):
        raise InvalidIdError(f"{kind} {value!r} is reserved by Firestore")
    if "/" in value:
        raise InvalidIdError(f"{kind} {value!r} must not contain '/'")
    if _RESERVED_ID.match(value):
        raise InvalidIdError(f"{kind} {value!r} matches Firestore's reserved pattern __.*__")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidIdError(f"{kind} {value!r} is not valid UTF-8: {exc.reason}") from None
    if size > MAX_ID_BYTES:
        raise InvalidIdError(f"{kind} is {size} bytes; Firestore allows at most {MAX_ID_BYTES}")
    return value


MAX_TEXT_BYTES = 10_000


def validate_text(name: str, value: object) -> str:
    """Return ``value`` if Firestore can store it as a string field (an expiry reason).

    Raises:
        InvalidInputError: Not a ``str``, not valid UTF-8 (a lone surrogate), or over
            ``MAX_TEXT_BYTES`` bytes.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{name} is not valid UTF-8: {exc.reason}") from None
    if size > MAX_TEXT_BYTES:
        raise InvalidInputError(f"{name} is {size} bytes; at most {MAX_TEXT_BYTES}")
    return value


def validate_seconds(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> float:
    """Return ``value`` as float seconds if it is a finite real number >= 0.

    Raises:
        InvalidInputError: Not a number (``bool`` included), NaN, infinite or
            negative (``error`` instead, when given).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise error(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def validate_count(
    name: str,
    value: object,
    *,
    minimum: int = 0,
    maximum: int = MAX_COUNT,
    error: type[BatchStateError] = InvalidCountError,
) -> int:
    """Return ``value`` if it is an ``int`` in ``[minimum, maximum]`` (default ``2**63 - 1``).

    Raises:
        InvalidCountError: A ``bool``, a non-``int`` or out of range (``error``
            instead, when given).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        if maximum == MAX_COUNT:
            raise error(f"{name} must fit in a signed 64-bit integer, got {value}")
        raise error(f"{name} must be <= {maximum}, got {value}")
    return value


def validate_bool(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> bool:
    """Return ``value`` if it is a ``bool`` (not merely truthy: ``"no"`` is not False).

    Raises:
        InvalidInputError: Anything else (``error`` instead, when given).
    """
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, not {type(value).__name__}")
    return value


def validate_instance(
    name: str,
    value: object,
    kind: type[T],
    *,
    error: type[BatchStateError] = InvalidInputError,
) -> T:
    """Return ``value`` if it is an instance of ``kind``.

    Raises:
        InvalidInputError: It is not (``error`` instead, when given).
    """
    if not isinstance(value, kind):
        raise error(f"{name} must be a {kind.__qualname__}, not {type(value).__name__}")
    return value


def validate_callable(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> object:
    """Return ``value`` if it can be called (a function, a bound method, a hook object).

    Raises:
        InvalidInputError: It cannot (``error`` instead, when given).
    """
    if not callable(value):
        raise error(f"{name} must be callable, not {type(value).__name__}")
    return value


def validate_callables(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> tuple[Any, ...]:
    """``value`` (an iterable of callables, e.g. hooks) as a tuple, each one checked.

    Raises:
        InvalidInputError: Not an iterable, a ``str``/``bytes``/mapping, or an item that
            cannot be called (``error`` instead, when given).
    """
    items = validate_iterable(name, value, error=error)
    for item in items:
        if not callable(item):
            raise error(f"{name} must hold callables, not {type(item).__name__}")
    return items


def validate_iterable(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> tuple[Any, ...]:
    """``value`` materialised once as a tuple: any iterable (a list, a set, a generator).

    A ``str``, ``bytes`` or mapping is refused: iterating it yields characters,
    ints or keys, never what the caller meant.

    Raises:
        InvalidInputError: Not an iterable, or a ``str``, bytes-like or mapping
            (``error`` instead, when given).
    """
    if isinstance(value, str | bytes | bytearray | memoryview | Mapping):
        raise error(f"{name} must be an iterable of items, not a {type(value).__name__}")
    if not isinstance(value, Iterable):
        raise error(f"{name} must be an iterable, not {type(value).__name__}")
    return tuple(value)


def validate_store(
    client: object, layout: object, *, error: type[BatchStateError] = InvalidInputError
) -> None:
    """Refuse a ``client`` that is not an ``AsyncClient`` or a ``layout`` that is not a ``Layout``.

    Raises:
        InvalidInputError: Either is of another type (``error`` instead, when given).
    """
    validate_instance("client", client, AsyncClient, error=error)
    validate_instance("layout", layout, Layout, error=error)


def validate_policy(
    retry: object, clock: object, *, error: type[BatchStateError] = InvalidInputError
) -> None:
    """Refuse a ``retry`` that is no ``RetryPolicy`` (or None), or a ``clock`` that is no ``Clock``.

    Raises:
        InvalidInputError: Either is of another type (``error`` instead, when given).
    """
    if retry is not None:
        validate_instance("retry", retry, RetryPolicy, error=error)
    validate_clock("clock", clock, error=error)


_CLOCK_METHODS = ("monotonic", "now", "sleep", "timeout")


def validate_clock(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> Any:
    """Return ``value`` if it has the four methods of a ``Clock``.

    Raises:
        InvalidInputError: It lacks one (``error`` instead, when given).
    """
    for method in _CLOCK_METHODS:
        if not callable(getattr(value, method, None)):
            raise error(
                f"{name} must be a Clock (monotonic, now, sleep, timeout), "
                f"not {type(value).__name__}"
            )
    return value


def validate_aware(
    name: str, value: object, *, error: type[BatchStateError] = InvalidInputError
) -> dt.datetime:
    """Return ``value`` if it is an aware ``datetime``.

    Raises:
        InvalidInputError: Not a datetime, or a naive one (``error`` instead, when given).
    """
    if not isinstance(value, dt.datetime):
        raise error(f"{name} must be an aware datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(f"{name} must be an aware datetime (e.g. UTC), not a naive one")
    return value


def player_field(player: str) -> str:
    """The quoted field path of ``player``'s entry in ``predictions_by_player``."""
    return FieldPath(PREDICTIONS_BY_PLAYER, player).to_api_repr()


def needs_whole_map_write(player: str) -> bool:
    """Whether ``player``'s map entry must be written by rewriting the whole map.

    A field path naming a key with a carriage return (CR) does not reach that
    key: the Firestore emulator reads a raw CR in a quoted field path as a line
    feed (and CR LF as LF). An update of ``predictions_by_player.`a<CR>b``` then
    sets, or deletes, the key ``a<LF>b`` (another player's entry) and never
    writes ``a<CR>b``. The client's quoting is the documented one (only
    backticks and backslashes are escaped) and no documented escape names a CR.
    A map *value* keeps its keys byte for byte, so such an entry is written as
    part of the whole map, read in the same transaction.
    """
    return "\r" in player


def validate_legacy_key(player: str) -> None:
    """Reject a player id whose ``predictions_by_player`` field path is too long.

    Raises:
        InvalidIdError: The quoted field path is over Firestore's 1,500 bytes.
    """
    size = len(player_field(player).encode("utf-8"))
    if size > MAX_FIELD_PATH_BYTES:
        raise InvalidIdError(
            f"player id makes a {size}-byte field path in {PREDICTIONS_BY_PLAYER}; Firestore "
            f"allows {MAX_FIELD_PATH_BYTES}. Shorter ids, or SUBCOLLECTION_ONLY mode, avoid it"
        )


@dataclass(frozen=True)
class Layout:
    """Where a batch and its completions live.

    Args:
        collection: Collection path of the batch documents, e.g. ``prediction_batches``
            (may be nested: ``tenants/t1/batches``).
        completions: Name of the per-batch completions subcollection.

    Raises:
        InvalidIdError: ``collection`` is not a collection path of valid ids, or
            ``completions`` is not a valid id, or is ``roster`` (reserved).
    """

    collection: str = "prediction_batches"
    completions: str = "completions"

    def __post_init__(self) -> None:
        if not isinstance(self.collection, str):
            raise InvalidIdError(
                f"collection must be a str path, not {type(self.collection).__name__}"
            )
        parts = self.collection.split("/")
        if len(parts) % 2 != 1:
            raise InvalidIdError(
                f"collection {self.collection!r} must be a collection path (odd number of segments)"
            )
        for part in parts:
            validate_id("collection segment", part)
        validate_id("completions subcollection", self.completions)
        if self.completions == ROSTER:  # the roster chunks and the marker live there
            raise InvalidIdError(f"completions subcollection {ROSTER!r} is reserved for rosters")


def validate_player(mode: MigrationMode, player: object) -> str:
    """Return ``player`` if ``mode`` can store it as a player id, else raise ``InvalidIdError``."""
    validate_id("player id", player)
    assert isinstance(player, str)
    if mode.writes_legacy:
        validate_legacy_key(player)
    return player
