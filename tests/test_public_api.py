"""The public surface: every public module's ``__all__`` checked both ways; moved names fail loudly."""

from __future__ import annotations

import importlib
import inspect
import types
from importlib.resources import files

import pytest

import async_batchstate

PUBLIC_MODULES = [
    "async_batchstate",
    "async_batchstate.consistency",
    "async_batchstate.instrumentation",
    "async_batchstate.migration",
    "async_batchstate.pubsub",
    "async_batchstate.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    """Every exported name resolves, and the list is kept sorted."""
    module = importlib.import_module(name)
    assert sorted(module.__all__) == module.__all__
    assert [] == [n for n in module.__all__ if not hasattr(module, n)]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_attribute_is_in_all(name: str) -> None:
    """The other way round: no public class, function or constant of the module is missing
    from ``__all__`` (submodules and the typing helpers it imports aside)."""
    module = importlib.import_module(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name).startswith("async_batchstate")
    }
    assert [] == sorted(public - set(module.__all__))


def test_the_top_level_api_is_small() -> None:
    """About 25 names: the manager, its results, settings and errors."""
    assert len(async_batchstate.__all__) <= 27


def test_every_error_is_a_batch_state_error() -> None:
    """One base class catches every error the library exports, from every public module."""
    errors = [
        getattr(module, n)
        for module in map(importlib.import_module, PUBLIC_MODULES)
        for n in module.__all__
        if n.endswith("Error")
    ]
    assert len(errors) >= 15
    assert [] == [e for e in errors if not issubclass(e, async_batchstate.BatchStateError)]


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("ConsistencyReport", "async_batchstate.consistency"),
        ("BackfillSummary", "async_batchstate.migration"),
        ("OpenTelemetryHook", "async_batchstate.instrumentation"),
        ("FaultPoint", "async_batchstate.testing"),
    ],
)
def test_a_name_that_moved_fails_loudly_with_its_new_home(name: str, where: str) -> None:
    """0.1's top-level names that moved raise AttributeError naming the new module, which has them."""
    with pytest.raises(AttributeError, match=where):
        getattr(async_batchstate, name)
    assert hasattr(importlib.import_module(where), name)


def test_a_removed_name_fails_loudly_with_the_reason() -> None:
    """Internals that 0.1 exported say what replaces them."""
    with pytest.raises(AttributeError, match="max_in_flight_per_batch"):
        async_batchstate.AdaptiveLimit  # type: ignore[attr-defined]  # noqa: B018


def test_testing_exports_the_write_ceiling_proxy() -> None:
    """``WriteCeilingProxy`` (the modelled per-document write ceiling) is public in ``testing``."""
    testing = importlib.import_module("async_batchstate.testing")
    assert "WriteCeilingProxy" in testing.__all__
    assert testing.WriteCeilingProxy.__module__ == "async_batchstate.testing._ceiling"


def test_package_ships_py_typed() -> None:
    """PEP 561 marker present."""
    assert files("async_batchstate").joinpath("py.typed").is_file()


def test_public_classes_have_docstrings() -> None:
    """Every exported class and function documents itself (Google style, rendered in docs/)."""
    undocumented = [
        f"{name}.{n}"
        for name in PUBLIC_MODULES
        for n, value in vars(importlib.import_module(name)).items()
        if n in importlib.import_module(name).__all__
        and (inspect.isclass(value) or inspect.isfunction(value))
        and not inspect.getdoc(value)
    ]
    assert [] == undocumented
