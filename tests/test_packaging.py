"""What ``pip install async-batchstate[...]`` brings: core dependencies, extras, entry points."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def project() -> dict[str, Any]:
    """The parsed ``pyproject.toml``."""
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def names(requirements: list[str]) -> set[str]:
    """Distribution names of ``requirements``, normalised."""
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def test_core_dependencies_carry_no_cli_or_benchmark_packages() -> None:
    """rich and matplotlib are in extras only: the library does not pull a terminal UI."""
    core = names(project()["project"]["dependencies"])
    assert set() == core & {"rich", "matplotlib"}


def test_cli_extra_is_rich() -> None:
    """``[cli]`` brings rich, which the demo and migrate commands (and benchmarks) need."""
    extras = project()["project"]["optional-dependencies"]
    assert {"rich"} == names(extras["cli"])
    assert {"rich", "matplotlib"} == names(extras["bench"])


def test_dev_extra_holds_every_extra_and_the_dev_group() -> None:
    """``pip install -e '.[dev]'`` (.ci/run, the README) installs all the test suite runs."""
    data = project()
    extras = data["project"]["optional-dependencies"]
    wanted = {r for name, reqs in extras.items() if name != "dev" for r in reqs}
    wanted |= set(data["dependency-groups"]["dev"])
    assert set() == wanted - set(extras["dev"])


def test_pytest_entry_point_names_the_top_level_plugin_module() -> None:
    """pytest loads ``_async_batchstate_pytest_plugin``, which imports only pytest."""
    found = {
        e.name: e.value for e in entry_points(group="pytest11") if e.name == "async_batchstate"
    }
    assert {"async_batchstate": "_async_batchstate_pytest_plugin"} == found
