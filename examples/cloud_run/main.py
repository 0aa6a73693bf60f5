"""The prediction coordinator on Cloud Run: Pub/Sub push -> async-batchstate -> Firestore.

Workers publish ``{"batch_id", "player", "predictions_count"}`` to a topic whose push
subscription posts each message to ``POST /pubsub``. ``PushEndpoint`` records it with
``record_completion`` and answers 2xx only once the write is confirmed (Pub/Sub then
acknowledges it); a redelivery is a ``DUPLICATE`` and counts nothing. When a batch's
last completion lands, the manager runs ``NextStage`` (its ``on_complete``) at least
once, and ``NextStage`` publishes the next stage's message with the
``finalization_key`` to deduplicate on (a rerun cut short may publish it again).

Started by the Procfile (``uvicorn main:app ...``); configured by the environment
variables of ``Settings.from_env`` (README.md lists them). ``GET /health`` answers 200
while the service takes deliveries. On SIGTERM uvicorn stops accepting, waits up to
``--timeout-graceful-shutdown`` (6 s) for requests in flight, then the lifespan shutdown
drains what is left and closes the manager within ``SHUTDOWN_BUDGET`` (2 s): 8 s in all,
inside Cloud Run's 10.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from google.api_core.exceptions import AlreadyExists
from google.cloud import firestore, pubsub_v1
from structured_logs import parse_trace, reset_trace, set_project, trace_context

from async_batchstate import AsyncBatchStateManager, BatchProgress, MigrationMode
from async_batchstate.pubsub import PushAuth, PushEndpoint

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PUSH_PATH = "/pubsub"
"""Where the push subscription posts (``--push-endpoint=$URL/pubsub``)."""
HEALTH_PATH = "/health"
"""200 while taking deliveries, 503 while starting or draining (not ``/healthz``:
Cloud Run reserves some paths ending in ``z``)."""

# Defaults; setup.sh derives the subscription and Cloud Run flags from the same numbers
# (tests/test_cloud_run_example.py holds them to the library's defaults).
MAX_CONCURRENCY = 50
"""Deliveries in flight per instance: PushEndpoint(max_concurrency=) = Cloud Run --concurrency."""
RECORD_TIMEOUT = 10.0
"""Seconds a delivery waits for its write (the library's default): the ack deadline is
this + one certificate fetch (5 s) + a 5 s margin = 20 s."""
SHUTDOWN_BUDGET = 2.0
"""Seconds for the lifespan shutdown, after uvicorn's --timeout-graceful-shutdown 6: 6 + 2 = 8."""
RETAIN_DAYS = 30
"""Days a finished batch is kept before the TTL policies on ``expire_at`` delete it."""
PUBLISH_TIMEOUT = 10.0
"""Seconds the next stage's publish may take; after it the callback fails and stays owed."""

logger = logging.getLogger("coordinator")

N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """The environment does not configure a service that may start."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the environment configures (``from_env``); README.md says what each means."""

    collection: str = "prediction_batches"
    completions_subcollection: str = "completions"
    mode: MigrationMode = MigrationMode.DUAL_WRITE
    push_auth: Literal["oidc", "none"] = "oidc"
    push_audience: str | None = None
    push_service_account: str | None = None
    max_concurrency: int = MAX_CONCURRENCY
    record_timeout: float = RECORD_TIMEOUT
    shutdown_budget: float = SHUTDOWN_BUDGET
    retain_days: int = RETAIN_DAYS
    document_write_rate: float | None = None
    next_stage_topic: str = ""
    stage_markers: str = "next_stage_markers"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable; ``ConfigError`` names the first one that is wrong.

        ``PUSH_AUTH=oidc`` (the default) needs ``PUSH_AUDIENCE``: the service refuses to
        start without one rather than accept unauthenticated pushes by accident.
        """
        auth = env.get("PUSH_AUTH", "").strip().lower() or "oidc"
        if auth not in ("oidc", "none"):
            raise ConfigError(f"PUSH_AUTH must be 'oidc' or 'none', not {auth!r}")
        audience = env.get("PUSH_AUDIENCE", "").strip() or None
        if auth == "oidc" and audience is None:
            raise ConfigError(
                "PUSH_AUDIENCE is required with PUSH_AUTH=oidc (the default): set it to the "
                "push subscription's --push-auth-token-audience, or PUSH_AUTH=none for the "
                "emulator (which sends no token)"
            )
        level = env.get("LOG_LEVEL", "INFO").strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ConfigError(f"LOG_LEVEL {level!r} is not a logging level")
        try:
            mode = MigrationMode.from_env(env)
        except ValueError as exc:  # ConfigurationError: a flag that is not a boolean
            raise ConfigError(str(exc)) from None
        return cls(
            collection=env.get("BATCH_COLLECTION", "prediction_batches"),
            completions_subcollection=env.get("COMPLETIONS_SUBCOLLECTION", "completions"),
            mode=mode,
            push_auth="oidc" if auth == "oidc" else "none",
            push_audience=audience,
            push_service_account=env.get("PUSH_SERVICE_ACCOUNT", "").strip() or None,
            max_concurrency=_number(env, "MAX_CONCURRENCY", MAX_CONCURRENCY, int, least=1),
            record_timeout=_number(env, "RECORD_TIMEOUT", RECORD_TIMEOUT, float, least=0.1),
            shutdown_budget=_number(env, "SHUTDOWN_BUDGET", SHUTDOWN_BUDGET, float, least=0.0),
            retain_days=_number(env, "RETAIN_DAYS", RETAIN_DAYS, int, least=0),
            # 0 or unset: no pacing; else the fleet's Commits/s on one batch document.
            document_write_rate=_number(env, "DOCUMENT_WRITE_RATE", 0.0, float, least=0.0) or None,
            next_stage_topic=env.get("NEXT_STAGE_TOPIC", "").strip(),
            stage_markers=env.get("STAGE_MARKERS_COLLECTION", "next_stage_markers"),
            log_level=level,
        )


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N], *, least: N) -> N:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        what = "an int" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is not {what}") from None
    if not (math.isfinite(value) and value >= least):
        raise ConfigError(f"{name} must be a finite number >= {least}, not {text}")
    return value


def marker_id(finalization_key: str) -> str:
    """The marker document of a finalization key (the key holds a ``/``)."""
    return hashlib.sha256(finalization_key.encode()).hexdigest()


class NextStage:
    """``on_complete``: start the next stage once per ``progress.finalization_key``.

    The manager runs ``on_complete`` at least once per finished batch: again, in this
    or another instance, if a run was cut short (crash, scale-in) before it returned.
    Each run looks for a marker document named after the key and does nothing if it
    exists. Otherwise it publishes one message to ``NEXT_STAGE_TOPIC`` (attributes
    ``batch_id`` and ``finalization_key``) and then creates the marker (create-if-absent).
    A run cut short between the two publishes again when it is rerun, with the same
    key: the next stage's consumer deduplicates on the ``finalization_key`` attribute.
    Without a topic the marker and a log line are the whole next stage.
    """

    def __init__(
        self,
        client: firestore.AsyncClient,
        markers: str,
        publisher: pubsub_v1.PublisherClient | None,
        topic: str | None,
        retain_for: dt.timedelta | None,
    ) -> None:
        self._client = client
        self._markers = markers
        self._publisher = publisher
        self._topic = topic
        self._retain_for = retain_for

    async def __call__(self, batch_id: str, progress: BatchProgress) -> None:
        """Start the next stage of ``batch_id`` unless this finalization already did."""
        key = progress.finalization_key or batch_id
        fields = {"batch_id": batch_id, "finalization_key": key}
        marker = self._client.collection(self._markers).document(marker_id(key))
        if (await marker.get()).exists:
            logger.info(
                "batch %s: next stage already started",
                batch_id,
                extra={"event": "next_stage_deduplicated", **fields},
            )
            return
        message_id = await self._publish(batch_id, key, progress)
        doc: dict[str, Any] = {**fields, "message_id": message_id}
        doc["started_at"] = firestore.SERVER_TIMESTAMP
        if self._retain_for is not None:
            doc["expire_at"] = dt.datetime.now(dt.UTC) + self._retain_for
        with contextlib.suppress(AlreadyExists):  # another run got here first: same key
            await marker.create(doc)
        logger.info(
            "batch %s complete: %d players, %d predictions; next stage started",
            batch_id,
            progress.completed_count,
            progress.total_predictions,
            extra={"event": "next_stage_started", "message_id": message_id, **fields},
        )

    async def _publish(self, batch_id: str, key: str, progress: BatchProgress) -> str | None:
        if self._publisher is None or self._topic is None:
            return None
        data = {
            "batch_id": batch_id,
            "finalization_key": key,
            "status": progress.status,
            "completed_count": progress.completed_count,
            "total_predictions": progress.total_predictions,
        }
        future = self._publisher.publish(
            self._topic,
            json.dumps(data).encode(),
            timeout=PUBLISH_TIMEOUT,
            batch_id=batch_id,
            finalization_key=key,
        )
        message_id = await asyncio.wait_for(asyncio.wrap_future(future), PUBLISH_TIMEOUT)
        return str(message_id)


class Coordinator:
    """The ASGI app: ``POST /pubsub`` (the push endpoint), ``GET /health``, and a lifespan.

    Startup reads ``Settings.from_env``, opens the Firestore client, the manager and the
    endpoint; a configuration error fails the startup, so uvicorn exits (status 3) and
    Cloud Run keeps the previous revision serving. Shutdown drains the endpoint and
    closes the manager within ``shutdown_budget``.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._status: Literal["starting", "serving", "draining", "stopped"] = "starting"
        self._endpoint: PushEndpoint | None = None
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._settings: Settings | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        token = trace_context(parse_trace(scope.get("headers", ())))
        try:
            path = scope.get("path", "")
            if path == PUSH_PATH and self._endpoint is not None:
                await self._endpoint(scope, receive, send)
            elif path == PUSH_PATH:
                await _answer(send, 503, {"error": "starting"})
            elif path == HEALTH_PATH:
                await self._health(scope, send)
            else:
                await _answer(send, 404, {"error": "not found"})
        finally:
            reset_trace(token)

    async def _health(self, scope: Scope, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await _answer(send, 405, {"error": "GET only"})
            return
        body: dict[str, Any] = {"status": self._status}
        if self._settings is not None:
            body["mode"] = self._settings.mode.name
        if self._endpoint is not None:
            body["stats"] = dataclasses.asdict(self._endpoint.stats())
        await _answer(send, 200 if self._status == "serving" else 503, body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:  # the reason in the log; uvicorn exits (status 3)
                    trace = not isinstance(exc, ConfigError)
                    logger.critical("startup failed: %s", exc, exc_info=trace)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        settings = Settings.from_env(os.environ if self._env is None else self._env)
        logging.getLogger().setLevel(settings.log_level)
        client = firestore.AsyncClient()
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or client.project
        set_project(project)
        topic: str | None = None
        if settings.next_stage_topic:
            self._publisher = pubsub_v1.PublisherClient()
            topic = settings.next_stage_topic
            if "/" not in topic:
                topic = self._publisher.topic_path(project, topic)
        retain_for = dt.timedelta(days=settings.retain_days) if settings.retain_days else None
        manager = AsyncBatchStateManager(
            client,
            collection=settings.collection,
            completions_subcollection=settings.completions_subcollection,
            mode=settings.mode,
            on_complete=NextStage(
                client, settings.stage_markers, self._publisher, topic, retain_for
            ),
            retain_for=retain_for,
            document_write_rate=settings.document_write_rate,
        )
        auth = None
        if settings.push_auth == "oidc":
            assert settings.push_audience is not None  # from_env checked it
            auth = PushAuth(
                audience=settings.push_audience,
                service_account_email=settings.push_service_account,
            )
        else:
            logger.warning(
                "PUSH_AUTH=none: push requests are not authenticated (for the emulator; "
                "in production only behind Cloud Run's IAM check, --no-allow-unauthenticated)"
            )
        self._endpoint = PushEndpoint(
            manager,
            max_concurrency=settings.max_concurrency,
            poison="nack",  # the subscription's dead-letter topic takes it
            auth=auth,
            timeout=settings.record_timeout,
            shutdown_budget=settings.shutdown_budget,
        )
        self._settings = settings
        self._status = "serving"
        logger.info(
            "coordinator serving: mode %s, collection %s",
            settings.mode.name,
            settings.collection,
            extra={
                "event": "serving",
                "mode": settings.mode.name,
                "collection": settings.collection,
                "push_auth": settings.push_auth,
                "max_concurrency": settings.max_concurrency,
                "record_timeout": settings.record_timeout,
                "next_stage_topic": topic,
                "project": project,
            },
        )

    async def _stop(self) -> None:
        self._status = "draining"
        loop = asyncio.get_running_loop()
        started = loop.time()
        cut = 0
        if self._endpoint is not None and self._settings is not None:
            # Drain what uvicorn's graceful wait left, then close the manager (its
            # callbacks still running are cancelled and stay owed): within the budget.
            cut = await self._endpoint.shutdown(self._settings.shutdown_budget)
        if self._publisher is not None:
            # Nothing is left to flush (a callback awaits its publish), so this is quick;
            # a daemon thread so that a stuck flush cannot hold the exit.
            stopper = threading.Thread(target=self._publisher.stop, daemon=True)
            stopper.start()
            await asyncio.to_thread(stopper.join, 0.5)
        self._status = "stopped"
        logger.info(
            "coordinator stopped after %.2f s (%d deliveries cut short, left for redelivery)",
            loop.time() - started,
            cut,
            extra={"event": "stopped", "cut_short": cut},
        )


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


app = Coordinator()
