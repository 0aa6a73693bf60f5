"""examples/cloud_run: the deployable coordinator, checked as far as this machine can.

The service is started exactly as Cloud Run starts it from the Procfile (Google's
buildpack runs the ``web:`` command with ``bash -c``, ``PORT`` set) and fed a whole
batch through the Pub/Sub emulator by a real push subscription configured with
setup.sh's numbers, duplicates included; then SIGTERM, timed from outside. setup.sh
runs against a stub ``gcloud`` that records every command (nothing talks to Google):
each command and flag is looked up in the installed Cloud SDK's command tree, and the
numbers it passes are the code's defaults.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate._store import names as f
from async_batchstate.pubsub import PushAuth, PushEndpoint, UnknownBatchPolicy, drain_on_sigterm
from async_batchstate.testing import EmulatorInfo, PubSubEmulator, batch_violations, free_port

from .pubsub_helpers import names, payload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cloud_run"
SRC = ROOT / "src" / "async_batchstate"
CLOUD_RUN_KILL = 10.0
"""Seconds from SIGTERM to Cloud Run's SIGKILL."""
PROJECT_NUMBER = "123456789012"
SERVICE_URL = "https://prediction-coordinator-abc123-ew.a.run.app"

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "project": os.environ.get("CLOUDSDK_CORE_PROJECT")}}) + "\\n")
if args[:2] == ["projects", "describe"]:
    print("{PROJECT_NUMBER}")
elif args[:3] == ["run", "services", "describe"]:
    print("{SERVICE_URL}")
elif "describe" in args:
    sys.exit(0 if os.environ.get("FAKE_GCLOUD_EXISTING") else 1)
"""
"""Records its arguments; knows a project number and a service URL; ``describe`` says
"not found" (so setup.sh creates everything) unless FAKE_GCLOUD_EXISTING is set."""


# -- helpers -----------------------------------------------------------------------------


@functools.cache
def load_main() -> ModuleType:
    """examples/cloud_run/main.py as a module (it imports its sibling structured_logs)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("cloud_run_main", EXAMPLE / "main.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE))


def procfile_web() -> str:
    """The Procfile's ``web:`` command, found as the buildpack finds it."""
    found = re.search(r"(?m)^web:\s*(.+)$", (EXAMPLE / "Procfile").read_text())
    assert found is not None
    return found.group(1).strip()


def run_setup(tmp_path: Path, *, existing: bool = False) -> list[list[str]]:
    """Run setup.sh with the stub gcloud first on PATH; the gcloud commands it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "gcloud"
    stub.write_text(FAKE_GCLOUD)
    stub.chmod(0o755)
    log = tmp_path / "gcloud.log"
    log.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "PROJECT": "demo-project",
        "REGION": "europe-west1",
        "FAKE_GCLOUD_LOG": str(log),
    }
    if existing:
        env["FAKE_GCLOUD_EXISTING"] = "1"
    done = subprocess.run(
        ["bash", str(EXAMPLE / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"demo-project"} == {c["project"] for c in calls}  # CLOUDSDK_CORE_PROJECT
    return [c["args"] for c in calls]


def flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` (and bare ``--name``) of one command."""
    out = {}
    for word in command:
        if word.startswith("--"):
            name, _, value = word.partition("=")
            out[name] = value
    return out


def find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if c[: len(prefix)] == list(prefix)]


def one(commands: list[list[str]], *prefix: str) -> dict[str, str]:
    (command,) = find(commands, *prefix)
    return flags(command)


def push_subscription(commands: list[list[str]], verb: str = "create") -> dict[str, str]:
    """The flags of the command that creates (or updates) the push subscription."""
    (command,) = [
        c for c in find(commands, "pubsub", "subscriptions", verb) if "--push-endpoint" in flags(c)
    ]
    return flags(command)


def exempted(commands: list[list[str]]) -> set[tuple[str, str]]:
    """(collection group, field) of every single-field index exemption."""
    return {
        (flags(c)["--collection-group"], c[4])
        for c in find(commands, "firestore", "indexes", "fields", "update")
        if "--disable-indexes" in flags(c)
    }


def default(function: Any, name: str) -> Any:
    return inspect.signature(function).parameters[name].default


# -- setup.sh, fast ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup_commands(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    """The gcloud commands of one run of setup.sh in a new project, with its defaults."""
    return run_setup(tmp_path_factory.mktemp("setup"))


def test_setup_sh_is_valid_bash() -> None:
    """``bash -n``: every command of setup.sh parses."""
    done = subprocess.run(
        ["bash", "-n", str(EXAMPLE / "setup.sh")], capture_output=True, text=True, check=False
    )
    assert (0, "") == (done.returncode, done.stderr)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_setup_sh_passes_shellcheck() -> None:
    """No shellcheck finding (quoting, unset variables, word splitting...)."""
    done = subprocess.run(
        ["shellcheck", str(EXAMPLE / "setup.sh")], capture_output=True, text=True, check=False
    )
    assert (0, "") == (done.returncode, done.stdout)


@pytest.mark.parametrize("existing", [False, True], ids=["new-project", "run-again"])
def test_setup_sh_runs_to_the_end_and_every_command_exists_in_gcloud(
    tmp_path: Path, existing: bool
) -> None:
    """Against the stub, setup.sh runs every step (creating, or updating what exists);
    each command it ran, and each of its flags, is in the installed gcloud's command tree."""
    commands = run_setup(tmp_path, existing=existing)
    assert find(commands, "run", "deploy")
    if existing:  # the push subscription is updated to what a new one is created with
        created = push_subscription(run_setup(tmp_path))
        del created["--topic"]
        assert created == push_subscription(commands, "update")
    tree = gcloud_tree()
    unknown = [c for c in commands if not gcloud_knows(tree, c)]
    assert [] == unknown


def gcloud_tree() -> dict[str, Any]:
    """The installed Cloud SDK's static command tree (commands and their flags)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("the Cloud SDK is not installed: commands checked for syntax only")
    path = Path(gcloud).resolve().parent.parent / "data" / "cli" / "gcloud_completions.py"
    if not path.is_file():
        pytest.skip(f"this Cloud SDK has no static command tree at {path}")
    spec = importlib.util.spec_from_file_location("gcloud_completions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tree: dict[str, Any] = module.STATIC_COMPLETION_CLI_TREE
    return tree


def gcloud_knows(tree: dict[str, Any], command: list[str]) -> bool:
    """The command path exists and every flag is its own or a global one."""
    node = tree
    words = [w for w in command if not w.startswith("--")]
    for word in words:
        if word not in node["commands"]:
            break
        node = node["commands"][word]
    if node is tree or node["commands"]:  # not a command: a group, or nothing
        return False
    for name in flags(command):
        known = {**tree["flags"], **node["flags"]}
        positive = "--" + name.removeprefix("--no-")
        if name not in known and known.get(positive) != "bool":
            return False
    return True


def test_setup_numbers_are_the_codes_defaults(setup_commands: list[list[str]]) -> None:
    """Ack deadline, concurrency, request timeout, retry delays and the shutdown budget
    that setup.sh and the Procfile pass are derived from the library's defaults."""
    main = load_main()
    commands = setup_commands
    subscription = push_subscription(commands)
    deploy = one(commands, "run", "deploy")
    env = dict(kv.split("=", 1) for kv in deploy["--set-env-vars"].split(","))

    record_timeout = default(PushEndpoint, "timeout")
    assert record_timeout == main.RECORD_TIMEOUT == float(env["RECORD_TIMEOUT"])
    ack_deadline = record_timeout + PushAuth(audience="x").certs_timeout + 5
    assert (20, 20) == (ack_deadline, int(subscription["--ack-deadline"]))
    assert int(deploy["--timeout"]) == ack_deadline
    assert int(deploy["--concurrency"]) == main.MAX_CONCURRENCY == int(env["MAX_CONCURRENCY"])
    policy = UnknownBatchPolicy()
    assert (f"{policy.min_delay:g}s", f"{policy.max_delay:g}s") == (
        subscription["--min-retry-delay"],
        subscription["--max-retry-delay"],
    )
    graceful = re.search(r"--timeout-graceful-shutdown[= ](\d+)", procfile_web())
    assert graceful is not None
    budget = int(graceful.group(1)) + main.SHUTDOWN_BUDGET
    assert budget == default(drain_on_sigterm, "grace") == 8.0 < CLOUD_RUN_KILL
    assert main.SHUTDOWN_BUDGET == default(PushEndpoint, "shutdown_budget")


def test_setup_deploys_private_with_a_dead_letter_topic_and_the_iam_it_needs(
    setup_commands: list[list[str]],
) -> None:
    """Source deploy, no unauthenticated access, CPU outside requests (the callbacks and
    the sweep run in the background); the push subscription authenticates with its own
    account and audience; the DLQ is writable by Pub/Sub's agent; roles as documented."""
    commands = setup_commands
    deploy = one(commands, "run", "deploy")
    assert {
        "--source": ".",
        "--no-allow-unauthenticated": "",
        "--no-cpu-throttling": "",
    }.items() <= deploy.items()
    env = dict(kv.split("=", 1) for kv in deploy["--set-env-vars"].split(","))
    sub = push_subscription(commands)
    push_sa = "coordinator-push@demo-project.iam.gserviceaccount.com"
    audience = f"https://prediction-coordinator-{PROJECT_NUMBER}.europe-west1.run.app"
    assert {
        "--push-endpoint": f"{SERVICE_URL}/pubsub",
        "--push-auth-service-account": push_sa,
        "--push-auth-token-audience": audience,
        "--dead-letter-topic": "completions-dead",
    }.items() <= sub.items()
    assert ("oidc", audience, push_sa) == (
        env["PUSH_AUTH"],
        env["PUSH_AUDIENCE"],
        env["PUSH_SERVICE_ACCOUNT"],
    )
    agent = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
    runtime = "serviceAccount:coordinator-run@demo-project.iam.gserviceaccount.com"
    grants = set()
    for c in commands:
        if "add-iam-policy-binding" in c:
            i = c.index("add-iam-policy-binding")
            grants.add((c[i - 1], c[i + 1], flags(c)["--member"], flags(c)["--role"]))
    assert {
        ("topics", "completions-dead", agent, "roles/pubsub.publisher"),
        ("subscriptions", "completions-push", agent, "roles/pubsub.subscriber"),
        ("services", "prediction-coordinator", f"serviceAccount:{push_sa}", "roles/run.invoker"),
        ("service-accounts", push_sa, agent, "roles/iam.serviceAccountTokenCreator"),
        ("projects", "demo-project", runtime, "roles/datastore.user"),
        ("topics", "batches-complete", runtime, "roles/pubsub.publisher"),
    } <= grants


def test_ttl_policies_cover_every_collection_group_stamped_with_expire_at(
    setup_commands: list[list[str]],
) -> None:
    """The batch, completion and roster documents (the library stamps them) and the
    next-stage markers (main.py stamps them) each have a TTL policy on ``expire_at``."""
    commands = setup_commands
    ttls = {
        (flags(c)["--collection-group"], c[4])
        for c in find(commands, "firestore", "fields", "ttls", "update")
        if "--enable-ttl" in flags(c)
    }
    groups = {"prediction_batches", "completions", f.ROSTER, "next_stage_markers"}
    assert {(g, f.EXPIRE_AT) for g in groups} == ttls


QUERY = re.compile(
    r"(?:FieldFilter\(|order_by\(\s*|\.sum\(|\.avg\()\s*f\.(?P<name>[A-Z_]+)", re.MULTILINE
)


def test_index_exemptions_cover_the_legacy_array_and_map_and_nothing_the_library_queries(
    setup_commands: list[list[str]],
) -> None:
    """The legacy array and map are exempt (index fan-out, the 40,000-entry limit); every
    exempted field is a field the library writes, and none is one it filters, orders
    or aggregates on."""
    exemptions = exempted(setup_commands)
    assert {
        ("prediction_batches", f.COMPLETED_PLAYERS),
        ("prediction_batches", f.PREDICTIONS_BY_PLAYER),
    } <= exemptions
    written = {v for k, v in vars(f).items() if k.isupper() and isinstance(v, str)}
    assert {field for _, field in exemptions} <= written | {f.ROSTER_CHUNK_PLAYERS}
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    queried = {getattr(f, m["name"]) for m in QUERY.finditer(code)}
    assert {f.STATUS, f.CREATED_AT, f.CALLBACK_OWED, f.PREDICTIONS_COUNT} <= queried
    assert set() == {field for _, field in exemptions} & queried


def test_requirements_pin_this_release_with_the_pubsub_extra_and_uvicorn() -> None:
    """The buildpack installs requirements.txt: the library (this version, [pubsub]) and
    the server the Procfile runs, each pinned."""
    lines = [
        line
        for line in (EXAMPLE / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in line for line in lines), lines
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"async-batchstate[pubsub]=={version}" in lines
    assert any(line.startswith("uvicorn==") for line in lines)
    web = procfile_web()
    assert web.split("exec ", 1)[1].startswith("uvicorn main:app ")
    assert '--port "$PORT"' in web


# -- main.py and its logs, fast ----------------------------------------------------------


def test_settings_refuse_oidc_without_an_audience_and_read_the_seeds_flags() -> None:
    """OIDC is the default and needs PUSH_AUDIENCE; PUSH_AUTH=none must be asked for;
    the migration mode comes from the seed's three flags."""
    main = load_main()
    with pytest.raises(main.ConfigError, match="PUSH_AUDIENCE"):
        main.Settings.from_env({})
    settings = main.Settings.from_env({"PUSH_AUDIENCE": "https://svc"})
    assert ("oidc", "https://svc", MigrationMode.DUAL_WRITE) == (
        settings.push_auth,
        settings.push_audience,
        settings.mode,
    )
    flags = {
        "PUSH_AUTH": "none",
        "ENABLE_SUBCOLLECTION_COMPLETIONS": "true",
        "DUAL_WRITE_MODE": "false",
        "USE_SUBCOLLECTION_READS": "true",
    }
    assert MigrationMode.SUBCOLLECTION_ONLY == main.Settings.from_env(flags).mode
    assert main.Settings.from_env({"PUSH_AUTH": "none"}).document_write_rate is None
    paced = main.Settings.from_env({"PUSH_AUTH": "none", "DOCUMENT_WRITE_RATE": "80"})
    assert 80.0 == paced.document_write_rate
    bad_values = [
        {"PUSH_AUTH": "basic"},
        {"PUSH_AUTH": "none", "MAX_CONCURRENCY": "0"},
        {"PUSH_AUTH": "none", "RECORD_TIMEOUT": "inf"},
        {"PUSH_AUTH": "none", "DOCUMENT_WRITE_RATE": "-1"},
        {"PUSH_AUTH": "none", "DOCUMENT_WRITE_RATE": "fast"},
        {"PUSH_AUTH": "none", "DUAL_WRITE_MODE": "maybe"},
    ]
    for bad in bad_values:
        with pytest.raises(main.ConfigError):
            main.Settings.from_env(bad)


def test_log_lines_are_cloud_logging_json_with_the_requests_trace() -> None:
    """severity, message, the trace of X-Cloud-Trace-Context (span as 16 hex digits), the
    fields given in ``extra=``; without a trace header, no trace field."""
    load_main()
    logs = sys.modules["structured_logs"]
    logs.set_project("demo-project")
    record = logging.LogRecord(
        "coordinator", logging.WARNING, "x.py", 7, "poison %s", ("m1",), None
    )
    record.message_id = "m1"
    header = [(b"X-Cloud-Trace-Context", b"105445aa7843bc8bf206b12000100000/255;o=1")]
    token = logs.trace_context(logs.parse_trace(header))
    try:
        entry = json.loads(logs.CloudLoggingFormatter().format(record))
    finally:
        logs.reset_trace(token)
    assert {
        "severity": "WARNING",
        "message": "poison m1",
        "message_id": "m1",
        "logging.googleapis.com/trace": "projects/demo-project/traces/105445aa7843bc8bf206b12000100000",
        "logging.googleapis.com/spanId": "00000000000000ff",
        "logging.googleapis.com/trace_sampled": True,
    }.items() <= entry.items()
    assert "logging.googleapis.com/trace" not in json.loads(
        logs.CloudLoggingFormatter().format(record)
    )
    parent = logs.parse_trace(
        [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    )
    assert ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True) == (
        parent.trace_id,
        parent.span_id,
        parent.sampled,
    )
    assert logs.parse_trace([(b"x-cloud-trace-context", b"not-a-trace")]) is None


# -- the service under the emulators, as Cloud Run starts it -----------------------------


def emulator_env(
    firestore: EmulatorInfo, pubsub: PubSubEmulator, batch_collection: str
) -> dict[str, str]:
    """The service's environment on the emulators, without push authentication."""
    return {
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "GOOGLE_CLOUD_PROJECT": firestore.project,
        "PUSH_AUTH": "none",
        "BATCH_COLLECTION": batch_collection,
    }


def start_service(
    tmp_path: Path, env: dict[str, str], port: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``bash -c "<the Procfile's web: command>"`` in the example's directory, PORT set;
    its stdout and stderr go to ``tmp_path``."""
    port = port or free_port()
    bin_dir = str(Path(sys.executable).parent)  # uvicorn, as the buildpack's PATH has it
    full_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    with (tmp_path / "stdout.log").open("w") as out, (tmp_path / "stderr.log").open("w") as err:
        proc = subprocess.Popen(
            ["bash", "-c", procfile_web()],
            cwd=EXAMPLE,
            env=full_env,
            stdout=out,
            stderr=err,
            text=True,
        )
    return proc, f"http://127.0.0.1:{port}"


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, or a POST when ``body`` is given."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def wait_healthy(proc: subprocess.Popen[str], url: str, tmp_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, logs_of(tmp_path)
        assert time.monotonic() < deadline, "the service did not become healthy"
        try:
            status, body = await asyncio.to_thread(http, url + "/health")
        except OSError:
            status, body = 0, {}
        if status == 200:
            return body
        await asyncio.sleep(0.1)


def logs_of(tmp_path: Path) -> str:
    return (tmp_path / "stdout.log").read_text() + (tmp_path / "stderr.log").read_text()


def emulator_call(emulator: PubSubEmulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{emulator.host}/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read() or b"{}")
    return answer


def pull_all(emulator: PubSubEmulator, subscription: str) -> list[dict[str, Any]]:
    """Every message waiting on a pull subscription, acknowledged."""
    answer = emulator_call(
        emulator, f"{subscription}:pull", {"returnImmediately": True, "maxMessages": 100}
    )
    received = answer.get("receivedMessages", [])
    if received:
        ack_ids = [m["ackId"] for m in received]
        emulator_call(emulator, f"{subscription}:acknowledge", {"ackIds": ack_ids})
    return [m["message"] for m in received]


@pytest.fixture
def service_processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Services a test starts; any still running after it is killed (by its own handle)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_the_service_refuses_to_start_without_a_push_audience(
    tmp_path: Path, service_processes: list[subprocess.Popen[str]]
) -> None:
    """PUSH_AUTH defaults to OIDC: without PUSH_AUDIENCE the startup fails, uvicorn exits
    non-zero, and the JSON log says which variable to set."""
    env = {"PUSH_AUTH": "", "PUSH_AUDIENCE": "", "GOOGLE_CLOUD_PROJECT": "demo-project"}
    proc, _ = start_service(tmp_path, env)
    service_processes.append(proc)
    assert 3 == proc.wait(timeout=60)
    entries = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    (failed,) = [e for e in entries if e["severity"] == "CRITICAL"]
    assert failed["message"].startswith("startup failed: PUSH_AUDIENCE is required")


@pytest.mark.emulator
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_service_records_a_batch_pushed_through_pubsub_and_exits_0_on_sigterm(
    tmp_path: Path,
    service_processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    pubsub_emulator: PubSubEmulator,
    firestore_client: AsyncClient,
    firestore_namespace: str,
    batch_collection: str,
) -> None:
    """Started as the Procfile starts it, behind a push subscription with setup.sh's ack
    deadline, retry policy and dead-letter topic: a batch of 200 players published with 20
    duplicates (and 5 more after it finished) is recorded exactly once, ``on_complete``
    starts the next stage once (one message, one marker, under the finalization key), log
    lines are Cloud Logging JSON with the request's trace, and SIGTERM ends it with
    status 0 well inside Cloud Run's 10 s."""
    project = firestore_emulator.project
    topic, sub = names()
    next_topic, next_sub = names()
    dead_topic = f"{topic}-dead"
    for name in (topic, next_topic, dead_topic):
        pubsub_emulator.create_topic(project, name)
    next_path = pubsub_emulator.create_subscription(project, next_sub, next_topic)
    markers = f"{firestore_namespace}_markers"
    env = {
        **emulator_env(firestore_emulator, pubsub_emulator, batch_collection),
        "STAGE_MARKERS_COLLECTION": markers,
        "NEXT_STAGE_TOPIC": next_topic,
        "ENABLE_SUBCOLLECTION_COMPLETIONS": "true",
        "DUAL_WRITE_MODE": "true",
        "USE_SUBCOLLECTION_READS": "false",
    }
    proc, url = start_service(tmp_path, env)
    service_processes.append(proc)
    health = await wait_healthy(proc, url, tmp_path)
    assert "DUAL_WRITE" == health["mode"]
    # bash exec'd uvicorn, so SIGTERM reaches uvicorn itself, as in the container.
    assert "uvicorn" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()

    # The push subscription as setup.sh configures it in production.
    production = push_subscription(run_setup(tmp_path))
    pubsub_emulator.create_subscription(
        project,
        sub,
        topic,
        ack_deadline=int(production["--ack-deadline"]),
        push_endpoint=url + "/pubsub",
        dead_letter_topic=dead_topic,
        max_delivery_attempts=int(production["--max-delivery-attempts"]),
        retry_backoff=(
            float(production["--min-retry-delay"].rstrip("s")),
            float(production["--max-retry-delay"].rstrip("s")),
        ),
    )
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.from_env(env)
    )
    players = {f"player-{i:04d}": i % 7 for i in range(200)}
    await manager.create_batch("b1", expected_players=list(players))
    messages = [payload("b1", p, n) for p, n in players.items()]
    duplicates = [payload("b1", p, n) for p, n in list(players.items())[::10]]
    pubsub_emulator.publish(project, topic, messages + duplicates)
    progress = await manager.wait_until_complete("b1", timeout=90)

    late = [payload("b1", p, n) for p, n in list(players.items())[:5]]
    pubsub_emulator.publish(project, topic, late)  # redeliveries after the batch finished
    total = len(messages) + len(duplicates) + len(late)
    deadline = time.monotonic() + 60
    while (stats := (await asyncio.to_thread(http, url + "/health"))[1]["stats"])["acked"] < total:
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.1)
    assert stats["duplicates"] >= len(duplicates) + len(late)

    started: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not started:
        assert time.monotonic() < deadline, "no next-stage message"
        started += await asyncio.to_thread(pull_all, pubsub_emulator, next_path)
        await asyncio.sleep(0.1)

    # A poison message posted with a trace header: refused (nack), logged under the trace.
    trace_id = "105445aa7843bc8bf206b12000100000"
    poison = {"message": {"data": base64.b64encode(b"not json").decode(), "messageId": "p-1"}}
    status, _ = await asyncio.to_thread(
        http,
        url + "/pubsub",
        json.dumps(poison).encode(),
        {"content-type": "application/json", "x-cloud-trace-context": f"{trace_id}/1;o=1"},
    )
    assert 422 == status

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    seconds = time.monotonic() - sent
    print(f"\nSIGTERM-to-exit, examples/cloud_run under uvicorn: {seconds:.2f} s", flush=True)
    assert (0, True) == (code, seconds < CLOUD_RUN_KILL), logs_of(tmp_path)
    started += await asyncio.to_thread(pull_all, pubsub_emulator, next_path)

    # Exactly once: every completion, the batch's finalization, the next stage.
    violations = await batch_violations(
        firestore_client,
        batch_collection,
        "b1",
        manager.mode,
        expected=players,
        require_finalized=True,
    )
    assert [] == violations
    progress = await manager.get_progress("b1")
    assert (200, sum(players.values()), "complete") == (
        progress.completed_count,
        progress.total_predictions,
        progress.status,
    )
    key = progress.finalization_key
    (message,) = started
    assert {"batch_id": "b1", "finalization_key": key} == message["attributes"]
    assert json.loads(base64.b64decode(message["data"]))["completed_count"] == 200
    marker_docs = [d.to_dict() or {} async for d in firestore_client.collection(markers).stream()]
    assert [("b1", key)] == [(d["batch_id"], d["finalization_key"]) for d in marker_docs]
    batch_doc = (await firestore_client.collection(batch_collection).document("b1").get()).to_dict()
    assert batch_doc is not None and f.EXPIRE_AT in batch_doc  # RETAIN_DAYS: TTL stamp

    # Every stdout line is a Cloud Logging JSON entry; the events happened once.
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
    entries = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    assert all({"severity", "message", "time"} <= e.keys() for e in entries)
    events = [e.get("event") for e in entries]
    assert (1, 0, 1) == (
        events.count("next_stage_started"),
        events.count("next_stage_deduplicated"),
        events.count("stopped"),
    )
    (refused,) = [e for e in entries if e.get("message_id") == "p-1"]
    assert f"projects/{project}/traces/{trace_id}" == refused["logging.googleapis.com/trace"]
    await manager.aclose()


@pytest.mark.emulator
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigterm_mid_batch_exits_0_in_time_and_leaves_the_batch_consistent(
    tmp_path: Path,
    service_processes: list[subprocess.Popen[str]],
    firestore_emulator: EmulatorInfo,
    pubsub_emulator: PubSubEmulator,
    firestore_client: AsyncClient,
    batch_collection: str,
) -> None:
    """SIGTERM while the emulator is pushing a batch: uvicorn drains the requests in
    flight, the lifespan shutdown closes the manager, and the process exits 0 inside
    10 s; what was written is consistent and holds the published counts.

    (Not restarted to finish the batch: the Pub/Sub emulator does not reliably redeliver
    push messages it failed to deliver while nothing listened, which Pub/Sub does per the
    retry policy, and on Cloud Run another instance answers at the same URL.)"""
    project = firestore_emulator.project
    topic, sub = names()
    pubsub_emulator.create_topic(project, topic)
    env = emulator_env(firestore_emulator, pubsub_emulator, batch_collection)
    proc, url = start_service(tmp_path, env)
    service_processes.append(proc)
    await wait_healthy(proc, url, tmp_path)
    pubsub_emulator.create_subscription(
        project, sub, topic, ack_deadline=20, push_endpoint=url + "/pubsub"
    )
    manager = AsyncBatchStateManager(
        firestore_client, collection=batch_collection, mode=MigrationMode.from_env(env)
    )
    players = {f"player-{i:04d}": i % 5 for i in range(600)}
    await manager.create_batch("b1", expected_players=list(players))
    pubsub_emulator.publish(project, topic, [payload("b1", p, n) for p, n in players.items()])
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(http, url + "/health"))[1]["stats"]["acked"] < 100:
        assert time.monotonic() < deadline, logs_of(tmp_path)
        await asyncio.sleep(0.02)

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    seconds = time.monotonic() - sent
    progress = await manager.get_progress("b1")
    recorded = progress.completed_players
    print(f"\nSIGTERM-to-exit mid-batch ({len(recorded)}/600 recorded): {seconds:.2f} s")
    assert (0, True) == (code, seconds < CLOUD_RUN_KILL), logs_of(tmp_path)
    assert 100 <= len(recorded) < 600
    violations = await batch_violations(
        firestore_client,
        batch_collection,
        "b1",
        manager.mode,
        expected={p: players[p] for p in recorded},
    )
    assert [] == violations
    assert "Traceback" not in logs_of(tmp_path)
    stdout = (tmp_path / "stdout.log").read_text().splitlines()
    events = [json.loads(line).get("event") for line in stdout]
    assert 1 == events.count("stopped")  # the lifespan shutdown ran to its end
    await manager.aclose()
