"""One coordinator process of the rehearsal fleet: a manager behind a Pub/Sub adapter.

Usage: ``python -m benchmarks.rehearsal.worker`` with everything in its environment,
as a Cloud Run revision gets it:

- ``FIRESTORE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT``;
- the three mode flags (``ENABLE_SUBCOLLECTION_COMPLETIONS``, ``DUAL_WRITE_MODE``,
  ``USE_SUBCOLLECTION_READS``): the manager reads its mode from them (``mode=None``),
  so a rolling deploy is a restart with another environment;
- ``REHEARSAL_KIND`` (``pull`` or ``push``), ``REHEARSAL_SUBSCRIPTION`` (pull),
  ``REHEARSAL_PORT`` (push: the loopback port to serve on), ``REHEARSAL_COLLECTION``,
  ``REHEARSAL_LOG`` (the record file), ``REHEARSAL_LEASE`` (callback lease and sweep, s).

It appends one tab-separated line per fact to its record file, line-buffered so
that a SIGKILL loses nothing already told: ``W`` each ``record_completion`` call
(latency, outcome), ``A`` each message the adapter acknowledged (after its write),
``C``/``E`` each ``on_complete``/``on_expired`` run with its finalization key, ``M``
each confirmed mismatch. On SIGTERM it drains (``drain_on_sigterm``), closes and exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from async_batchstate import AsyncBatchStateManager, BatchProgress
from async_batchstate._store.connect import client_from_env
from async_batchstate.consistency import ConsistencyReport
from async_batchstate.instrumentation import CompletionFinished, Event
from async_batchstate.pubsub import PullConsumer, PushEndpoint, decode_envelope, drain_on_sigterm
from async_batchstate.testing import LoopbackAsgiServer, aclose_client

GRACE = 8.0  # Cloud Run's 10 s less a margin (the fleet SIGKILLs at 10 s)
KEY = "k"  # the message attribute naming a published message (the driver's key)


class Records:
    """The process's record file: one line per fact, flushed at each line."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - lives with the process

    def write(self, kind: str, *fields: object) -> None:
        self._file.write("\t".join([kind, f"{time.time():.6f}", *map(str, fields)]) + "\n")

    def close(self) -> None:
        self._file.close()


def _event_hook(records: Records) -> Callable[[Event], None]:
    def hook(event: Event) -> None:
        if isinstance(event, CompletionFinished):
            if event.result is not None:
                outcome = event.result.status.value
            else:
                outcome = f"error:{type(event.error).__name__}"
            records.write("W", event.batch_id, event.player, f"{event.seconds:.6f}", outcome)

    return hook


class _TrackedMessage:
    """A pulled message whose ``ack`` is recorded first (the adapter acks after the write)."""

    def __init__(self, message: Any, records: Records, keys: dict[str, str]) -> None:
        self._message = message
        self._records = records
        self._keys = keys
        keys[message.ack_id] = key = message.attributes.get(KEY, "")
        records.write("I", key, "pull")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ack(self) -> None:
        self._records.write("A", self._keys.pop(self._message.ack_id, ""), "pull")
        self._message.ack()


class _TrackedSubscriber:
    """A ``SubscriberClient`` whose acknowledgements (streamed or direct) are recorded."""

    def __init__(self, records: Records) -> None:
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.SubscriberClient()
        self._records = records
        self._keys: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def subscribe(self, subscription: str, callback: Callable[[Any], None], **kw: Any) -> Any:
        records, keys = self._records, self._keys
        return self._client.subscribe(
            subscription, lambda m: callback(_TrackedMessage(m, records, keys)), **kw
        )

    def acknowledge(self, request: Mapping[str, Any], **kw: Any) -> Any:
        # A drain settles the writes it waited for by direct calls, once the stream is gone.
        for ack_id in request["ack_ids"]:
            self._records.write("A", self._keys.pop(ack_id, ""), "pull-direct")
        return self._client.acknowledge(request=request, **kw)


class _TrackedApp:
    """The push endpoint's ASGI app, recording each message answered 200 (acknowledged)."""

    def __init__(self, endpoint: PushEndpoint, records: Records) -> None:
        self._endpoint = endpoint
        self._records = records

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._endpoint(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            key = decode_envelope(body).attributes.get(KEY, "")
        except Exception:
            key = ""
        self._records.write("I", key, "push")
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                self._records.write("A" if status == 200 else "N", key, f"push {status}")
            await send(message)

        await self._endpoint(scope, replay, tracked_send)


async def main(env: Mapping[str, str]) -> None:
    records = Records(env["REHEARSAL_LOG"])
    lease = float(env.get("REHEARSAL_LEASE", "5"))

    def callback(kind: str) -> Callable[[str, BatchProgress], None]:
        def run(batch_id: str, progress: BatchProgress) -> None:
            records.write(kind, batch_id, progress.finalization_key)

        return run

    def alert(report: ConsistencyReport) -> None:
        records.write("M", report.batch_id, json.dumps(list(report.problems))[:500])

    client = client_from_env()
    manager = AsyncBatchStateManager(
        client,
        collection=env["REHEARSAL_COLLECTION"],
        mode=None,  # the three environment flags: a deploy changes them
        on_complete=callback("C"),
        on_expired=callback("E"),
        callback_lease=lease,
        callback_sweep_interval=lease,
        hooks=[_event_hook(records)],
        alert_hooks=[alert],
    )
    try:
        adapter: PullConsumer | PushEndpoint
        if env["REHEARSAL_KIND"] == "pull":
            subscriber: Any = _TrackedSubscriber(records)
            adapter = PullConsumer(
                manager,
                env["REHEARSAL_SUBSCRIPTION"],
                subscriber=subscriber,
                poison="ack",
                max_outstanding=int(env.get("REHEARSAL_OUTSTANDING", "100")),
                ack_deadline=10,
            )
            await adapter.start()
            drained = drain_on_sigterm(adapter, grace=GRACE)
            records.write("R", manager.mode.value, "pull")
            await drained
            await adapter.aclose()
            await asyncio.to_thread(subscriber.close)
        else:
            adapter = PushEndpoint(manager, poison="ack", max_concurrency=200)
            async with LoopbackAsgiServer(
                _TrackedApp(adapter, records), port=int(env["REHEARSAL_PORT"])
            ):
                drained = drain_on_sigterm(adapter, grace=GRACE)
                records.write("R", manager.mode.value, "push")
                await drained
        records.write("S", json.dumps(dataclasses.asdict(adapter.stats())))
    finally:
        # The adapter's drain waited for the writes; callbacks still running stay owed.
        await manager.aclose(drain_timeout=1.0)
    await aclose_client(client)
    records.write("X", "exit")
    records.close()


if __name__ == "__main__":
    asyncio.run(main(os.environ))
