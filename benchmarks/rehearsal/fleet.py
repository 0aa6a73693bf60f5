"""The coordinator fleet: OS processes started, deployed, killed and drained by slot.

A slot is one place in the fleet (a Cloud Run instance's role): pull slots share
one pull subscription; each push slot has its own topic and push subscription,
pointed at whichever process serves the slot now. A deploy of a slot is a surge,
as Cloud Run does it: the new process starts and is ready (for push, the
subscription is pointed at it) before the old one gets SIGTERM and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from async_batchstate import MigrationMode
from async_batchstate.testing import free_port

from .plan import mode_env

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 10.0  # Cloud Run's termination grace: SIGKILL this long after SIGTERM


@dataclass
class Proc:
    """One coordinator process."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    mode: MigrationMode
    port: int | None
    started: float
    ended: float | None = None
    how: str = ""  # how it ended: "sigterm", "sigkill", "end"


@dataclass
class Slot:
    """A place in the fleet: pull (shared subscription) or push (its own)."""

    index: int
    kind: str
    topic: str
    subscription: str
    proc: Proc | None = None


def rest(host: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One Pub/Sub emulator REST call."""
    request = urllib.request.Request(
        f"http://{host}/v1/{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read() or b"{}")
    return answer if isinstance(answer, dict) else {}


@dataclass
class Fleet:
    """Every slot and every process ever started (their record files are the results)."""

    base_env: dict[str, str]
    pubsub_host: str
    project: str
    run_dir: Path
    lease: float
    slots: list[Slot] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def _spawn(self, slot: Slot, mode: MigrationMode) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith(f"s{slot.index}-"))
        name = f"s{slot.index}-{slot.kind}-{n}"
        log = self.run_dir / f"{name}.log"
        port = free_port() if slot.kind == "push" else None
        env = {
            **self.base_env,
            **mode_env(mode),
            "REHEARSAL_KIND": slot.kind,
            "REHEARSAL_SUBSCRIPTION": slot.subscription,
            "REHEARSAL_PORT": str(port or 0),
            "REHEARSAL_LOG": str(log),
            "REHEARSAL_LEASE": str(self.lease),
        }
        err = open(self.run_dir / f"{name}.err", "wb")  # noqa: SIM115 - the child keeps it
        popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.rehearsal.worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
        err.close()
        proc = Proc(name, popen, log, mode, port, time.time())
        self.procs.append(proc)
        return proc

    async def _ready(self, proc: Proc, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited {proc.popen.returncode} at start")
            with contextlib.suppress(FileNotFoundError):
                if any(line.startswith("R\t") for line in proc.log.read_text().splitlines()):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{proc.name} was not ready within {timeout:.0f} s")

    def _point(self, slot: Slot, proc: Proc) -> None:
        """Point a push slot's subscription at ``proc`` (what a traffic switch does)."""
        url = f"http://127.0.0.1:{proc.port}/push"
        rest(
            self.pubsub_host,
            "POST",
            f"{slot.subscription}:modifyPushConfig",
            {"pushConfig": {"pushEndpoint": url}},
        )

    async def start(self, slot: Slot, mode: MigrationMode) -> Proc:
        """Start a process for an empty slot and wait until it serves."""
        proc = self._spawn(slot, mode)
        await self._ready(proc)
        if slot.kind == "push":
            await asyncio.to_thread(self._point, slot, proc)
        slot.proc = proc
        return proc

    async def stop(self, slot: Slot, sig: signal.Signals = signal.SIGTERM) -> dict[str, Any]:
        """SIGTERM (drain) or SIGKILL the slot's process; what its exit looked like."""
        proc = slot.proc
        assert proc is not None
        slot.proc = None
        return await self._end(proc, sig)

    async def _end(self, proc: Proc, sig: signal.Signals) -> dict[str, Any]:
        began = time.time()
        proc.popen.send_signal(sig)
        killed = False
        try:
            code = await asyncio.to_thread(proc.popen.wait, KILL_AFTER)
        except subprocess.TimeoutExpired:
            # As Cloud Run does: SIGKILL once the termination grace has passed.
            proc.popen.kill()  # our own child, by its handle
            code = await asyncio.to_thread(proc.popen.wait, 30)
            killed = True
        proc.ended = time.time()
        proc.how = "sigkill" if sig is signal.SIGKILL or killed else "sigterm"
        out: dict[str, Any] = {
            "process": proc.name,
            "exit": code,
            "seconds": proc.ended - began,
            "killed_after_grace": killed,
        }
        with contextlib.suppress(FileNotFoundError):
            for line in proc.log.read_text().splitlines():
                if line.startswith("S\t"):
                    stats = json.loads(line.split("\t", 2)[2])
                    out["stats"] = stats
        return out

    async def deploy(self, slot: Slot, mode: MigrationMode) -> dict[str, Any]:
        """A surge deploy of one slot: the new process serves, then the old one drains."""
        old = slot.proc
        await self.start(slot, mode)
        if old is None:
            return {"process": slot.proc.name if slot.proc else None}
        return await self._end(old, signal.SIGTERM)

    async def shutdown(self) -> list[dict[str, Any]]:
        """SIGTERM every process still running (in parallel) and wait for them."""
        ends = []
        for slot in self.slots:
            if slot.proc is not None:
                ends.append(self.stop(slot))
        results = list(await asyncio.gather(*ends))
        for proc in self.procs:  # anything left (never expected): by its own handle
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(30)
        return results

    def kill_all(self) -> None:
        """On an error: SIGKILL our own children, by handle."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(30)
