"""The docs name only what exists and state the code's defaults (the build itself runs in .ci/run).

Every page (README.md, docs/*.md, CONTRIBUTING.md) is read as text, code blocks included,
and what it names is resolved against the code: ``async_batchstate.x.y`` dotted names by
import, ``Class.attr`` and ``progress.attr`` references against the public classes,
``--flags`` against the argparse parsers they belong to, metric and span names against
the instrumentation, file paths against the repository. The defaults the pages and the
docstrings state are compared with the signatures and dataclass fields they describe;
docs/guarantees.md's proof lists with the ``guarantee`` markers of the tests.
"""

from __future__ import annotations

import argparse
import ast
import enum
import importlib
import inspect
import re
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

import _async_batchstate_pytest_plugin
import async_batchstate
import async_batchstate.consistency
import async_batchstate.instrumentation
import async_batchstate.migration
import async_batchstate.pubsub
import async_batchstate.testing
from async_batchstate import AsyncBatchStateManager, MigrationMode, RetryPolicy, Stats
from async_batchstate._store import names, roster
from async_batchstate._write import callbacks, limits, runner
from async_batchstate.cli import build_parser
from async_batchstate.consistency import Source
from async_batchstate.instrumentation import OpenTelemetryHook, PrometheusCollector

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"
PUBLIC_MODULES: tuple[ModuleType, ...] = (
    async_batchstate,
    async_batchstate.consistency,
    async_batchstate.instrumentation,
    async_batchstate.migration,
    async_batchstate.pubsub,
    async_batchstate.testing,
)


def test_every_public_name_has_an_api_entry() -> None:
    """``docs/api.md`` has a ``::: <package>[.<module>].<name>`` directive for each export."""
    page = API_PAGE.read_text()
    missing = [
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
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


def _texts() -> dict[str, str]:
    """Each page's text, keyed by its path from the repository root."""
    return {page.relative_to(ROOT).as_posix(): page.read_text() for page in _pages()}


def _flat(text: str) -> str:
    """``text`` with every run of whitespace one space (a claim may wrap across lines)."""
    return " ".join(text.split())


def _code_spans(text: str) -> list[str]:
    """The inline code spans of a page (fenced blocks left out), whitespace flattened."""
    outside = re.sub(r"^ *```.*?^ *```", "", text, flags=re.MULTILINE | re.DOTALL)
    return [_flat(span) for span in re.findall(r"`([^`]+)`", outside)]


# --- Python names ----------------------------------------------------------------------

_DOTTED = re.compile(r"(?<![\w.])async_batchstate(?:\.[A-Za-z_]\w*)+")


def _resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute (chain) of the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            return False
        return True
    return False


class _Meter:
    """A meter provider and meter that remember the names of the instruments made."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def get_meter(self, *args: object, **kwargs: object) -> _Meter:
        return self

    def create_counter(self, name: str, **kwargs: object) -> None:
        self.names.add(name)

    create_histogram = create_counter


class _StatsSource:
    def stats(self) -> Stats:
        return Stats(failures_by_cause={"aborted": 1}, group_sizes={1: 1})


def _instrumentation_names() -> set[str]:
    """Metric names of both exporters, span names and span attributes, as emitted."""
    meter = _Meter()
    OpenTelemetryHook(meter_provider=meter, spans=False)  # type: ignore[arg-type]
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    PrometheusCollector(_StatsSource()).register(registry)
    prometheus = {n for f in registry.collect() for n in (f.name, *(s.name for s in f.samples))}
    otel = importlib.import_module("async_batchstate.instrumentation._otel")
    source = inspect.getsource(otel)
    spans = {f"async_batchstate.{n}" for n in re.findall(r'self\._emit\(\s*"(\w+)"', source)}
    attributes = set(re.findall(r'"(async_batchstate\.\w+)"', source)) - meter.names
    return meter.names | prometheus | spans | attributes


def test_every_dotted_name_a_page_gives_exists() -> None:
    """Each ``async_batchstate.x.y`` is a module or attribute, or a metric, span or span
    attribute the instrumentation emits; each ``async_batchstate_x`` a Prometheus metric."""
    emitted = _instrumentation_names()
    unresolved = sorted(
        f"{page}: {name}"
        for page, text in _texts().items()
        for name in set(_DOTTED.findall(text))
        | set(re.findall(r"(?<![\w.])async_batchstate_\w+", text))
        if not _resolves(name) and name not in emitted
    )
    assert [] == unresolved


def _public_classes() -> dict[str, type]:
    return {
        name: obj
        for module in PUBLIC_MODULES
        for name in module.__all__
        if isinstance(obj := getattr(module, name), type)
    }


ALIASES: dict[str, tuple[str, ...]] = {
    "manager": ("AsyncBatchStateManager",),
    "progress": ("BatchProgress",),
    "final": ("BatchProgress",),
    "result": ("CompletionResult",),
    "again": ("CompletionResult",),
    "last": ("CompletionResult",),
    "report": ("ConsistencyReport",),
    "summary": ("BackfillSummary", "VerifySummary", "StatusSummary", "CleanupSummary"),
    "stats": ("Stats", "AdapterStats"),
    "consumer": ("PullConsumer",),
    "endpoint": ("PushEndpoint",),
    "clock": ("Clock", "FakeClock"),
    "proxy": ("FaultyProxy",),
    "lost": ("LostAnswers",),
    "rpcs": ("RpcCounter",),
}
"""Variable names the pages use for instances of public classes (``progress.is_complete``)."""


def _has_attribute(cls: type, name: str) -> bool:
    """A class attribute, a (dataclass) field, or an attribute ``__init__`` assigns."""
    if hasattr(cls, name) or any(name in vars(k).get("__annotations__", {}) for k in cls.__mro__):
        return True
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?=(?!=)", source) is not None


def test_every_attribute_a_page_names_exists() -> None:
    """``Class.attr`` of a public class, and ``progress.attr``-style references through the
    variable names the pages use (``ALIASES``), name a real attribute, field or method."""
    classes = _public_classes()
    missing = []
    for page, text in _texts().items():
        for head, attr in set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)", text)):
            owners = (head,) if head in classes else ALIASES.get(head, ())
            if owners and not any(_has_attribute(classes[o], attr) for o in owners):
                missing.append(f"{page}: {head}.{attr}")
    assert [] == sorted(missing)


# --- Files -----------------------------------------------------------------------------

_PATH = re.compile(
    r"(?<![\w./-])(\.ci/\w+|(?:src|tests|tests_min|benchmarks|examples|docs)/[\w./*-]*(?:/|\.\w+))"
)
"""A repository path: a folder (``tests/write/``), a file with an extension, or ``.ci/``."""
_FILE_SPAN = re.compile(r"^[\w.-]+\.(?:py|md|toml|yml|yaml|json|png|txt|cfg|ini|sh)$")


def _repository_files() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        return set(listed.stdout.splitlines())
    skip = {".git", ".venv", "site"}  # pragma: no cover - outside a git checkout
    return {  # pragma: no cover
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
    }


def test_every_path_a_page_names_exists() -> None:
    """Each repository path (``benchmarks/results/full.md``, ``tests/write/``, a glob) and
    each file name in a code span (``pyproject.toml``, ``wan14.md``) is in the repository."""
    files = _repository_files()
    names = {f.rsplit("/", 1)[-1] for f in files}
    missing = []
    for page, text in _texts().items():
        for path in {p.rstrip(".") for p in _PATH.findall(text)}:
            found = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
            if not any(f.exists() for f in found):
                missing.append(f"{page}: {path}")
        for span in _code_spans(text):
            if _FILE_SPAN.match(span) and span not in names and not (ROOT / span).exists():
                missing.append(f"{page}: {span}")
    assert [] == sorted(missing)


def test_the_package_layout_lists_every_module() -> None:
    """docs/concepts.md's package layout names exactly the modules of ``_store/`` and
    ``_write/`` and the top-level modules and subpackages of ``async_batchstate``."""
    text = (ROOT / "docs" / "concepts.md").read_text()
    block = text.split("## Package layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    listed: dict[str, set[str]] = {"": set(), "_store": set(), "_write": set()}
    current = ""
    for line in block.splitlines()[2:]:  # after "src/async_batchstate/"
        folder = re.match(r"^  (_store|_write)/ +(.*)$", line)
        if folder:
            current, rest = folder[1], folder[2]
        elif line.startswith("    ") and current:
            rest = line.strip()  # a folder's continuation line
        else:
            current, rest = "", line.strip()
        listed[current] |= set(re.split(r"\s{2,}", rest)[0].split())  # then what they are
    package = ROOT / "src" / "async_batchstate"
    actual = {
        "": {p.name for p in package.glob("*.py")}
        | {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()},
        **{
            f: {p.stem for p in (package / f).glob("*.py")} - {"__init__"}
            for f in ("_store", "_write")
        },
    }
    actual[""] -= {"_store/", "_write/"}
    assert actual == listed


# --- Command-line flags ----------------------------------------------------------------

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
FOREIGN_COMMANDS = (
    "gcloud",
    "Cloud Run",
    "uvicorn",
    "pytest",
    "mkdocs",
    "pip",
    "git",
    "pre-commit",
    "nox",
)
"""Tools whose flags the pages show: a flag after one on the same line is theirs."""


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_of(build: Callable[[], object]) -> argparse.ArgumentParser:
    """The parser a ``main``/``parse`` function builds, taken when it parses (nothing runs)."""

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
        raise _Parsed(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", grab)
        try:
            build()
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"{build} parsed nothing")  # pragma: no cover


def _our_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command of ours a page may show, and its parser."""
    bench = importlib.import_module("benchmarks.__main__")
    soak = importlib.import_module("benchmarks.soak")
    rehearsal = importlib.import_module("benchmarks.rehearsal.__main__")
    return {
        "async-batchstate": build_parser(),
        "python -m benchmarks": _parser_of(lambda: bench.main([])),
        "python -m benchmarks.soak": _parser_of(lambda: soak.parse(None)),
        "python -m benchmarks.rehearsal": _parser_of(lambda: rehearsal.config(None)),
    }


def _options(parser: argparse.ArgumentParser, path: list[str] | None = None) -> set[str]:
    """Option strings of ``parser`` and, along ``path`` (subcommand words), its subparsers;
    every subparser's when ``path`` is None."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, argparse.ArgumentParser] = action.choices
            if path is None:
                for sub in choices.values():
                    found |= _options(sub)
            else:
                for i, word in enumerate(path):
                    if word in choices:
                        found |= _options(choices[word], path[i + 1 :])
                        break
    return found


def _plugin_options() -> set[str]:
    """The options the pytest plugin registers."""
    seen: set[str] = set()

    class Recorder:
        def getgroup(self, *args: object, **kwargs: object) -> Recorder:
            return self

        def addoption(self, *names: str, **kwargs: object) -> None:
            seen.update(names)

        def addini(self, *args: object, **kwargs: object) -> None:
            pass

    _async_batchstate_pytest_plugin.pytest_addoption(Recorder())  # type: ignore[arg-type]
    return seen


def _segments(text: str) -> list[str]:
    """Lines (shell continuations joined) and inline code spans (which may wrap)."""
    return text.replace("\\\n", " ").splitlines() + _code_spans(text)


def test_every_flag_a_page_names_exists() -> None:
    """A flag of one of our commands (``async-batchstate``, ``python -m benchmarks...``) is
    an option of that command's parser (its subcommand's); any other flag is an option of
    ours, of the pytest plugin, or shown after another tool (``FOREIGN_COMMANDS``)."""
    parsers = _our_parsers()
    ours = set().union(*(_options(p) for p in parsers.values()), _plugin_options())
    command = re.compile(
        "(?<![\\w-])(" + "|".join(re.escape(c) for c in sorted(parsers, key=len)[::-1]) + r")\b(.*)"
    )
    tools = "|".join(map(re.escape, FOREIGN_COMMANDS))
    foreign = re.compile(rf"(?<![\w./-])({tools})(?:'s)?\s(.*)")
    shown: set[str] = set()
    wrong = []
    for page, text in _texts().items():
        for segment in _segments(text):
            if (other := foreign.search(segment)) is not None:
                shown.update(_FLAG.findall(other[2]))
            mine = command.search(segment)
            if mine is None or mine[2].startswith(":"):
                continue
            line = re.sub(r"[\[\]]", " ", mine[2].split("`")[0].split("#")[0])
            allowed = _options(parsers[mine[1]], line.split())
            wrong += [f"{page}: {mine[1]} {f}" for f in _FLAG.findall(line) if f not in allowed]
    for page, text in _texts().items():
        wrong += [f"{page}: {f}" for f in set(_FLAG.findall(text)) if f not in ours | shown]
    assert [] == sorted(set(wrong))


# --- Defaults --------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "%": 0.01}


def _same(stated: str, actual: object) -> bool:
    """Whether a default as a page or docstring states it (``60 s``, ``"auto"``,
    ``12,000``, ``80 %``, ``SystemClock()``, ``Source.SUBCOLLECTION``) is ``actual``."""
    stated = stated.strip().strip("`").rstrip(".,;:")
    if actual is None or isinstance(actual, bool):
        return stated == str(actual)
    if isinstance(actual, int | float):
        number = re.fullmatch(r"(-?[\d,]*\.?\d+)\s*(ms|s|%)?", stated)
        return number is not None and float(number[1].replace(",", "")) * _UNITS.get(
            number[2] or "", 1.0
        ) == float(actual)
    if isinstance(actual, str):
        return stated.strip("\"'") == actual
    if isinstance(actual, enum.Enum):
        return stated.rsplit(".", 1)[-1] == actual.name
    if inspect.isfunction(actual):
        return stated.removesuffix("()") == actual.__name__
    return stated.removesuffix("()") == type(actual).__name__


def _manager_default(name: str) -> object:
    return inspect.signature(AsyncBatchStateManager).parameters[name].default


def _in_flight(mode: MigrationMode, coalesce: bool, write_path: str) -> int:
    return limits.in_flight_bound(mode, coalesce, write_path, None)


IN_FLIGHT = {
    r"(\d+) lock-free": _in_flight(MigrationMode.DUAL_WRITE, True, "auto"),
    r"(\d+) (?:transactions|with transactions)": _in_flight(
        MigrationMode.DUAL_WRITE, True, "transaction"
    ),
    r"(\d+) (?:in )?LEGACY": _in_flight(MigrationMode.LEGACY, True, "auto"),
    r"(\d+) without coalescing": _in_flight(MigrationMode.DUAL_WRITE, False, "auto"),
}
"""``max_in_flight_per_batch`` (None): the bound each kind of lane gets."""
RETRY_FIELDS = {
    "base_delay": r"base (\S+ m?s)\b",
    "max_delay": r"cap (\S+ m?s)\b",
    "max_attempts": r"(\d+) attempts",
    "deadline": r"(?<!attempt )deadline (\S+ m?s)\b",
    "attempt_timeout": r"attempt timeout (\S+ m?s)\b",
}
"""How docs/tuning.md states each ``RetryPolicy`` default."""


def _stated_in(text: str, patterns: dict[str, Any]) -> list[str]:
    """For each ``pattern: value``, a line for a phrase that is missing or states another."""
    wrong = []
    for pattern, value in patterns.items():
        found = re.search(pattern, text)
        if found is None or not _same(found[1], value):
            wrong.append(f"{pattern}: {found[0] if found else 'not stated'} (code: {value!r})")
    return wrong


def test_the_tuning_table_states_the_managers_defaults() -> None:
    """Every knob of docs/tuning.md's table is a manager keyword, with its default (the
    in-flight bound of each kind of lane, and every ``RetryPolicy`` field, spelled out)."""
    text = (ROOT / "docs" / "tuning.md").read_text()
    rows = re.findall(r"^\| (`[^|]+) \| ([^|]+) \|", text, re.MULTILINE)
    assert len(rows) >= 10, "the table moved or lost its rows"
    keywords = inspect.signature(AsyncBatchStateManager).parameters
    wrong = []
    for knob_cell, default_cell in rows:
        knobs = re.findall(r"`(\w+)", knob_cell)
        if knobs == ["max_in_flight_per_batch"]:
            wrong += _stated_in(default_cell, IN_FLIGHT)
        elif knobs == ["retry"]:
            policy = RetryPolicy()
            wrong += _stated_in(
                default_cell, {p: getattr(policy, f) for f, p in RETRY_FIELDS.items()}
            )
        else:
            for knob, stated in zip(knobs, default_cell.split(" / "), strict=True):
                if knob not in keywords or not _same(stated, keywords[knob].default):
                    wrong.append(f"{knob}: {stated}")
    assert [] == wrong


CLAIMS: dict[str, dict[str, Callable[[], object]]] = {
    "docs/concepts.md": {
        r"the default retry deadline is (\S+ s)\b": lambda: RetryPolicy().deadline,
        r"warns at (\d+ %) of `legacy_array_limit`": lambda: _manager_default(
            "legacy_array_warn_ratio"
        ),
        r"`legacy_array_limit` \(([\d,]+) players\)": lambda: _manager_default(
            "legacy_array_limit"
        ),
        r"`(\w+)` \(default\) \|": lambda: MigrationMode.from_env({}),
    },
    "docs/guarantees.md": {
        r"`legacy_array_limit`, default ([\d,]+)": lambda: _manager_default("legacy_array_limit"),
        r"`callback_sweep_interval`, (\S+ s);": lambda: _manager_default("callback_sweep_interval"),
        r"each sweep reads at most (\d+) owed batches": lambda: callbacks.SWEEP_SCAN,
        r"\(at most (\d+) per sweep\)": lambda: callbacks.SWEEP_SCAN,
        r"waits for the flip \(up to (\S+ s),": lambda: runner.FLIP_GRACE,
    },
    "docs/tuning.md": {
        r"≤ (\d+) batches read": lambda: callbacks.SWEEP_SCAN,
        r"≤ (\d+) runs started per sweep": lambda: callbacks.SWEEP_START,
    },
    "docs/coordinator.md": {
        r"inline in the batch document up to (\d+) KiB": lambda: names.ROSTER_INLINE_BYTES / 1024,
        r"of at most (\d+) KiB / [\d,]+ players": lambda: names.ROSTER_CHUNK_BYTES / 1024,
        r"of at most \d+ KiB / ([\d,]+) players": lambda: names.ROSTER_CHUNK_MAX,
        r"for rosters up to ([\d,]+) players": lambda: roster.SMALL_ROSTER,
        r"the missing players \(up to ([\d,]+), and": lambda: names.MISSING_KEPT,
    },
    "docs/operations.md": {
        r"`--older-than` at most (\d+)d": lambda: _cli_batch().MAX_AGE.days,
        r"`--lease` in \(0, ([\d,]+)\]": lambda: _cli_batch().MAX_LEASE,
        r"`--limit` up to ([\d,]+)": lambda: _largest_accepted(["batch", "list"], "--limit"),
        r"`--concurrency` up to ([\d,]+)": lambda: _largest_accepted(
            ["migrate", "backfill"], "--concurrency"
        ),
    },
    "docs/migration.md": {
        r"`validation_rate=([\d.]+)`": lambda: _manager_default("validation_rate"),
    },
    "docs/getting-started.md": {
        r"Property tests run (\d+) examples each by default": lambda: _hypothesis_suite_examples(),
    },
    "docs/testing.md": {
        r"`ASYNC_BATCHSTATE_FLEET_EXAMPLES`, default (\d+) examples": lambda: _fleet_examples(),
    },
}
"""Numbers the pages state in prose: each phrase must be there, with the code's value."""


def _cli_batch() -> ModuleType:
    return importlib.import_module("async_batchstate.cli._batch")


def _largest_accepted(path: list[str], flag: str) -> int:
    """The largest int ``async-batchstate <path> <flag> N`` accepts (its ``type=``'s bound)."""
    parser = build_parser()
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    assert callable(action.type)
    low, high = 1, 2**40
    while low < high:  # the largest n that parses, by bisection
        middle = (low + high + 1) // 2
        try:
            action.type(str(middle))
        except (argparse.ArgumentTypeError, ValueError):
            high = middle - 1
        else:
            low = middle
    return low


def _hypothesis_suite_examples() -> int:
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    found = re.search(r'register_profile\("suite", max_examples=(\d+)\)', conftest)
    assert found is not None
    return int(found[1])


def _fleet_examples() -> int:
    fleet = (ROOT / "tests" / "write" / "test_model_fleet.py").read_text()
    found = re.search(r'"ASYNC_BATCHSTATE_FLEET_EXAMPLES", "(\d+)"', fleet)
    assert found is not None
    return int(found[1])


@pytest.mark.parametrize("page", sorted(CLAIMS))
def test_the_numbers_a_page_states_are_the_codes(page: str) -> None:
    """Each claim of ``CLAIMS`` is on its page (whitespace aside) and states the code's value."""
    text = _flat((ROOT / page).read_text())
    wrong = []
    for pattern, value in CLAIMS[page].items():
        found = re.findall(pattern, text)
        actual = value()
        if not found or not all(_same(stated, actual) for stated in found):
            wrong.append(f"{pattern}: {found or 'not stated'} (code: {actual!r})")
    assert [] == wrong


def _documented_defaults(doc: str) -> Iterator[tuple[str, str]]:
    """``(argument, stated default)`` for each ``Args:`` (or dataclass ``Attributes:``)
    entry of a docstring that states a literal default: ``(default 60)``, ``"auto"``
    (default), ``Default 0.05``."""
    lines = inspect.cleandoc(doc).splitlines()
    entries: dict[str, str] = {}
    indent: int | None = None
    current = ""
    for line in lines:
        if line.strip() in {"Args:", "Attributes:"}:
            indent = len(line) - len(line.lstrip()) + 4
            continue
        if indent is None:
            continue
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            indent = None  # the next section
            continue
        entry = re.match(rf"^ {{{indent}}}(\w+): (.*)$", line)
        if entry:
            current = entry[1]
            entries[current] = entry[2]
        elif current:
            entries[current] += " " + line.strip()
    literal = r"(``[^`(]+(?:\(\))?``|None|True|False|-?[\d,]*\.?\d+(?: ?(?:ms|s|%))?)"
    for name, text in entries.items():
        found = re.search(literal + r" \(default\)", text) or re.search(
            r"\b[Dd]efault:? " + literal + r"(?=[\s,;:).]|$)", text
        )
        if found:
            yield name, found[1]


EFFECTIVE_DEFAULTS: dict[tuple[str, str], object] = {
    ("AsyncBatchStateManager", "max_in_flight_per_batch"): _in_flight(
        MigrationMode.DUAL_WRITE, True, "auto"
    ),
    ("AsyncBatchStateManager.reconcile", "source"): Source.default_for(MigrationMode.DUAL_WRITE),
}
"""None defaults the docstrings state as what they become in the default mode and path."""


def _documented_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    """Every public function and class, and every public method of a public class."""
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                yield name, obj
                for method_name, method in vars(obj).items():
                    if not method_name.startswith("_") and inspect.isfunction(method):
                        yield f"{name}.{method_name}", method
            elif inspect.isfunction(obj):
                yield name, obj


def test_every_default_a_docstring_states_is_the_signatures() -> None:
    """An ``Args:`` entry that states a default (``(default 60)``) states the parameter's
    default in the signature, for every public function, class and method."""
    checked, wrong = 0, []
    for name, function in _documented_callables():
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        for argument, stated in _documented_defaults(inspect.getdoc(function) or ""):
            if argument not in parameters:
                continue
            actual = EFFECTIVE_DEFAULTS.get((name, argument), parameters[argument].default)
            checked += 1
            if not _same(stated, actual):
                wrong.append(f"{name}({argument}=...): docstring {stated}, code {actual!r}")
    assert checked >= 15, "the docstrings' defaults were not found"
    assert [] == wrong


# --- The guarantees page and the tests that prove it -----------------------------------

GUARANTEES = ROOT / "docs" / "guarantees.md"


def _slug(heading: str) -> str:
    """The anchor mkdocs (``toc``) and GitHub both give a plain heading."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _proof_lists() -> dict[str, set[str]]:
    """Per ``## section`` with a **Proof:** list: the test files and test ids it cites."""
    proofs = {}
    for section in re.split(r"^## ", GUARANTEES.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = section.partition("\n")
        proof = re.search(r"\*\*Proof:\*\*(.*)", body, re.DOTALL)
        if proof is not None:
            proofs[_slug(heading)] = set(re.findall(r"`(tests/[\w/]+\.py(?:::\w+)?)`", proof[1]))
    return proofs


def _guarantee_names(node: ast.AST) -> Iterator[str]:
    """The names of the ``pytest.mark.guarantee("name")`` calls in an expression."""
    for call in ast.walk(node):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "guarantee"
        ):
            yield from (str(a.value) for a in call.args if isinstance(a, ast.Constant))


def _guarantee_markers() -> dict[str, set[str]]:
    """Per guarantee name: the test files whose ``pytestmark`` carries it, and the
    ``file::test`` ids whose decorators do."""
    marked: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        where = path.relative_to(ROOT).as_posix()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and "pytestmark" in ast.unparse(
                node.targets[0] if isinstance(node, ast.Assign) else node.target
            ):
                names, owner = list(_guarantee_names(node)), where
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [n for d in node.decorator_list for n in _guarantee_names(d)]
                owner = f"{where}::{node.name}"
            else:
                continue
            for name in names:
                marked.setdefault(name, set()).add(owner)
    return marked


def test_each_guarantees_proof_list_is_the_tests_marked_with_it() -> None:
    """For every ``## section`` of docs/guarantees.md with a **Proof:** list, the files and
    test ids it cites are exactly those marked ``guarantee("<the section's anchor>")``, and
    no marker names a section without one."""
    proofs, marked = _proof_lists(), _guarantee_markers()
    assert len(proofs) >= 10, "the page lost its proof lists, or their label changed"
    differences = {
        section: {
            "cited, not marked": sorted(cited - marked.get(section, set())),
            "marked, not cited": sorted(marked.get(section, set()) - cited),
        }
        for section, cited in proofs.items()
        if cited != marked.get(section, set())
    }
    assert {} == differences
    assert [] == sorted(set(marked) - set(proofs)), "a marker names no section with a proof"
