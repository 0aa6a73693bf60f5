"""The pytest plugin, exercised as a user would with pytester (each run is a separate pytest)."""

from __future__ import annotations

import pytest

from async_batchstate.testing import EmulatorInfo

from ..helpers import run_pytest, run_python

USER_TESTS = """
import pytest
from async_batchstate import AsyncBatchStateManager

SEEN = {}

@pytest.mark.asyncio
async def test_one(firestore_client, batch_collection, firestore_emulator):
    SEEN["one"] = batch_collection
    m = AsyncBatchStateManager(firestore_client, collection=batch_collection)
    await m.create_batch("b", expected_count=1)
    assert (await m.record_completion("b", "p", predictions_count=2)).batch_completed
    docs = [d.id async for d in firestore_client.collection(batch_collection).stream()]
    assert docs == ["b"]
    print("PROCESS", firestore_emulator.process is not None)

@pytest.mark.asyncio
async def test_two_sees_only_its_own_data(firestore_client, batch_collection):
    assert batch_collection != SEEN["one"]
    docs = [d.id async for d in firestore_client.collection(batch_collection).stream()]
    assert docs == []
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No emulator named in the environment and no requirement, unless a test sets them."""
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("ASYNC_BATCHSTATE_REQUIRE_EMULATOR", raising=False)
    return monkeypatch


@pytest.mark.emulator  # the inner session starts one: no fixture of this test says so
def test_plugin_starts_an_emulator_and_isolates_tests(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """With no FIRESTORE_EMULATOR_HOST the plugin starts one; each test gets its own collection."""
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*PROCESS True*"])


def test_plugin_reuses_the_emulator_named_in_the_environment(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, firestore_emulator: EmulatorInfo
) -> None:
    """FIRESTORE_EMULATOR_HOST set: the plugin starts nothing and uses that emulator."""
    clean_env.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*PROCESS False*"])


def test_plugin_skips_with_a_reason_when_no_emulator(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """No emulator installed (jar path points nowhere): tests skip and say why."""
    clean_env.setenv("ASYNC_BATCHSTATE_EMULATOR_JAR", "/nonexistent/emulator.jar")
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*Firestore emulator unavailable*/nonexistent/emulator.jar*"])


@pytest.mark.parametrize("how", ["option", "env"])
def test_plugin_errors_when_the_emulator_is_required_and_absent(
    how: str, pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """--require-firestore-emulator or ASYNC_BATCHSTATE_REQUIRE_EMULATOR=1 turns the skip into an error."""
    clean_env.setenv("ASYNC_BATCHSTATE_EMULATOR_JAR", "/nonexistent/emulator.jar")
    args: list[str] = []
    if how == "option":
        args.append("--require-firestore-emulator")
    else:
        clean_env.setenv("ASYNC_BATCHSTATE_REQUIRE_EMULATOR", "1")
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, *args)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*required by --require-firestore-emulator*"])


def test_testing_helpers_import_without_pytest(pytester: pytest.Pytester) -> None:
    """``async_batchstate.testing`` and every name in its ``__all__`` import with pytest absent."""
    code = """
        import sys
        import async_batchstate.testing as t
        missing = [n for n in t.__all__ if not hasattr(t, n)]
        print("MISSING", missing, "PYTEST", "pytest" in sys.modules)
    """
    result = run_python(pytester, code, blocked={"pytest", "_pytest", "pytest_asyncio"})
    assert 0 == result.ret, str(result.stderr)
    result.stdout.fnmatch_lines(["MISSING [] PYTEST False"])


def test_plugin_module_imports_nothing_but_pytest_at_load(pytester: pytest.Pytester) -> None:
    """Loading the plugin imports only the standard library beyond what ``import pytest`` did.

    In particular not the library (google-cloud-firestore, grpc) nor pytest-asyncio:
    the plugin loads in every pytest run of an environment with async-batchstate.
    """
    code = """
        import sys
        import pytest
        before = set(sys.modules)
        import _async_batchstate_pytest_plugin
        added = {m.partition(".")[0] for m in set(sys.modules) - before}
        print("ADDED", sorted(added - set(sys.stdlib_module_names)))
        heavy = ["async_batchstate", "google.cloud.firestore_v1", "grpc", "pytest_asyncio", "rich"]
        print("HEAVY", [m for m in heavy if m in sys.modules])
    """
    result = run_python(pytester, code)
    assert 0 == result.ret, str(result.stderr)
    result.stdout.fnmatch_lines(["ADDED ['_async_batchstate_pytest_plugin']", "HEAVY []"])


def test_a_session_that_uses_no_fixture_never_imports_the_library(
    pytester: pytest.Pytester,
) -> None:
    """With the plugin loaded, a user's suite that asks for no fixture of ours pays nothing."""
    pytester.makepyfile(
        """
        import sys

        def test_plugin_loaded_but_library_not_imported(request):
            assert request.config.pluginmanager.has_plugin("async_batchstate")
            assert "async_batchstate" not in sys.modules
            assert "google.cloud.firestore_v1" not in sys.modules
        """
    )
    result = run_pytest(pytester)
    result.assert_outcomes(passed=1)


WITHOUT_PYTEST_ASYNCIO = """
def test_plain():
    assert 1 + 1 == 2

def test_names(firestore_namespace, batch_collection):
    assert batch_collection == firestore_namespace + "_batches"
    assert firestore_namespace.startswith("t_test_names_")

def test_client(firestore_client):
    raise AssertionError("not reached: the fixture fails first")
"""


def test_without_pytest_asyncio_sync_fixtures_work_and_the_client_says_what_to_install(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """pytest-asyncio disabled: sync fixtures work; ``firestore_client`` errors that one test, saying why."""
    pytester.makepyfile(WITHOUT_PYTEST_ASYNCIO)
    result = run_pytest(pytester, "-p", "no:asyncio")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*firestore_client fixture is async and needs pytest-asyncio*"])
    result.stdout.no_fnmatch_line("*not reached*")
