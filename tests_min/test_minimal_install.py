"""async-batchstate installed with pytest only: the user's test suite still runs.

Run by ``.ci/run`` in a venv made by ``pip install . pytest`` (no pytest-asyncio,
no extras), where the plugin used to kill every pytest run at load.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sysconfig
from pathlib import Path

import pytest

TIMEOUT = 120

USER_TESTS = """
def test_plain():
    assert 2 == 1 + 1

def test_own_collection(firestore_namespace, batch_collection):
    assert firestore_namespace + "_batches" == batch_collection

def test_collections_differ_per_test(batch_collection):
    assert batch_collection.startswith("t_test_collections_differ_per_test_")
"""


def test_this_environment_is_the_minimal_install() -> None:
    """No pytest-asyncio and no extras here, so the tests below prove things without them."""
    present = [m for m in ("pytest_asyncio", "rich", "matplotlib") if importlib.util.find_spec(m)]
    assert [] == present


def test_pytest_runs_with_the_plugin_loaded(request: pytest.FixtureRequest) -> None:
    """This very session loaded the async_batchstate plugin, and the helpers import."""
    import async_batchstate.testing

    assert request.config.pluginmanager.has_plugin("async_batchstate")
    assert "EmulatorInfo" in async_batchstate.testing.__all__


def test_pytest_version_lists_the_plugin(pytester: pytest.Pytester) -> None:
    """``pytest -VV`` starts and names async-batchstate among the registered plugins."""
    result = pytester.runpytest_subprocess("-VV", timeout=TIMEOUT)
    assert 0 == result.ret
    result.stdout.fnmatch_lines(["*registered third-party plugins:*", "*async-batchstate-*"])


def test_a_users_tests_with_the_sync_fixtures_pass(pytester: pytest.Pytester) -> None:
    """A user's plain tests and tests using ``firestore_namespace``/``batch_collection`` pass."""
    pytester.makepyfile(USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=TIMEOUT)
    result.assert_outcomes(passed=3)


def test_firestore_client_without_pytest_asyncio_errors_only_that_test(
    pytester: pytest.Pytester,
) -> None:
    """Asking for the async ``firestore_client`` errors that test with what to install; others pass."""
    pytester.makepyfile(
        USER_TESTS
        + """
def test_client(firestore_client):
    raise AssertionError("not reached")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=TIMEOUT)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*the firestore_client fixture is async and needs pytest-asyncio*pip install pytest-asyncio*"
        ]
    )


def test_a_sync_test_reaches_the_emulator_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """``firestore_emulator`` is sync: a test can drive the library with ``asyncio.run``.

    Without an emulator on this machine the user's test is skipped (or errors, if
    ASYNC_BATCHSTATE_REQUIRE_EMULATOR is set, as CI sets it where one is installed).
    """
    from async_batchstate.testing import EmulatorNotFoundError, find_emulator_jar

    pytester.makepyfile(
        """
        import asyncio
        from async_batchstate import AsyncBatchStateManager
        from async_batchstate.testing import aclose_client, make_client

        def test_record(firestore_emulator, batch_collection):
            async def main():
                client = make_client(firestore_emulator)
                try:
                    async with AsyncBatchStateManager(client, collection=batch_collection) as m:
                        await m.create_batch("b", expected_count=1)
                        return await m.record_completion("b", "p", predictions_count=2)
                finally:
                    await aclose_client(client)

            assert asyncio.run(main()).batch_completed
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=TIMEOUT)
    try:
        find_emulator_jar()
    except EmulatorNotFoundError:
        result.assert_outcomes(skipped=1)
    else:
        result.assert_outcomes(passed=1)


def test_the_command_without_the_cli_extra_says_what_to_install() -> None:
    """The installed ``async-batchstate`` script, rich absent: one line to stderr, exit 2."""
    script = Path(sysconfig.get_path("scripts")) / "async-batchstate"
    done = subprocess.run(
        [str(script), "demo"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert 2 == done.returncode
    expected = (
        "the async-batchstate command needs the [cli] extra: pip install 'async-batchstate[cli]'\n"
    )
    assert expected == done.stderr
