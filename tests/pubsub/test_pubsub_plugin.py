"""The plugin's ``pubsub_emulator`` fixture as a user meets it (each run is a separate pytest)."""

from __future__ import annotations

import pytest

from async_batchstate.testing import PubSubEmulator

from ..helpers import run_pytest

USER_TESTS = """
import os

def test_one(pubsub_emulator):
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host
    pubsub_emulator.create_topic("demo-project", "user-topic")
    assert pubsub_emulator.publish("demo-project", "user-topic", [b"x"])
    print("PROCESS", pubsub_emulator.pid is not None)
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Pub/Sub emulator named in the environment and no requirement."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("ASYNC_BATCHSTATE_REQUIRE_PUBSUB_EMULATOR", raising=False)
    return monkeypatch


def test_the_fixture_reuses_the_emulator_named_in_the_environment(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, pubsub_emulator: PubSubEmulator
) -> None:
    """PUBSUB_EMULATOR_HOST set: nothing is started, that emulator is used."""
    clean_env.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PROCESS False*"])


def test_the_fixture_skips_loudly_without_an_emulator(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """No emulator installed (its path points nowhere): the test skips and says why."""
    clean_env.setenv("ASYNC_BATCHSTATE_PUBSUB_EMULATOR", "/nonexistent/cloud-pubsub-emulator")
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Pub/Sub emulator unavailable*/nonexistent/*"])


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_fixture_errors_when_required_and_absent(
    how: str, pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """--require-pubsub-emulator or ASYNC_BATCHSTATE_REQUIRE_PUBSUB_EMULATOR=1: an error, not a skip."""
    clean_env.setenv("ASYNC_BATCHSTATE_PUBSUB_EMULATOR", "/nonexistent/cloud-pubsub-emulator")
    args: list[str] = []
    if how == "option":
        args.append("--require-pubsub-emulator")
    else:
        clean_env.setenv("ASYNC_BATCHSTATE_REQUIRE_PUBSUB_EMULATOR", "1")
    pytester.makepyfile(USER_TESTS)
    result = run_pytest(pytester, *args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*required by --require-pubsub-emulator*"])
