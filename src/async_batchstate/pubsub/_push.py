"""A Pub/Sub push endpoint as a plain ASGI app: answers 2xx only after the write is confirmed."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .._errors import BatchStateError, InvalidInputError
from .._write.manager import AsyncBatchStateManager
from ._core import AdapterStats, PoisonHook, Processor, logger, positive_int
from ._messages import Action, Parser, PoisonPolicy, UnknownBatchPolicy, parse_json

__all__ = ["GOOGLE_CERTS_URL", "PushAuth", "PushAuthError", "PushEndpoint"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[dict[str, Any]], Awaitable[None]]  # takes Starlette's (MutableMapping) too

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
"""Where Google publishes the certificates that sign push requests' OIDC tokens."""

_GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
_MAX_BODY = 16 * 1024 * 1024  # a 10 MB message, base64-encoded, in its JSON envelope


class PushAuthError(BatchStateError):
    """A push request's OIDC token is missing or wrong (answered 401 or 403)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PushAuth:
    """Verify the OIDC token that an authenticated push subscription sends.

    The ``Authorization: Bearer`` token must be signed by one of the certificates
    at ``certs_url`` and not expired (else 401), and carry this ``audience``, one
    of ``issuers`` and, when given, the ``service_account_email`` with
    ``email_verified`` (else 403). Nothing is written for a refused request.

    Attributes:
        audience: The subscription's push audience (by default the endpoint URL).
        service_account_email: The push subscription's service account; None accepts any.
        issuers: Accepted ``iss`` values.
        certs_url: JSON map of key id to PEM certificate (Google's by default;
            tests point it at a local server).
        certs_ttl: Seconds the certificates are cached (an unknown key id refetches).
        clock_skew: Seconds of leeway on ``iat``/``exp``.
    """

    audience: str
    service_account_email: str | None = None
    issuers: tuple[str, ...] = _GOOGLE_ISSUERS
    certs_url: str = GOOGLE_CERTS_URL
    certs_ttl: float = 300.0
    clock_skew: int = 10


class _TokenVerifier:
    """``PushAuth`` applied with google-auth, certificates cached and fetched off the loop."""

    def __init__(self, auth: PushAuth) -> None:
        try:
            from google.auth import jwt
        except ImportError as exc:  # pragma: no cover - the extra installs it
            raise ImportError(
                "push authentication needs google-auth: pip install 'async-batchstate[pubsub]'"
            ) from exc
        self._jwt: Any = jwt  # google-auth is partly untyped
        self._auth = auth
        self._certs: dict[str, str] = {}
        self._fetched = -float("inf")
        self._lock = asyncio.Lock()

    async def verify(self, header: str | None) -> None:
        """Raise ``PushAuthError`` unless ``header`` carries an acceptable token."""
        if not header or not header.startswith("Bearer "):
            raise PushAuthError("no bearer token", status=401)
        token = header.removeprefix("Bearer ").strip()
        try:
            kid = self._jwt.decode_header(token).get("kid")
        except (ValueError, TypeError) as exc:
            raise PushAuthError(f"malformed token: {exc}", status=401) from exc
        certs = await self._certificates(refresh=False)
        if kid not in certs:
            certs = await self._certificates(refresh=True)
        try:
            claims = self._jwt.decode(
                token, certs=certs, verify=True, clock_skew_in_seconds=self._auth.clock_skew
            )
        except (ValueError, TypeError) as exc:  # bad signature, expired, unknown key
            raise PushAuthError(f"token refused: {exc}", status=401) from exc
        auth = self._auth
        if claims.get("aud") != auth.audience:
            raise PushAuthError(f"wrong audience {claims.get('aud')!r}", status=403)
        if claims.get("iss") not in auth.issuers:
            raise PushAuthError(f"wrong issuer {claims.get('iss')!r}", status=403)
        if auth.service_account_email is not None and (
            claims.get("email") != auth.service_account_email or not claims.get("email_verified")
        ):
            raise PushAuthError(f"wrong service account {claims.get('email')!r}", status=403)

    async def _certificates(self, *, refresh: bool) -> dict[str, str]:
        async with self._lock:
            fresh = time.monotonic() - self._fetched < self._auth.certs_ttl
            if self._certs and fresh and not refresh:
                return self._certs
            try:
                self._certs = await asyncio.to_thread(_fetch_json, self._auth.certs_url)
            except (OSError, ValueError) as exc:
                # Not the caller's fault: a non-2xx that Pub/Sub retries, unless we have old certs.
                if not self._certs:
                    raise PushAuthError(f"cannot fetch certificates: {exc}", status=503) from exc
                logger.warning("cannot refresh push certificates: %s", exc)
            self._fetched = time.monotonic()
            return self._certs


def _fetch_json(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    if not isinstance(body, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return {str(k): str(v) for k, v in body.items()}


@dataclass(frozen=True, slots=True)
class _Envelope:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: float | None


def decode_envelope(body: bytes) -> _Envelope:
    """The message of a push request body (``{"message": {...}, "subscription": ...}``).

    Raises:
        InvalidInputError: Not a push envelope (answered 400).
    """
    try:
        envelope = json.loads(body)
        message = envelope["message"]
        data = base64.b64decode(message.get("data", ""), validate=True)
        message_id = str(message.get("messageId") or message.get("message_id") or "")
        attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
        published = message.get("publishTime") or message.get("publish_time")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise InvalidInputError(f"not a Pub/Sub push envelope: {exc!r}") from exc
    return _Envelope(message_id, data, attributes, _rfc3339(published))


def _rfc3339(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    # Pub/Sub sends up to nanoseconds; fromisoformat takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class PushEndpoint:
    """An ASGI app for a Pub/Sub push subscription; needs no web framework.

        endpoint = PushEndpoint(manager, auth=PushAuth(audience="https://svc.run.app/push"))
        # uvicorn module:endpoint, or Starlette: Mount("/push", app=endpoint)

    Every POST is one push delivery. Answers:

    - 200 once the completion is written (RECORDED, DUPLICATE or LATE): Pub/Sub acks.
    - 503 on a retryable failure (``RetryExhaustedError``, ``CompletionTimeoutError``,
      ``WriteFailedError``, ``ManagerClosedError``) and while draining: redelivered with
      the subscription's backoff.
    - 425 when the batch does not exist yet (see ``UnknownBatchPolicy``).
    - 429 when ``max_concurrency`` deliveries are in flight already.
    - Poison (unparsable data, ``InvalidInputError``, an unknown batch past the grace):
      200 under ``poison="ack"``, 422 under ``poison="nack"``.
    - 400 for a body that is not a push envelope, 401/403 for refused authentication,
      405 for another method. Nothing is written for any of these.

    Poison policy trade-off: ``"ack"`` drops the message after a warning log, the
    ``on_poison`` hook and ``stats().poison``; nothing else keeps it, so keep it
    in the hook if you need it. ``"nack"`` keeps it in Pub/Sub: configure a
    dead-letter topic with ``max_delivery_attempts`` on the subscription, else it
    is redelivered until the retention period ends.

    Keep the subscription's ack deadline above the manager's retry deadline (10 s
    by default each): an answer slower than the ack deadline is redelivered,
    which is safe (a DUPLICATE) but wasted work.

    Args:
        manager: The open manager that records completions.
        parse: ``parse(data, attributes) -> Completion`` (default: ``parse_json``).
        poison: ``"ack"`` or ``"nack"`` (default), see above.
        max_concurrency: Most deliveries in flight; more are answered 429 at once.
        auth: Verify the push OIDC token; None (default) accepts every request
            (only behind a private ingress).
        unknown_batch: How long a completion for an unknown batch is retried.
        on_poison: Called with each ``PoisonMessage`` (sync or async).
        timeout: ``record_completion``'s timeout (default: the manager's retry deadline).

    Raises:
        InvalidInputError: ``poison`` or ``max_concurrency`` out of range.
    """

    def __init__(
        self,
        manager: AsyncBatchStateManager,
        *,
        parse: Parser = parse_json,
        poison: PoisonPolicy = "nack",
        max_concurrency: int = 100,
        auth: PushAuth | None = None,
        unknown_batch: UnknownBatchPolicy | None = None,
        on_poison: PoisonHook | None = None,
        timeout: float | None = None,
    ) -> None:
        positive_int("max_concurrency", max_concurrency)
        self._processor = Processor(
            manager,
            parse=parse,
            poison=poison,
            unknown_batch=unknown_batch,
            on_poison=on_poison,
            timeout=timeout,
        )
        self._max_concurrency = max_concurrency
        self._verifier = _TokenVerifier(auth) if auth is not None else None
        self._shutdown_grace = 8.0
        self._active = 0

    def stats(self) -> AdapterStats:
        """A snapshot of the endpoint's counters."""
        return self._processor.stats()

    async def drain(self, grace: float = 8.0) -> int:
        """Answer 503 to new requests; finish those in flight within ``grace`` seconds.

        Requests still unfinished after the grace are answered 503 (their write
        committed whole or not at all; the redelivery is safe).

        Returns:
            How many requests were cut short.
        """
        return await self._processor.drain(grace)

    def __repr__(self) -> str:
        s = self.stats()
        state = "accepting" if self._processor.accepting else "draining"
        return (
            f"<PushEndpoint {state} in_flight={self._active}/{self._max_concurrency} "
            f"acked={s.acked} retried={s.retried} poison={s.poison}>"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http``; ``lifespan`` shutdown drains)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body = await self._handle(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.drain(self._shutdown_grace)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if scope.get("method") != "POST":
            return 405, {"error": "push deliveries are POSTs"}
        processor = self._processor
        if not processor.accepting:
            return 503, {"error": "draining"}
        if self._active >= self._max_concurrency:
            processor.counts["saturated"] += 1
            return 429, {"error": "saturated"}
        self._active += 1  # from here to the answer: authentication and reading count too
        try:
            return await self._admitted(scope, receive)
        finally:
            self._active -= 1

    async def _admitted(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        processor = self._processor
        if self._verifier is not None:
            try:
                await self._verifier.verify(_header(scope, b"authorization"))
            except PushAuthError as exc:
                processor.counts["unauthorized"] += exc.status != 503
                logger.warning("push request refused: %s", exc, extra={"status": exc.status})
                return exc.status, {"error": str(exc)}
        body = await _read_body(receive)
        if body is None:
            return 413, {"error": "body too large"}
        try:
            envelope = decode_envelope(body)
        except InvalidInputError as exc:
            return 400, {"error": str(exc)}
        if not processor.accepting:  # a drain began while we read
            return 503, {"error": "draining"}
        task = processor.track(
            processor.process(
                envelope.message_id, envelope.data, envelope.attributes, envelope.publish_time
            )
        )
        await asyncio.wait({task})
        if task.cancelled():
            processor.counts["retried"] += 1
            return 503, {"error": "draining: cut short, redeliver"}
        decision = task.result()
        if decision.action is Action.ACK:
            return 200, {"status": decision.reason}
        if decision.action is Action.RETRY:
            return 503, {"error": decision.reason}
        if decision.action is Action.DELAY:
            return 425, {"error": decision.reason, "retry_after": decision.delay}
        if processor.poison == "ack":
            return 200, {"status": "poison", "reason": decision.reason}
        return 422, {"error": decision.reason, "status": "poison"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
