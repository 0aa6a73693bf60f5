"""A lock-free group's writes as raw protobuf ``Write`` messages.

The client's builders (``WriteBatch.create`` / ``update``) parse, sort and compare
every field path and build each value as a proto-plus message, a large share of
a lone completion's client CPU. These build the same messages directly, from the
same dicts;
``tests/write/test_wire.py`` holds them equal to the client's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.cloud.firestore_v1 import DELETE_FIELD, SERVER_TIMESTAMP, ArrayUnion, Increment
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import DocumentTransform, Write

_WRITE: Any = Write.pb()
_REQUEST_TIME = DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME

_SIMPLE = re.compile("^[_a-zA-Z][_a-zA-Z0-9]*$")
"""A field name the client leaves unquoted in a field path (its own pattern, ``$`` and all)."""


@functools.lru_cache(maxsize=4096)  # the same few field names in every write
def _parts(key: str) -> tuple[str, ...]:
    """The segments of an ``update()`` key (a dotted, possibly quoted, field path)."""
    if _SIMPLE.match(key):
        return (key,)
    return tuple(FieldPath.from_string(key).parts)


@functools.lru_cache(maxsize=4096)
def _path(parts: tuple[str, ...]) -> str:
    """``parts`` as the API writes a field path."""
    if len(parts) == 1 and _SIMPLE.match(parts[0]):
        return parts[0]
    return str(FieldPath(*parts).to_api_repr())


def _set(value_pb: Any, value: Any) -> None:
    """Encode ``value`` into the ``Value`` message ``value_pb`` (the client's encoding)."""
    if isinstance(value, bool):  # before int: a bool is an int
        value_pb.boolean_value = value
    elif isinstance(value, int):
        value_pb.integer_value = value
    elif isinstance(value, str):
        value_pb.string_value = value
    elif isinstance(value, Mapping):
        value_pb.map_value.SetInParent()  # an empty map is still a map
        fields = value_pb.map_value.fields
        for key, item in value.items():
            _set(fields[key], item)
    elif isinstance(value, list | tuple):
        _set_array(value_pb.array_value, value)
    else:
        raise TypeError(f"no wire encoding for {type(value).__name__} here")


def _set_array(array_pb: Any, values: Iterable[Any]) -> None:
    array_pb.SetInParent()
    for item in values:
        _set(array_pb.values.add(), item)


def is_transform(value: object) -> bool:
    """Whether ``value`` is sent as a field transform (not a value) in an update."""
    return value is SERVER_TIMESTAMP or isinstance(value, ArrayUnion | Increment)


def _add_transform(write: Any, path: str, value: Any) -> None:
    transform = write.update_transforms.add()
    transform.field_path = path
    if value is SERVER_TIMESTAMP:
        transform.set_to_server_value = _REQUEST_TIME
    elif isinstance(value, Increment):
        _set(transform.increment, value.value)
    else:
        _set_array(transform.append_missing_elements, value.values)


def _document_write(name: str, data: Mapping[str, Any], *, update: bool) -> Write:
    write = _WRITE()
    write.update.name = name
    write.current_document.exists = update  # update: it must exist; create: it must not
    if update:
        # Present even when empty: a Write without a mask replaces the whole document.
        write.update_mask.SetInParent()
    transforms: list[tuple[tuple[str, ...], str, Any]] = []
    masked: list[tuple[tuple[str, ...], str]] = []
    for key, value in data.items():
        # create() takes keys literally; update() reads them as field paths.
        parts = _parts(key) if update else (key,)
        if is_transform(value):
            transforms.append((parts, _path(parts), value))
            continue
        if update:
            masked.append((parts, _path(parts)))
        if value is DELETE_FIELD:
            continue
        fields = write.update.fields
        for part in parts[:-1]:
            fields = fields[part].map_value.fields
        _set(fields[parts[-1]], value)
    for _, path in sorted(masked):
        write.update_mask.field_paths.append(path)
    # The client sends transforms sorted by field path, and ``ResultsAt`` counts on it.
    for _, path, value in sorted(transforms, key=lambda t: t[0]):
        _add_transform(write, path, value)
    wrapped: Write = Write.wrap(write)
    return wrapped


def create_write(name: str, data: Mapping[str, Any]) -> Write:
    """``WriteBatch.create(document named name, data)``'s ``Write``."""
    return _document_write(name, data, update=False)


def update_write(name: str, data: Mapping[str, Any]) -> Write:
    """``WriteBatch.update(document named name, data)``'s ``Write`` (it must exist)."""
    return _document_write(name, data, update=True)
