"""The public surface: __all__ is pinned, sorted and importable; the package is typed."""

from __future__ import annotations

from importlib.resources import files

import async_batchstate
import async_batchstate.testing


def test_all_is_sorted_and_every_name_exists() -> None:
    """Every exported name resolves, and the list is kept sorted."""
    assert sorted(async_batchstate.__all__) == async_batchstate.__all__
    missing = [n for n in async_batchstate.__all__ if not hasattr(async_batchstate, n)]
    assert [] == missing


def test_core_names_are_exported() -> None:
    """The names the README and the issue fix are public."""
    pinned = {
        "AsyncBatchStateManager",
        "BatchProgress",
        "BatchStateError",
        "CompletionResult",
        "CompletionStatus",
        "ConfigurationError",
        "InvalidIdError",
        "InvalidCountError",
        "MigrationMode",
        "OpenTelemetryHook",
        "PrometheusCollector",
        "RetryPolicy",
        "RetryExhaustedError",
        "Stats",
        "__version__",
    }
    assert pinned <= set(async_batchstate.__all__)


def test_every_error_is_a_batch_state_error() -> None:
    """One base class catches every error the library raises."""
    errors = [
        getattr(async_batchstate, n)
        for n in async_batchstate.__all__
        if n.endswith("Error") and n != "BatchStateError"
    ]
    assert errors
    assert all(issubclass(e, async_batchstate.BatchStateError) for e in errors)


def test_package_ships_py_typed() -> None:
    """PEP 561 marker present."""
    assert files("async_batchstate").joinpath("py.typed").is_file()


def test_testing_all_is_sorted_and_every_name_exists() -> None:
    """The same for ``async_batchstate.testing``."""
    assert sorted(async_batchstate.testing.__all__) == async_batchstate.testing.__all__
    missing = [
        n for n in async_batchstate.testing.__all__ if not hasattr(async_batchstate.testing, n)
    ]
    assert [] == missing
