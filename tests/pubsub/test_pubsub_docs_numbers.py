"""docs/pubsub.md's timeouts and budgets are the code's defaults, and its advice follows from them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from async_batchstate.pubsub import PullConsumer, PushAuth, PushEndpoint, drain_on_sigterm

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "pubsub.md").read_text()
MARGIN = 5
"""Seconds the docs add for queueing and the network to the push answer's bound."""


def default(function: object, name: str) -> float:
    value = inspect.signature(function).parameters[name].default  # type: ignore[arg-type]
    assert isinstance(value, int | float)
    return float(value)


def row(label: str) -> str:
    """The value cell of the docs' table row that starts with ``label``."""
    found = re.search(rf"^\| {re.escape(label)}[^|]*\| ([^|]+) \|$", DOCS, re.MULTILINE)
    assert found is not None, label
    return found.group(1)


def seconds(cell: str) -> list[float]:
    return [float(n) for n in re.findall(r"(\d+(?:\.\d+)?) s", cell)]


TIMEOUT = default(PushEndpoint, "timeout")
CERTS_TIMEOUT = float(PushAuth("aud").certs_timeout)
BUDGET = default(drain_on_sigterm, "grace")
LIFESPAN = default(PushEndpoint, "shutdown_budget")


def test_both_adapters_share_the_documented_delivery_timeout() -> None:
    """PushEndpoint and PullConsumer: record_completion's timeout is the table's 10 s."""
    assert [TIMEOUT] == seconds(row("`record_completion`'s timeout"))
    assert TIMEOUT == default(PullConsumer, "timeout")
    assert [CERTS_TIMEOUT] == seconds(row("one certificate fetch"))


def test_the_advised_ack_deadline_is_derived_from_the_defaults() -> None:
    """Every --ack-deadline in the docs = timeout + one certificate fetch + the margin."""
    advised = TIMEOUT + CERTS_TIMEOUT + MARGIN
    assert [advised] == seconds(row("push subscription ack deadline"))
    found = {float(n) for n in re.findall(r"--ack-deadline[= ](\d+)", DOCS)}
    assert {advised} == found
    assert f"**{advised:.0f} s**" in DOCS


def test_the_shutdown_budget_fits_cloud_run_s_ten_seconds() -> None:
    """drain_on_sigterm's budget and uvicorn's wait + the lifespan's budget agree, under 10 s."""
    assert [BUDGET] == seconds(row("shutdown budget from SIGTERM"))
    assert (
        BUDGET
        == default(PullConsumer.shutdown, "budget")
        == default(PushEndpoint.shutdown, "budget")
    )
    graceful = {float(n) for n in re.findall(r"--timeout-graceful-shutdown (\d+)", DOCS)}
    assert [*graceful, LIFESPAN] == seconds(row("uvicorn's `--timeout-graceful-shutdown`"))
    assert {BUDGET - LIFESPAN} == graceful
    assert {BUDGET} == {float(g) for g in re.findall(r"grace=(\d+\.\d+)", DOCS)}
    assert {LIFESPAN} == {float(b) for b in re.findall(r"budget=(\d+\.\d+)", DOCS)}
    assert BUDGET < 10
