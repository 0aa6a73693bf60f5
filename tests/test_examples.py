"""The examples in ``examples/`` run as a user would run them, against the session's emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from async_batchstate.testing import EmulatorInfo

from .helpers import run_pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["queue_coordinator.py", "wait_for_batch.py"])
def test_example_script_exits_zero(script: str, firestore_emulator: EmulatorInfo) -> None:
    """``python examples/<script>`` with FIRESTORE_EMULATOR_HOST set checks its result and exits 0."""
    env = {**os.environ, "FIRESTORE_EMULATOR_HOST": firestore_emulator.host}
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "OK" == done.stdout.splitlines()[-1]


def test_example_script_without_firestore_says_what_to_set(tmp_path: Path) -> None:
    """With neither an emulator nor a project configured, an example exits 2 and says why."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"}
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "wait_for_batch.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 2 == done.returncode
    assert "FIRESTORE_EMULATOR_HOST" in done.stderr


def test_plugin_example_passes_as_a_users_test_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, firestore_emulator: EmulatorInfo
) -> None:
    """A copy of ``examples/test_with_plugin.py`` passes under pytest with warnings as errors."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.delenv("ASYNC_BATCHSTATE_REQUIRE_EMULATOR", raising=False)
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_with_plugin=(EXAMPLES / "test_with_plugin.py").read_text())

    result = run_pytest(pytester, "--require-firestore-emulator")

    result.assert_outcomes(passed=4)
