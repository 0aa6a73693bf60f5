"""The API reference page documents every public name (the build itself runs in .ci/run)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import async_batchstate
import async_batchstate.consistency
import async_batchstate.instrumentation
import async_batchstate.migration
import async_batchstate.pubsub
import async_batchstate.testing

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"


def test_every_public_name_has_an_api_entry() -> None:
    """``docs/api.md`` has a ``::: <package>[.<module>].<name>`` directive for each export."""
    page = API_PAGE.read_text()
    missing = [
        f"{module.__name__}.{name}"
        for module in (
            async_batchstate,
            async_batchstate.consistency,
            async_batchstate.instrumentation,
            async_batchstate.migration,
            async_batchstate.pubsub,
            async_batchstate.testing,
        )
        for name in module.__all__
        if name != "__version__"
        and not re.search(
            rf"^::: {re.escape(module.__name__)}(\.\w+)*\.{re.escape(name)}$", page, re.MULTILINE
        )
    ]
    assert [] == missing


def test_the_version_is_the_changelogs_newest_release() -> None:
    """``pyproject.toml``'s version is the newest ``## [x.y.z] - date`` of CHANGELOG.md."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    releases = re.findall(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$",
        (ROOT / "CHANGELOG.md").read_text(),
        re.MULTILINE,
    )
    assert releases[:1] == [project["version"]]


_CITED_TEST = re.compile(r"((?:tests/[\w/]*)?test_\w+\.py)(?:::(\w+))?")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("CONTRIBUTING.md")]


def test_every_test_a_page_cites_exists() -> None:
    """Each ``test_*.py`` (and ``::test_name``) named in README.md and docs/ resolves: a path
    under tests/ (or a file name only one test file has) and a test function in it."""
    files = {p.relative_to(ROOT).as_posix(): p for p in (ROOT / "tests").rglob("test_*.py")}
    by_name: dict[str, list[str]] = {}
    for path in files:
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(path)
    unresolved = []
    for page in _pages():
        for cited, function in _CITED_TEST.findall(page.read_text()):
            paths = [cited] if cited.startswith("tests/") else by_name.get(cited, [])
            if len(paths) != 1 or paths[0] not in files:
                unresolved.append(f"{page.name}: {cited}")
            elif function and not re.search(
                rf"^(async )?def {function}\(", files[paths[0]].read_text(), re.MULTILINE
            ):
                unresolved.append(f"{page.name}: {cited}::{function}")
    assert [] == unresolved
