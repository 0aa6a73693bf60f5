"""The boundary of every migration step: each argument checked by its name, client errors typed.

``@checked`` binds a call to the step's signature and checks every argument
with the rule for its parameter name (one table for all steps: ``client`` is
an ``AsyncClient`` wherever it appears, ``batch_ids`` an iterable of ids...)
before the step runs, so before anything is read or written. A parameter
without a rule fails at import, not at a user's call. What the step then
lets out is a ``BatchStateError``: a client error (a closed channel included)
leaves as ``WriteFailedError`` or ``RetryExhaustedError``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from google.cloud.firestore_v1.async_client import AsyncClient

from .._config import MigrationMode
from .._errors import InvalidInputError
from .._retry import RetryPolicy
from .._store.ids import (
    Layout,
    validate_bool,
    validate_callable,
    validate_clock,
    validate_count,
    validate_id,
    validate_instance,
    validate_seconds,
)
from .._write.boundary import typed_errors
from ._progress import MigrationError
from ._walk import _checked_ids

P = ParamSpec("P")
T = TypeVar("T")


def _optional(check: Callable[[str, object], object]) -> Callable[[str, object], object]:
    return lambda name, value: None if value is None else check(name, value)


def _checkpoint(name: str, value: object) -> object:
    for method in ("load", "save"):
        if not callable(getattr(value, method, None)):
            raise InvalidInputError(
                f"{name} must be a Checkpoint (load and save), not {type(value).__name__}"
            )
    return value


def _concurrency(name: str, value: object) -> int:
    return validate_count(name, value, minimum=1, error=MigrationError)


_RULES: dict[str, Callable[[str, object], object]] = {
    "client": lambda name, value: validate_instance(name, value, AsyncClient),
    "layout": lambda name, value: validate_instance(name, value, Layout),
    "mode": lambda name, value: validate_instance(name, value, MigrationMode),
    "batch_id": lambda _, value: validate_id("batch id", value),
    "batch_ids": lambda _, value: _checked_ids(value),  # type: ignore[arg-type]
    "dry_run": validate_bool,
    "concurrency": _concurrency,
    "checkpoint": _optional(_checkpoint),
    "checkpoint_interval": validate_seconds,
    "progress": _optional(validate_callable),
    "retry": _optional(lambda name, value: validate_instance(name, value, RetryPolicy)),
    "clock": validate_clock,
}
"""The rule of each parameter name: returns the value the step gets (``batch_ids``: a list)."""


def checked(
    step: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate a public migration step: arguments checked by name, client errors typed.

    Raises:
        TypeError: At decoration: a parameter of ``step`` has no rule.
    """
    signature = inspect.signature(step)
    unruled = [name for name in signature.parameters if name not in _RULES]
    if unruled:
        raise TypeError(f"{step.__qualname__}: no argument rule for {', '.join(unruled)}")

    @functools.wraps(step)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            bound.arguments[name] = _RULES[name](name, value)
        return await step(*bound.args, **bound.kwargs)

    return typed_errors(wrapper)
