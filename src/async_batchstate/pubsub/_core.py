"""What both adapters share: one delivery processed end to end, counters, and draining."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import InvalidInputError
from .._write.manager import AsyncBatchStateManager
from .._write.runner import FLIP_GRACE
from ._messages import (
    Action,
    Decision,
    MessageParseError,
    Parser,
    PoisonMessage,
    PoisonPolicy,
    UnknownBatchPolicy,
    decide,
    parse_with,
)

__all__ = ["AdapterStats", "Drainable", "PoisonHook", "drain_on_sigterm"]

logger = logging.getLogger("async_batchstate.pubsub")

_signal_tasks: set[asyncio.Task[None]] = set()

DELIVERY_TIMEOUT = 10.0
"""The adapters' default ``record_completion`` timeout (seconds): a push answer
comes well inside Pub/Sub's ack deadline and Cloud Run's request timeout."""

SHUTDOWN_BUDGET = 8.0
"""Default seconds from SIGTERM to the end of a shutdown: Cloud Run's 10 s less 2 s to exit."""

PoisonHook = Callable[[PoisonMessage], object]
"""Called with each poison message (sync or async); its errors are logged, not raised."""


@dataclass(frozen=True, slots=True)
class AdapterStats:
    """A snapshot of an adapter's counters (``stats()``), one per outcome of a delivery.

    Attributes:
        received: Deliveries taken (push requests that passed authentication and
            the concurrency bound; pull messages handed to the event loop).
        acked: Acknowledged after a confirmed write (RECORDED, DUPLICATE or LATE).
        duplicates: Of ``acked``, those the manager found already recorded.
        retried: Refused for a redelivery soon: a retryable failure of the write, or
            cut short by a drain (or, push, by the server cancelling the request).
        delayed: Refused for a redelivery later: the batch does not exist yet.
        poison: Poison messages (acknowledged or refused per the policy).
        saturated: Push requests answered 429 (concurrency bound reached).
        unauthorized: Push requests refused by authentication (401/403).
        in_flight: Deliveries being processed now.
    """

    received: int = 0
    acked: int = 0
    duplicates: int = 0
    retried: int = 0
    delayed: int = 0
    poison: int = 0
    saturated: int = 0
    unauthorized: int = 0
    in_flight: int = 0


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an ``int`` >= 1 (not a ``bool``), else ``InvalidInputError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int")
    if value < 1:
        raise InvalidInputError(f"{name} must be >= 1, not {value}")
    return value


class Processor:
    """Parses a delivery, records it and decides its fate; counts and reports poison."""

    def __init__(
        self,
        manager: AsyncBatchStateManager,
        *,
        parse: Parser,
        poison: PoisonPolicy,
        unknown_batch: UnknownBatchPolicy | None,
        on_poison: PoisonHook | None,
        timeout: float | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if poison not in ("ack", "nack"):
            raise InvalidInputError(f"poison must be 'ack' or 'nack', not {poison!r}")
        self.manager = manager
        self.poison = poison
        self._parse = parse
        self._unknown_batch = unknown_batch or UnknownBatchPolicy()
        self._on_poison = on_poison
        self._timeout = timeout
        self._wall_clock = wall_clock
        self.counts: dict[str, int] = dict.fromkeys(AdapterStats.__slots__, 0)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.accepting = True

    def stats(self) -> AdapterStats:
        """A snapshot of the counters."""
        return AdapterStats(**(self.counts | {"in_flight": len(self.tasks)}))

    async def process(
        self,
        message_id: str,
        data: bytes,
        attributes: Mapping[str, str],
        publish_time: float | None,
    ) -> Decision:
        """Record one delivery; the decision says whether it may be acknowledged."""
        self.counts["received"] += 1
        outcome: Any
        try:
            c = parse_with(self._parse, data, attributes)
        except MessageParseError as exc:  # whatever the parser raised: it would again
            outcome = exc
        else:
            try:
                outcome = await self.manager.record_completion(
                    c.batch_id, c.player, c.predictions_count, timeout=self._timeout
                )
            except Exception as exc:  # classified by decide: only the write's failures retry
                outcome = exc
        age = 0.0 if publish_time is None else max(0.0, self._wall_clock() - publish_time)
        decision = decide(outcome, age=age, unknown_batch=self._unknown_batch)
        if decision.action is Action.ACK:
            self.counts["acked"] += 1
            self.counts["duplicates"] += decision.reason == "duplicate"
        elif decision.action is Action.RETRY:
            self.counts["retried"] += 1
            logger.info(
                "pubsub message %s will be redelivered: %s",
                message_id,
                decision.reason,
                extra={"message_id": message_id, "reason": decision.reason},
            )
        elif decision.action is Action.DELAY:
            self.counts["delayed"] += 1
        else:
            await self._report_poison(message_id, data, attributes, decision)
        return decision

    async def _report_poison(
        self, message_id: str, data: bytes, attributes: Mapping[str, str], decision: Decision
    ) -> None:
        self.counts["poison"] += 1
        acknowledged = self.poison == "ack"
        poison = PoisonMessage(
            message_id, data, dict(attributes), decision.reason, decision.error, acknowledged
        )
        logger.warning(
            "poison pubsub message %s (%s): %s",
            message_id,
            "acknowledged" if poison.acknowledged else "refused, left to the dead-letter policy",
            decision.reason,
            extra={
                "message_id": message_id,
                "reason": decision.reason,
                "poison_policy": self.poison,
                "data_prefix": data[:200].decode("utf-8", "replace"),
            },
        )
        if self._on_poison is None:
            return
        try:
            result = self._on_poison(poison)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("the on_poison hook failed for message %s", message_id)

    def track(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a delivery as a task that ``drain`` waits for (or cancels after its grace)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self, grace: float) -> int:
        """Stop accepting; wait up to ``grace`` seconds for deliveries in flight, cancel the rest.

        A cancelled delivery is refused (nack, 503), never acknowledged: its write
        either committed whole (a redelivery is then a DUPLICATE) or not at all.

        Returns:
            How many deliveries were cut short.
        """
        self.accepting = False
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            logger.warning(
                "drain: %d pubsub deliveries cut short after %.1fs, left for redelivery",
                len(pending),
                grace,
                extra={"cut_short": len(pending), "grace": grace},
            )
        return len(pending)

    async def shutdown(self, budget: float, drain: Callable[[float], Awaitable[int]]) -> int:
        """``drain`` within ``budget`` seconds, then close the manager within what is left.

        The manager's close waits for its queued and in-flight writes, then for
        its callbacks (a quarter of the budget, at most ``FLIP_GRACE``, is kept for
        a finalization flip on the wire), and cuts what is left when the budget runs out (writes
        committed whole or not at all; callbacks stay owed). The adapter never
        acknowledges a delivery whose write it did not see confirmed.

        Returns:
            How many deliveries the drain cut short.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A close that cuts a group whose finalization flip is on the wire waits for the
        # flip (up to FLIP_GRACE) after its drain: keep that inside the budget too.
        reserve = min(FLIP_GRACE, budget / 4)
        cut = await drain(budget - reserve)
        left = max(0.0, budget - (loop.time() - started))
        await self.manager.aclose(drain_timeout=max(0.0, left - reserve))
        logger.info(
            "pubsub shutdown over after %.1fs (budget %.1fs, %d deliveries cut short)",
            loop.time() - started,
            budget,
            cut,
            extra={"budget": budget, "cut_short": cut},
        )
        return cut


class Drainable(Protocol):
    """Anything with ``shutdown(budget)``: ``PushEndpoint`` and ``PullConsumer``."""

    def shutdown(self, budget: float = ...) -> Awaitable[int]:
        """Stop taking deliveries, finish them, close the manager: all within ``budget`` seconds."""
        ...


def drain_on_sigterm(
    target: Drainable,
    *,
    grace: float = SHUTDOWN_BUDGET,
    then: Callable[[], object] | None = None,
) -> asyncio.Future[int]:
    """On SIGTERM, ``await target.shutdown(grace)``: one budget from the signal to exit.

    Cloud Run sends SIGKILL 10 s after SIGTERM. Within ``grace`` seconds the
    target stops taking deliveries, finishes those in flight, refuses what it
    cut short (nack, 503), then closes its manager with what is left of the
    budget (writes still queued get ``ManagerClosedError``, callbacks still
    running are cancelled and stay owed). Nothing is acknowledged unwritten.

    Installs a handler on the running loop (Unix only; call it from the loop's
    thread); a second SIGTERM during the shutdown is ignored. The returned
    future resolves with ``shutdown``'s result (deliveries cut short) once it
    is over; ``then``, if given, runs after it, e.g. to stop a server.

    Args:
        target: A ``PullConsumer`` or a ``PushEndpoint``.
        grace: The shutdown budget in seconds (default 8: Cloud Run's 10 s less
            2 s for the process to exit).
        then: Called after the shutdown.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    started = False

    async def run() -> None:
        try:
            cut = await target.shutdown(grace)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
        if not done.done():
            done.set_result(cut)
        if then is not None:
            then()

    def on_sigterm() -> None:
        nonlocal started
        if started:
            return
        started = True
        logger.info("SIGTERM: shutting down pubsub deliveries (budget %.1fs)", grace)
        task = loop.create_task(run())
        _signal_tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(_signal_tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    return done
