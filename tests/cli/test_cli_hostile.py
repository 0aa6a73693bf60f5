"""Every argument of every subcommand against a table of hostile values, in this process.

A value an argument refuses: exit status 2, one line on stderr naming the
argument, nothing on stdout, nothing written (the test's collection, its
checkpoint collection and the working directory stay empty); refused while
parsing, so before any I/O. A value it accepts: the command runs to its
documented end on an empty collection (``list``, ``verify``, ``status``,
``backfill``, ``cleanup-legacy``, ``demo``: 0; ``show``, ``expire``,
``callbacks`` of a batch that does not exist: 1, ``async-batchstate: not found:
...``), with at most one line on stderr and never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from async_batchstate.cli import build_parser, main
from async_batchstate.testing import EmulatorInfo, aclose_client, make_client

MODE_FLAGS = ["ENABLE_SUBCOLLECTION_COMPLETIONS", "DUAL_WRITE_MODE", "USE_SUBCOLLECTION_READS"]

HOSTILE = {
    "empty": "",
    "blank": " ",
    "huge": "99999999999999999999",
    "huge float": "1e308",
    "negative": "-1",
    "zero": "0",
    "nan": "nan",
    "inf": "inf",
    "unicode": "é日本",
    "lone surrogate": "\ud800",
    "undecodable byte": "\udcff",  # how the shell hands over a byte that is not UTF-8
    "slash": "a/b",
    "dotdot": "../x",
    "backslash": "a\\b",
    "dunder": "__x__",
    "2000 bytes": "x" * 2000,
    "NUL": "a\x00b",
    "newline": "a\nb",
    "ANSI escape": "\x1b[2J",
}
"""Hostile values by name; each argument below says which of them it accepts."""

ID_OK = frozenset(
    {"blank", "huge", "huge float", "negative", "zero", "nan", "inf", "unicode", "backslash"}
)
"""What a Firestore id (batch, collection segment, subcollection) may be, control
characters excepted: the command line refuses those too."""
TEXT_OK = ID_OK - {"blank"} | {"slash", "dotdot", "dunder"}
PATH_OK = ID_OK | {"dotdot", "dunder"}  # a file in an existing folder
PROJECT_OK = frozenset({"nan", "inf"})  # lowercase letters, digits, hyphens
ZERO_OK = frozenset({"zero"})
NONE_OK: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Command:
    """A subcommand: its words, a valid command line, and what each argument accepts."""

    words: tuple[str, ...]
    base: dict[str, str]
    """A valid value per argument (``ID`` is the positional); ``{c}``: the test's collection."""
    accepts: dict[str, frozenset[str]]
    """Per argument, the names of the ``HOSTILE`` values it accepts."""
    absent_exit: int = 0
    """The exit status of a valid run here: an empty collection, a batch that does not exist."""
    exits: dict[str, int] = field(default_factory=dict)
    """Per argument, an exit status other than ``absent_exit`` for an accepted value."""


CONNECTION = {"--collection": ID_OK, "--project": PROJECT_OK, "--mode": NONE_OK}
MIGRATE_ARGS = CONNECTION | {
    "--completions-subcollection": ID_OK,
    "--batch-id": ID_OK,
    "--concurrency": NONE_OK,
}


def _migrate(step: str, mode: str, batch_id_exit: int, **extra: frozenset[str]) -> Command:
    return Command(
        ("migrate", step, "--no-progress"),
        {"--collection": "{c}", "--mode": mode, "--concurrency": "2"},
        MIGRATE_ARGS | extra,
        exits={"--batch-id": batch_id_exit},
    )


COMMANDS = [
    Command(
        ("demo",),
        {"--players": "2", "--workers": "2", "--collection": "{c}", "--seed": "1"},
        {
            "--players": NONE_OK,
            "--workers": NONE_OK,
            "--processes": NONE_OK,
            "--redeliver": ZERO_OK,
            "--fail": ZERO_OK,
            "--mode": NONE_OK,
            "--collection": ID_OK,
            "--batch-id": ID_OK,
            "--seed": ZERO_OK,
            "--pubsub": NONE_OK,  # a choice: every hostile value is refused
        },
    ),
    Command(("batch", "show"), {"ID": "b", "--collection": "{c}"}, CONNECTION | {"ID": ID_OK}, 1),
    Command(
        ("batch", "list"),
        {"--collection": "{c}"},
        CONNECTION | {"--status": NONE_OK, "--older-than": ZERO_OK, "--limit": NONE_OK},
    ),
    Command(
        ("batch", "expire"),
        {"ID": "b", "--collection": "{c}", "--reason": "stuck"},
        CONNECTION | {"ID": ID_OK, "--reason": TEXT_OK},
        1,
    ),
    Command(
        ("batch", "callbacks"),
        {"ID": "b", "--collection": "{c}", "--run": "json:loads", "--lease": "1"},
        CONNECTION | {"ID": ID_OK, "--run": NONE_OK, "--lease": NONE_OK},
        1,
    ),
    _migrate("backfill", "dual_write", 0, **{"--checkpoint": PATH_OK}),
    _migrate("verify", "dual_write", 1),
    _migrate("status", "dual_write", 1),
    _migrate("cleanup-legacy", "subcollection_only", 1),
]


def _arguments(*, accepting: bool = False) -> list[pytest.ParameterSet]:
    """``(command, argument)`` of every argument (with ``accepting``: that accepts a value)."""
    return [
        pytest.param(command, argument, id=f"{' '.join(command.words[:2])} {argument}")
        for command in COMMANDS
        for argument, accepted in command.accepts.items()
        if accepted or not accepting
    ]


def _argv(command: Command, argument: str, value: str, collection: str) -> list[str]:
    """The command line with ``argument`` set to ``value``; a collection nests under the test's."""
    if argument == "--collection":
        value = f"{collection}/doc/{value}"
    values = {k: v.format(c=collection) for k, v in command.base.items()} | {argument: value}
    argv = [*command.words]
    if "ID" in values:
        argv.append(values.pop("ID"))
    for option, given in values.items():
        argv += [option, given]
    return argv


def _run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit status (argparse's SystemExit too), stdout, stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exited:
        assert isinstance(exited.code, int)
        status = exited.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def cli_env(
    firestore_emulator: EmulatorInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Path:
    """The emulator through the environment, no mode flags, and an empty working directory."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_emulator.project)
    for flag in MODE_FLAGS:
        monkeypatch.delenv(flag, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _written(emulator: EmulatorInfo, collection: str, cwd: Path) -> list[str]:
    """What is in the test's collection, its checkpoint collection and the working directory."""

    async def documents() -> list[str]:
        client = make_client(emulator)
        try:
            found: list[str] = []
            for name in (collection, f"{collection}_migration"):
                found += [snap.id for snap in await client.collection(name).limit(5).get()]
            return found
        finally:
            await aclose_client(client)

    return [p.name for p in cwd.iterdir()] + asyncio.run(documents())


def test_every_argument_of_every_subcommand_is_in_the_table() -> None:
    """The table covers what ``--help`` lists: a new argument fails here until it is added."""
    parser = build_parser()
    listed: set[tuple[str, ...]] = set()
    for command in COMMANDS:
        sub = parser
        for word in command.words[:2]:
            sub = next(
                action.choices[word]
                for action in sub._actions
                if isinstance(action.choices, dict) and word in action.choices
            )
        for action in sub._actions:
            if action.nargs != 0 and action.dest != "help":  # takes a value
                names = action.option_strings or ["ID"]
                listed.add((*command.words[:2], names[0]))
    covered = {(*c.words[:2], argument) for c in COMMANDS for argument in c.accepts}

    assert listed == covered


# Sync tests: the demo installs a SIGTERM handler (main thread only) and every
# subcommand runs its own event loop. One test per argument, all of its values in it.


@pytest.mark.parametrize(("command", "argument"), _arguments())
def test_hostile_values_an_argument_refuses_are_one_line_exit_2_and_write_nothing(
    command: Command,
    argument: str,
    cli_env: Path,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each refused value: exit 2, nothing on stdout, one line on stderr naming the
    argument, no traceback; afterwards nothing is written anywhere the command could write."""
    wrong: dict[str, object] = {}
    for name, value in HOSTILE.items():
        if name in command.accepts[argument]:
            continue
        status, out, err = _run(_argv(command, argument, value, batch_collection), capsys)
        ok = (status, out, len(err.splitlines())) == (2, "", 1) and err.startswith(
            f"async-batchstate: error: argument {argument}: "
        )
        if not ok or "Traceback" in err:
            wrong[name] = (status, out[:200], err[:300])

    assert {} == wrong
    assert [] == _written(firestore_emulator, batch_collection, cli_env)


@pytest.mark.parametrize(("command", "argument"), _arguments(accepting=True))
def test_hostile_values_an_argument_accepts_end_as_documented(
    command: Command,
    argument: str,
    cli_env: Path,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each accepted value runs to the documented exit status of the command on an empty
    collection (1 for a batch that does not exist), with at most one line on stderr
    (none on success) and no traceback."""
    expected = command.exits.get(argument, command.absent_exit)
    wrong: dict[str, object] = {}
    for name in sorted(command.accepts[argument]):
        status, out, err = _run(_argv(command, argument, HOSTILE[name], batch_collection), capsys)
        if (status, len(err.splitlines())) != (expected, min(expected, 1)) or "Traceback" in err:
            wrong[name] = (status, out[-300:], err[:300])

    assert {} == wrong


# -- the issue's own cases, and values only some arguments take ------------------------------


@pytest.mark.parametrize(
    "age",
    ["99999999999d", "1000000d", "36501d", "9" * 400, "1e3s", "-5m", "5x", "٣d", "1.5.0h"],
)
def test_an_age_out_of_range_is_one_line_and_exit_2(
    age: str, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batch list --older-than` with an age no datetime can hold (it overflowed before),
    a sign, an exponent or non-ASCII digits: refused while parsing."""
    status, out, err = _run(["batch", "list", "--older-than", age], capsys)

    assert (2, "") == (status, out)
    assert 1 == len(err.splitlines()), err
    assert err.startswith("async-batchstate: error: argument --older-than: "), err


async def test_the_oldest_age_still_runs(
    cli_env: Path, batch_collection: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The largest accepted age (a century) lists batches without overflowing: exit 0."""
    argv = ["batch", "list", "--collection", batch_collection, "--older-than", "36500d", "--json"]

    status, out, err = await asyncio.to_thread(_run, argv, capsys)

    assert (0, "[]", "") == (status, out.strip(), err)


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importable modules that fail at import: a syntax error, an exception."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "cli_syntax_error.py").write_text("def f(:\n    pass\n", encoding="utf-8")
    (folder / "cli_raises.py").write_text(
        "raise RuntimeError('the coordinator\\nis not configured')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(folder))


@pytest.mark.parametrize(
    "run",
    [
        "cli_syntax_error:f",
        "cli_raises:f",
        "no_such_module_here:f",
        "json:no_such_function",
        "json:__name__",
        "..:f",
        ".json:loads",
        ":f",
        "json:",
        "a/b:c",
        "json:\ud800",
        "json:loads\x00",
        "sys:exit:0",
    ],
)
def test_a_callback_that_cannot_be_loaded_is_one_line_and_exit_2(
    run: str, user_modules: None, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batch callbacks ID --run MODULE:FUNCTION` whose module has a syntax error or raises
    at import, or that names nothing callable: one line naming --run, exit 2."""
    modules = set(sys.modules)

    status, out, err = _run(["batch", "callbacks", "b", "--run", run], capsys)

    assert (2, "") == (status, out)
    assert 1 == len(err.splitlines()), err
    assert err.startswith("async-batchstate: error: argument --run: "), err
    assert "Traceback" not in err
    assert not {"cli_syntax_error", "cli_raises"} & (set(sys.modules) - modules)


def test_a_checkpoint_name_the_file_system_refuses_is_one_line_and_exit_2(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name over the file system's limit fails while parsing, not when saving."""
    argv = ["migrate", "backfill", "--no-progress", "--checkpoint", "x" * 300]

    status, out, err = _run(argv, capsys)

    assert (2, "") == (status, out)
    assert err.startswith("async-batchstate: error: argument --checkpoint: "), err


def test_a_collection_whose_checkpoint_collection_cannot_exist_is_refused_first(
    cli_env: Path,
    firestore_emulator: EmulatorInfo,
    batch_collection: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 1,500-byte collection id is valid, but its checkpoint collection (``_migration``
    appended) is not: backfill refuses before reading, where it used to log a
    traceback on every save."""
    collection = f"{batch_collection}/doc/" + "x" * 1500
    argv = ["migrate", "backfill", "--no-progress", "--mode", "dual_write"]

    status, out, err = _run([*argv, "--collection", collection], capsys)

    assert (2, "") == (status, out)
    assert 1 == len(err.splitlines()), err
    assert "checkpoint" in err or "1500" in err or "1,500" in err, err
    assert [] == _written(firestore_emulator, batch_collection, cli_env)
