"""An asyncio consumer over google-cloud-pubsub's streaming pull: ack only after the write."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._errors import InvalidInputError, ManagerClosedError
from .._write.manager import AsyncBatchStateManager
from ._core import (
    DELIVERY_TIMEOUT,
    SHUTDOWN_BUDGET,
    AdapterStats,
    PoisonHook,
    Processor,
    logger,
    positive_int,
)
from ._messages import Action, Parser, PoisonPolicy, UnknownBatchPolicy, parse_json

if TYPE_CHECKING:
    from google.cloud.pubsub_v1 import SubscriberClient
    from google.cloud.pubsub_v1.subscriber.message import Message

__all__ = ["PullConsumer"]

_DIRECT_CALL_TIMEOUT = 2.0
"""Seconds for one ack or nack by a direct RPC once the stream is closed (a drain).
A nack that fails is no loss: the lease runs out and Pub/Sub redelivers."""


class PullConsumer:
    """Consume a pull subscription with streaming pull; record each message, then ack it.

        async with PullConsumer(manager, "projects/p/subscriptions/completions") as consumer:
            drain_on_sigterm(consumer)
            await consumer.wait()  # returns once the SIGTERM shutdown is over

    The client's callbacks run in its threads; each only hands its message to the
    event loop (``call_soon_threadsafe``) and returns, so neither the loop nor
    the client's lease management ever waits for a write. Per message:

    - ack once the completion is written (RECORDED, DUPLICATE or LATE);
    - nack on a retryable failure (``RetryExhaustedError``, ``CompletionTimeoutError``,
      ``WriteFailedError``, ``ManagerClosedError``), and while draining;
    - an unknown batch (a completion that overtook ``create_batch``): its ack
      deadline is set to the ``UnknownBatchPolicy`` delay and it leaves lease
      management, so it comes back after that delay rather than in 50-90 ms;
    - poison (unparsable, ``InvalidInputError``, an unknown batch past the grace):
      ack (``poison="ack"``: logged, ``on_poison`` hook, ``stats().poison``) or nack
      (``"nack"``: left to the subscription's dead-letter policy; without one it
      comes back every few tens of milliseconds until the retention period ends).

    Flow control: at most ``max_outstanding`` messages are leased at once (the
    server sends no more, and the rest of a backlog stays in Pub/Sub: memory is
    flat whatever the backlog). Size it to what the manager writes: about its
    throughput times the latency you accept; the manager groups concurrent
    completions of a batch into one write, so a few dozen keep it busy.

    Leases: the python client asks for a 60 s stream ack deadline unless told
    otherwise, so a dead consumer's messages would come back only after a minute.
    This consumer sets ``max_duration_per_lease_extension`` to the subscription's
    ack deadline (or ``ack_deadline``), so they come back after that.

    Scale-in: ``drain_on_sigterm(consumer)`` runs ``shutdown(8.0)`` on SIGTERM, in
    which the drain and the manager's close share the 8 s; ``wait()`` returns
    normally once it is over. A message cut short is nacked, never acknowledged.

    Args:
        manager: The open manager that records completions.
        subscription: ``projects/{project}/subscriptions/{name}``.
        subscriber: A ``SubscriberClient``; by default one is made (honouring
            ``PUBSUB_EMULATOR_HOST``) and closed by ``aclose``.
        parse: ``parse(data, attributes) -> Completion`` (default: ``parse_json``).
        poison: ``"ack"`` or ``"nack"`` (default).
        max_outstanding: Most messages leased and unacknowledged at once (default 64).
        ack_deadline: Seconds of each lease extension, 10-600; default: the
            subscription's ack deadline.
        unknown_batch: How long a completion for an unknown batch is retried.
        on_poison: Called with each ``PoisonMessage`` (sync or async).
        timeout: ``record_completion``'s timeout in seconds (default 10); a delivery
            not confirmed by then is nacked and comes back. None: the manager's
            retry deadline.

    Raises:
        InvalidInputError: A knob out of range.
    """

    def __init__(
        self,
        manager: AsyncBatchStateManager,
        subscription: str,
        *,
        subscriber: SubscriberClient | None = None,
        parse: Parser = parse_json,
        poison: PoisonPolicy = "nack",
        max_outstanding: int = 64,
        ack_deadline: float | None = None,
        unknown_batch: UnknownBatchPolicy | None = None,
        on_poison: PoisonHook | None = None,
        timeout: float | None = DELIVERY_TIMEOUT,
    ) -> None:
        positive_int("max_outstanding", max_outstanding)
        if ack_deadline is not None and not 10 <= ack_deadline <= 600:
            raise InvalidInputError(f"ack_deadline must be 10-600 seconds, not {ack_deadline}")
        self.subscription = subscription
        self._processor = Processor(
            manager,
            parse=parse,
            poison=poison,
            unknown_batch=unknown_batch,
            on_poison=on_poison,
            timeout=timeout,
        )
        self._subscriber = subscriber
        self._owns_subscriber = subscriber is None
        self._max_outstanding = max_outstanding
        self._ack_deadline = ack_deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: concurrent.futures.Future[Any] | None = None
        self._done: asyncio.Future[Any] | None = None
        self._closed = False
        self._stopped: asyncio.Event | None = None  # set once a drain or shutdown is over
        self._shutting_down = False
        self._leased: dict[str, Message] = {}
        self._cut: list[str] = []  # ack ids a drain cut short, nacked together
        self._direct = False  # after the stream closed: settle by direct RPCs

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the streaming pull (``async with`` calls it).

        Raises:
            ManagerClosedError: Already closed.
        """
        if self._closed:
            raise ManagerClosedError("this PullConsumer is closed")
        if self._stream is not None:
            return self
        from google.cloud import pubsub_v1

        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._subscriber is None:
            self._subscriber = pubsub_v1.SubscriberClient()
        subscriber = self._subscriber
        if self._ack_deadline is None:
            found = await asyncio.to_thread(
                subscriber.get_subscription, request={"subscription": self.subscription}
            )
            self._ack_deadline = float(max(10, found.ack_deadline_seconds))
        lease = int(self._ack_deadline)
        flow = pubsub_v1.types.FlowControl(
            max_messages=self._max_outstanding,
            max_duration_per_lease_extension=lease,
            min_duration_per_lease_extension=lease,
        )
        self._stream = subscriber.subscribe(
            self.subscription, callback=self._on_message, flow_control=flow
        )
        self._done = asyncio.wrap_future(self._stream)
        logger.info(
            "pulling %s: %d outstanding at most, %ds leases",
            self.subscription,
            self._max_outstanding,
            lease,
            extra={"subscription": self.subscription},
        )
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def wait(self) -> None:
        """Until the consumer has stopped: returns once a drain or shutdown is over.

        A drain cancels the streaming pull (which marks its future cancelled);
        that is the consumer stopping as asked, so ``wait`` returns normally
        once the drain (or ``shutdown``: drain and manager close) has finished.

        Raises:
            ManagerClosedError: Not started.
            Exception: The streaming pull's own error, when it failed without a drain.
        """
        done, stopped = self._done, self._stopped
        if done is None or stopped is None:
            raise ManagerClosedError("start() the PullConsumer first")
        waiter = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({done, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not stopped.is_set() and self._processor.accepting:
            # The stream ended on its own, not closed by a drain.
            error = None if done.cancelled() else done.exception()
            if error is not None:
                raise error
            return
        await stopped.wait()  # a drain closed the stream: until it (or the shutdown) is over

    async def drain(self, grace: float = SHUTDOWN_BUDGET) -> int:
        """Stop taking messages, finish writes in flight within ``grace`` seconds, nack the rest.

        The stream closes first, so Pub/Sub sends nothing more (the client nacks
        what it had received but not handed over). The messages being written get
        their ack deadline moved past the grace; each is then acknowledged (or
        nacked, if cut short or failed) by a direct ``acknowledge`` /
        ``modify_ack_deadline`` call, since the stream is gone. Closing the stream
        counts against the grace.

        Returns:
            How many messages were cut short and nacked.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        processor = self._processor
        processor.accepting = False
        stream = self._stream
        try:
            if stream is not None and not stream.done():
                leased = [m.ack_id for m in self._leased.values()]
                self._direct = True
                if leased:
                    await self._modify(leased, math.ceil(grace) + 5)
                await self._close_stream(stream, max(0.0, grace - (loop.time() - started)))
            cut = await processor.drain(max(0.0, grace - (loop.time() - started)))
            cut_short, self._cut = self._cut, []
            for start in range(0, len(cut_short), 1000):  # well under Pub/Sub's request limit
                left = grace - (loop.time() - started)
                if left <= 0:  # out of budget: their leases run out and Pub/Sub redelivers
                    break
                await self._modify(cut_short[start : start + 1000], 0, timeout=left)
            return cut
        finally:
            if not self._shutting_down and self._stopped is not None:
                self._stopped.set()

    async def _close_stream(self, stream: concurrent.futures.Future[Any], budget: float) -> None:
        # cancel() joins the client's threads: in the executor (started at once, so the
        # stream is cancelled even with no budget left) and awaited at most ``budget``.
        loop = asyncio.get_running_loop()
        started = loop.time()
        done = self._done
        assert done is not None
        cancelling = loop.run_in_executor(None, stream.cancel)
        closed, _ = await asyncio.wait({cancelling}, timeout=budget)
        if closed:
            if cancelling.exception() is not None:
                logger.warning("closing the streaming pull failed: %r", cancelling.exception())
            await asyncio.wait({done}, timeout=max(0.0, budget - (loop.time() - started)))
        if not done.done():
            logger.warning("the streaming pull did not close within %.1fs", budget)
        elif not done.cancelled() and done.exception() is not None:
            logger.warning("the streaming pull ended with %r", done.exception())

    async def shutdown(self, budget: float = SHUTDOWN_BUDGET) -> int:
        """Drain, then close the manager: all within ``budget`` seconds from the call.

        What ``drain_on_sigterm`` runs. The drain takes what it needs of the
        budget (up to all of it); the manager's close gets the rest: its queued
        and in-flight writes get ``ManagerClosedError`` when it runs out and its
        callbacks still running are cancelled (they stay owed). ``wait()``
        returns once both are over. The subscriber client is closed by ``aclose``.

        Returns:
            How many messages the drain cut short and nacked.
        """
        self._shutting_down = True
        try:
            return await self._processor.shutdown(budget, self.drain)
        finally:
            if self._stopped is not None:
                self._stopped.set()

    async def aclose(self, grace: float = SHUTDOWN_BUDGET) -> None:
        """Drain (``grace`` seconds), close the stream and, if this consumer made it, the client.

        The manager stays open (``shutdown`` closes it).
        """
        if self._closed:
            return
        self._closed = True
        await self.drain(grace)
        if self._owns_subscriber and self._subscriber is not None:
            await asyncio.to_thread(self._subscriber.close)

    def stats(self) -> AdapterStats:
        """A snapshot of the consumer's counters."""
        return self._processor.stats()

    def __repr__(self) -> str:
        s = self.stats()
        state = (
            "closed"
            if self._closed
            else "draining"
            if not self._processor.accepting
            else "pulling"
            if self._stream is not None
            else "new"
        )
        return (
            f"<PullConsumer {self.subscription} {state} in_flight={s.in_flight}/"
            f"{self._max_outstanding} acked={s.acked} retried={s.retried} poison={s.poison}>"
        )

    # -- deliveries ------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        """The client's callback, in one of its threads: hand over and return at once."""
        loop = self._loop
        try:
            assert loop is not None
            loop.call_soon_threadsafe(self._take, message)
        except RuntimeError:  # the loop is closed: leave it to another consumer
            message.nack()

    def _take(self, message: Message) -> None:
        processor = self._processor
        self._leased[message.ack_id] = message
        processor.track(self._deliver(message))

    async def _deliver(self, message: Message) -> None:
        processor = self._processor
        try:
            if not processor.accepting:
                processor.counts["retried"] += 1
                await self._settle(message, ack=False)
                return
            try:
                decision = await processor.process(
                    message.message_id,
                    message.data,
                    dict(message.attributes),
                    message.publish_time.timestamp(),
                )
            except asyncio.CancelledError:
                processor.counts["retried"] += 1
                if self._direct:  # cut short by a drain: one nack for all of them, after it
                    self._cut.append(message.ack_id)
                else:
                    message.nack()
                raise
            if decision.action is Action.ACK:
                await self._settle(message, ack=True)
            elif decision.action is Action.DELAY:
                await self._settle(message, ack=False, delay=decision.delay)
            else:
                poison_ack = decision.action is Action.POISON and processor.poison == "ack"
                await self._settle(message, ack=poison_ack)
        finally:
            self._leased.pop(message.ack_id, None)

    async def _settle(self, message: Message, *, ack: bool, delay: int = 0) -> None:
        """Ack, nack or delay: through the stream while it is open, else by direct calls."""
        if not self._direct:
            if ack:
                message.ack()
            elif delay:
                # A new deadline, then out of lease management: back after the delay.
                message.modify_ack_deadline(delay)
                message.drop()
            else:
                message.nack()
            return
        if ack:
            await self._call("acknowledge", {"ack_ids": [message.ack_id]})
        else:
            await self._modify([message.ack_id], delay)

    async def _modify(
        self, ack_ids: list[str], seconds: int, *, timeout: float = _DIRECT_CALL_TIMEOUT
    ) -> None:
        await self._call(
            "modify_ack_deadline",
            {"ack_ids": ack_ids, "ack_deadline_seconds": seconds},
            timeout=min(timeout, _DIRECT_CALL_TIMEOUT),
        )

    async def _call(
        self, method: str, request: dict[str, Any], *, timeout: float = _DIRECT_CALL_TIMEOUT
    ) -> None:
        subscriber = self._subscriber
        assert subscriber is not None
        request["subscription"] = self.subscription
        try:
            await asyncio.to_thread(getattr(subscriber, method), request=request, timeout=timeout)
        except Exception as exc:  # the lease then runs out and Pub/Sub redelivers: safe
            logger.warning(
                "pubsub %s failed during a drain: %r", method, exc, extra={"method": method}
            )
