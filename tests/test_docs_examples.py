"""Every code block of the README and the docs site runs or parses, so the docs cannot drift.

Conventions for whoever writes a docs page (plain markdown, nothing to install):

* A ```` ```python ```` block runs as the body of an async function against the session's
  Firestore emulator: top-level ``await`` works, ``AsyncClient()`` connects to the emulator
  in a Firestore project of the block's own, and the names ``client`` (an ``AsyncClient``
  in that project), ``collection`` (a collection name) and ``manager`` (an
  ``AsyncBatchStateManager`` on them) are bound. Every client and manager the block leaves
  behind is closed afterwards. An ``async def test_*`` the block defines is then called
  with the pytest plugin's fixtures it names (``firestore_emulator``,
  ``firestore_client``, ``batch_collection``), as pytest would.
* A comment line ``# docs-test: skip: REASON`` inside a block leaves it out, the reason
  in the block itself for its reader. Skipped blocks are reported by pytest with their
  reason, one test each, and counted below; a marker outside a block (the old
  ``<!-- docs-test: skip -->``) or a skip without a reason fails.
* A ```` ```bash ```` block is checked command by command: ``async-batchstate ...`` parses
  with the CLI's own parser, ``pip install`` names extras that exist, ``python -m X``
  names a module that imports; other commands must be in ``KNOWN_COMMANDS``.
* Every fence names its language, so no python block hides in an untagged fence.
* The README's links to the site resolve (page and heading), and every test a page cites
  as proof (``test_x.py`` or ``test_x.py::test_name``) exists. Links between site pages
  are checked by ``mkdocs build --strict`` (``validation`` in ``mkdocs.yml``).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.cloud.firestore
import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager
from async_batchstate.cli import build_parser
from async_batchstate.testing import EmulatorInfo, aclose_client

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LANGUAGES = {"python", "bash", "text", "toml", "json"}
"""Fence languages a page may use; only python and bash blocks are code we check."""
KNOWN_COMMANDS = {"gcloud", "pytest"}
"""Shell commands that are not ours to check (their own tools validate them)."""
SKIP = re.compile(r"^\s*#\s*docs-test:\s*skip\b:?\s*(?P<reason>.*?)\s*$", re.MULTILINE)
"""A block's own comment line that leaves it out, with the reason."""
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    lang: str
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced blocks of ``page``, each with the reason its skip comment gives, if any."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = opening["indent"]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        marker = SKIP.search(body)
        yield Block(page, i + 1, opening["lang"], body, marker["reason"] if marker else None)
        i = end + 1


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]
BASH = [b for b in ALL_BLOCKS if b.lang == "bash"]


def test_every_fence_names_a_known_language() -> None:
    """An untagged or unknown fence could hide code that nothing checks."""
    assert [] == [(b.id, b.lang) for b in ALL_BLOCKS if b.lang not in LANGUAGES]


def test_a_skip_is_in_its_block_with_a_reason() -> None:
    """No skip marker outside a block (where a reader of the block would not see it), and
    every skip comment says why."""
    outside = [
        f"{page.relative_to(ROOT)}:{n}"
        for page in PAGES
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if "docs-test" in line and not SKIP.match(line)
    ]
    assert [] == outside
    assert [] == [b.id for b in ALL_BLOCKS if b.skip_reason == ""]


def test_blocks_are_counted_and_skips_are_rare() -> None:
    """Every python block either runs or is skipped by a comment with a reason; most run."""
    skipped = [b.id for b in PYTHON if b.skip_reason is not None]
    assert len(PYTHON) >= 15, "the docs lost their examples, or the extraction broke"
    assert len(skipped) <= len(PYTHON) // 4, f"too many python blocks skipped: {skipped}"
    assert len(BASH) >= 4


class _TrackedClient(AsyncClient):
    """``AsyncClient`` that remembers every instance, so a block's clients are closed."""

    made: list[AsyncClient] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _TrackedClient.made.append(self)


async def _call_tests(namespace: dict[str, Any], fixtures: dict[str, Any]) -> None:
    """Call each ``async def test_*`` the block defined, as pytest would with the plugin."""
    for name, function in list(namespace.items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(function):
            wanted = inspect.signature(function).parameters
            await function(**{arg: fixtures[arg] for arg in wanted})


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
async def test_python_block_runs(
    block: Block, firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block runs to the end against the emulator, in a Firestore project of its own."""
    if block.skip_reason is not None:
        pytest.skip(block.skip_reason)
    project = f"docs-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setattr(google.cloud.firestore, "AsyncClient", _TrackedClient)
    monkeypatch.setattr(_TrackedClient, "made", [])
    client = _TrackedClient(project=project)
    collection = "docs_batches"
    manager = AsyncBatchStateManager(client, collection=collection)
    namespace: dict[str, Any] = {
        "__name__": "docs_example",
        "client": client,
        "collection": collection,
        "manager": manager,
    }
    managers = [manager]
    try:
        code = compile(
            block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        result = eval(code, namespace)  # the docs' own code: running it is the point
        if inspect.iscoroutine(result):
            await result
        managers += [v for v in namespace.values() if isinstance(v, AsyncBatchStateManager)]
        fixtures = {
            "firestore_emulator": EmulatorInfo(firestore_emulator.host, project, None),
            "firestore_client": client,
            "batch_collection": collection,
        }
        await _call_tests(namespace, fixtures)
    finally:
        for made in managers:
            await made.aclose()
        for opened in _TrackedClient.made:
            await aclose_client(opened)


def _commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a bash block: continuations joined, split on && ; |."""
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in {"&&", "||", ";", "|"}:
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def _extras() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


def _check_command(argv: list[str]) -> None:
    name, args = argv[0], argv[1:]
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", name):
        return  # a shell variable assignment, not a command
    if name == "async-batchstate":
        try:
            build_parser().parse_args(args)
        except SystemExit as exit_:
            assert exit_.code == 0, f"`{shlex.join(argv)}` does not parse"
    elif name == "pip":
        assert args[:1] == ["install"], argv
        for extras in re.findall(r"\[([\w,-]+)\]", " ".join(args)):
            assert set(extras.split(",")) <= _extras(), f"unknown extra in {argv}"
    elif name in {"python", "python3"}:
        assert args[:1] == ["-m"], argv
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
    else:
        assert name in KNOWN_COMMANDS, f"unknown command {name!r}: check it or add it"


@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_bash_block_commands_exist(block: Block) -> None:
    """Our own commands parse; pip extras exist; every other command is a known tool."""
    if block.skip_reason is not None:
        pytest.skip(block.skip_reason)
    commands = list(_commands(block.code))
    assert commands, "an empty bash block"
    for argv in commands:
        _check_command(argv)


LINK = re.compile(r"\]\((?!https?:|mailto:)(?P<path>[^)#\s]*)(?:#(?P<anchor>[^)\s]+))?\)")
CITED_TEST = re.compile(r"`(?:tests/)?(?P<file>test_\w+\.py)(?:::(?P<name>test_\w+))?`")


def _slug(heading: str) -> str:
    """The anchor mkdocs (``toc``) and GitHub both give a plain heading."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file that exists, and a heading it has."""
    readme = ROOT / "README.md"
    broken = []
    for link in LINK.finditer(readme.read_text()):
        target = ROOT / link["path"] if link["path"] else readme
        if not target.exists() or (link["anchor"] and link["anchor"] not in _anchors(target)):
            broken.append(link[0])
    assert [] == broken


def test_cited_tests_exist() -> None:
    """Each test file (and test function) the docs cite as proof is in ``tests/``."""
    files = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for page in PAGES:
        for cited in CITED_TEST.finditer(page.read_text()):
            path = files.get(cited["file"])
            if path is None or (cited["name"] and f"def {cited['name']}(" not in path.read_text()):
                missing.append(f"{page.name}: {cited[0]}")
    assert [] == missing
