"""A Pub/Sub push endpoint as a plain ASGI app: answers 2xx only after the write is confirmed."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import math
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .._clock import SYSTEM_CLOCK, Clock
from .._errors import BatchStateError, InvalidInputError
from .._store.ids import validate_seconds
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
from ._messages import (
    Action,
    Parser,
    PoisonPolicy,
    UnknownBatchPolicy,
    _clip,
    json_nesting_within,
    parse_json,
)

__all__ = ["GOOGLE_CERTS_URL", "PushAuth", "PushAuthError", "PushEndpoint"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[dict[str, Any]], Awaitable[None]]  # takes Starlette's (MutableMapping) too

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
"""Where Google publishes the certificates that sign push requests' OIDC tokens."""

_GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
_MAX_BODY = 16 * 1024 * 1024  # a 10 MB message, base64-encoded, in its JSON envelope
_MAX_TOKEN = 8 * 1024  # Google's push tokens are about 1 KB
_TOKEN_JSON_DEPTH = 8  # their header and claims are flat objects
_ENVELOPE_JSON_DEPTH = 8  # {"message": {"attributes": {...}}}: 3 levels
_MAX_CERTS = 1024 * 1024  # the certificate response Google sends is ~4 KB
_MAX_PUBLISH_TIME = 64
_ALGORITHM = "RS256"  # what Google signs push tokens with
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_AGE = re.compile(r"max-age\s*=\s*\"?(\d{1,10})\"?")


class PushAuthError(BatchStateError):
    """A push request's OIDC token is missing or wrong (answered 401 or 403).

    ``status`` is 503 when the certificates to check it against cannot be fetched.
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PushAuth:
    """Verify the OIDC token that an authenticated push subscription sends.

    The ``Authorization: Bearer`` token must be at most 8 KiB, an RS256 JWT whose
    header names a string ``kid`` found at ``certs_url`` (no ``crit``; ``typ``, if
    any, ``"JWT"``; other header fields such as ``jku`` or ``x5u`` are never
    followed), signed by that certificate, with numeric ``iat`` and ``exp``
    (and ``nbf``, if any) that hold within ``clock_skew`` (else 401). Then it
    must carry the string ``aud`` equal to ``audience``, a string ``iss`` among
    ``issuers`` and, when ``service_account_email`` is given, the string
    ``email`` equal to it with ``email_verified`` the JSON boolean ``true``
    (else 403): claims are compared by type and value, never by truthiness.
    Nothing is written for a refused request.

    Certificates are cached for the lifetime the response gives
    (``Cache-Control: max-age``, less ``Age``), else ``certs_ttl``. A token
    whose ``kid`` is not cached refetches them, but at most one fetch is in
    flight and fetches start at least ``certs_min_interval`` apart, so forged
    key ids cannot make the endpoint fetch more often than that (a token for a
    key published since is refused 401 until then; Pub/Sub redelivers it).

    Attributes:
        audience: The subscription's push audience (by default the endpoint URL).
        service_account_email: The push subscription's service account; None accepts any.
        issuers: Accepted ``iss`` values.
        certs_url: JSON map of key id to PEM certificate (Google's by default;
            tests point it at a local server).
        certs_ttl: Seconds the certificates are cached when the response gives no
            ``max-age`` (default 300).
        certs_min_interval: Least seconds between two certificate fetches (default 30).
        certs_timeout: Seconds one certificate fetch may take (default 5).
        clock_skew: Seconds of leeway on ``iat``, ``nbf`` and ``exp`` (default 10).

    Raises:
        InvalidInputError: A duration that is negative or not a number.
    """

    audience: str
    service_account_email: str | None = None
    issuers: tuple[str, ...] = _GOOGLE_ISSUERS
    certs_url: str = GOOGLE_CERTS_URL
    certs_ttl: float = 300.0
    certs_min_interval: float = 30.0
    certs_timeout: float = 5.0
    clock_skew: int = 10

    def __post_init__(self) -> None:
        for name in ("certs_ttl", "certs_min_interval", "certs_timeout", "clock_skew"):
            validate_seconds(name, getattr(self, name))
        if self.certs_timeout <= 0:
            raise InvalidInputError("certs_timeout must be > 0")


class _Certificates:
    """The certificate map: cached for its lifetime, refetched at most once per interval.

    One fetch at a time (every request that needs it waits for the same one),
    started only if ``certs_min_interval`` has passed since the last one began,
    whatever its outcome. Old certificates serve while a refresh is not allowed
    or fails; with none at all, a request is answered 503 (not the sender's fault).
    """

    def __init__(self, auth: PushAuth, clock: Clock) -> None:
        self._auth = auth
        self._clock = clock
        self._certs: dict[str, str] = {}
        self._expires = -math.inf
        self._started = -math.inf
        self._refresh: asyncio.Task[None] | None = None
        self.fetches = 0

    async def get(self, kid: str) -> dict[str, str]:
        """The certificates, refreshed first if stale or without ``kid`` (when allowed).

        Raises:
            PushAuthError: (503) No certificates at all: the fetch failed or is not
                allowed yet.
        """
        now = self._clock.monotonic()
        if kid in self._certs and now < self._expires:
            return self._certs
        refresh = self._refresh
        if refresh is None and now - self._started >= self._auth.certs_min_interval:
            self._started = now
            refresh = self._refresh = asyncio.get_running_loop().create_task(self._fetch())
        if refresh is not None:
            await asyncio.shield(refresh)  # a request cancelled meanwhile leaves it to others
        if not self._certs:
            raise PushAuthError("no certificates to check the token against", status=503)
        return self._certs

    async def _fetch(self) -> None:
        auth = self._auth
        self.fetches += 1
        try:
            certs, lifetime = await asyncio.to_thread(
                _fetch_certs, auth.certs_url, auth.certs_timeout
            )
        except Exception as exc:  # any failure keeps the old certificates
            logger.warning("cannot fetch push certificates from %s: %r", auth.certs_url, exc)
            return
        finally:
            self._refresh = None
        self._certs = certs
        ttl = auth.certs_ttl if lifetime is None else lifetime
        self._expires = self._clock.monotonic() + ttl


def _fetch_certs(url: str, timeout: float) -> tuple[dict[str, str], float | None]:
    """``{kid: PEM}`` from ``url`` and the lifetime its ``Cache-Control`` gives (None: none)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        raw = response.read(_MAX_CERTS + 1)
        cache_control = response.headers.get("Cache-Control") or ""
        age = response.headers.get("Age") or ""
    if len(raw) > _MAX_CERTS or not json_nesting_within(raw, 2):
        raise ValueError(f"{url} did not return a small flat JSON object")
    body = json.loads(raw)
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise ValueError(f"{url} did not return a JSON object of PEM strings")
    return dict(body), _lifetime(cache_control, age)


def _lifetime(cache_control: str, age: str) -> float | None:
    """Seconds a response may be cached: ``max-age`` less ``Age``; 0 for no-store/no-cache."""
    directives = cache_control.lower()
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    found = _MAX_AGE.search(directives)
    if found is None:
        return None
    elapsed = int(age) if age.strip().isdigit() and len(age.strip()) <= 10 else 0
    return float(max(0, int(found.group(1)) - elapsed))


class _TokenVerifier:
    """``PushAuth`` applied: a bounded parse first, then google-auth's signature check."""

    def __init__(self, auth: PushAuth, clock: Clock) -> None:
        try:
            from google.auth import jwt
        except ImportError as exc:  # pragma: no cover - the extra installs it
            raise ImportError(
                "push authentication needs google-auth: pip install 'async-batchstate[pubsub]'"
            ) from exc
        self._jwt: Any = jwt  # google-auth is partly untyped
        self._auth = auth
        self.certificates = _Certificates(auth, clock)

    async def verify(self, authorization: str | None) -> None:
        """Raise ``PushAuthError`` unless ``authorization`` carries an acceptable token."""
        token = _bearer(authorization)
        segments = token.split(".")
        if len(segments) != 3:
            raise PushAuthError("malformed token: not three segments", status=401)
        header = _jose_object(segments[0], "header")
        claims = _jose_object(segments[1], "claims")
        alg, kid = header.get("alg"), header.get("kid")
        if not (isinstance(alg, str) and alg == _ALGORITHM):
            raise PushAuthError(f"token refused: alg must be {_ALGORITHM}", status=401)
        if not (isinstance(kid, str) and kid):
            raise PushAuthError("token refused: no string key id", status=401)
        if "crit" in header:  # extensions the verifier must understand: none are
            raise PushAuthError("token refused: crit header", status=401)
        if "typ" in header and not (isinstance(header["typ"], str) and header["typ"] == "JWT"):
            raise PushAuthError("token refused: typ is not JWT", status=401)
        certs = await self.certificates.get(kid)
        if kid not in certs:
            raise PushAuthError("token refused: unknown key id", status=401)
        try:
            self._jwt.decode(
                token,
                certs={kid: certs[kid]},
                verify=True,
                clock_skew_in_seconds=self._auth.clock_skew,
            )
        except Exception as exc:  # bad signature, expiry: whatever google-auth says
            raise PushAuthError(
                f"token refused: {type(exc).__name__}: {_clip(str(exc))}", status=401
            ) from None
        _check_times(claims, self._auth.clock_skew, time.time())
        _check_identity(claims, self._auth)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise PushAuthError("no bearer token", status=401)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise PushAuthError("no bearer token", status=401)
    token = token.strip()
    if len(token) > _MAX_TOKEN:
        raise PushAuthError(f"token refused: over {_MAX_TOKEN} characters", status=401)
    return token


def _jose_object(segment: str, what: str) -> dict[str, Any]:
    """One decoded JWT segment, parsed only once it is known small and shallow."""
    if not _BASE64URL.fullmatch(segment):
        raise PushAuthError(f"malformed token: {what} is not base64url", status=401)
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise PushAuthError(f"malformed token: {what} is not base64url", status=401) from None
    if not json_nesting_within(raw, _TOKEN_JSON_DEPTH):
        raise PushAuthError(f"malformed token: {what} nested too deeply", status=401)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise PushAuthError(f"malformed token: {what} is not JSON", status=401) from None
    if not isinstance(value, dict):
        raise PushAuthError(f"malformed token: {what} is not a JSON object", status=401)
    return value


def _numeric(claims: dict[str, Any], name: str) -> int | float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PushAuthError(f"token refused: {name} is not a number", status=401)
    if isinstance(value, float) and not math.isfinite(value):
        raise PushAuthError(f"token refused: {name} is not finite", status=401)
    return value


def _check_times(claims: dict[str, Any], skew: int, now: float) -> None:
    """``iat``, ``exp`` and any ``nbf``: JSON numbers (not booleans) that hold now."""
    for name in ("iat", "exp"):
        if name not in claims:
            raise PushAuthError(f"token refused: no {name}", status=401)
    if _numeric(claims, "exp") < now - skew:
        raise PushAuthError("token refused: expired", status=401)
    if _numeric(claims, "iat") > now + skew:
        raise PushAuthError("token refused: issued in the future", status=401)
    if "nbf" in claims and _numeric(claims, "nbf") > now + skew:
        raise PushAuthError("token refused: not valid yet", status=401)


def _check_identity(claims: dict[str, Any], auth: PushAuth) -> None:
    """``aud``, ``iss`` and the service account, each by type and value (403)."""
    aud, iss = claims.get("aud"), claims.get("iss")
    if not (isinstance(aud, str) and aud == auth.audience):
        raise PushAuthError("token refused: wrong audience", status=403)
    if not (isinstance(iss, str) and iss in auth.issuers):
        raise PushAuthError("token refused: wrong issuer", status=403)
    if auth.service_account_email is None:
        return
    email = claims.get("email")
    if not (isinstance(email, str) and email == auth.service_account_email):
        raise PushAuthError("token refused: wrong service account", status=403)
    if claims.get("email_verified") is not True:  # the JSON boolean, not "true" or 1
        raise PushAuthError("token refused: email_verified is not true", status=403)


@dataclass(frozen=True, slots=True)
class _Envelope:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: float | None


def decode_envelope(body: bytes) -> _Envelope:
    """The message of a push request body (``{"message": {...}, "subscription": ...}``).

    Checked by type: ``message`` an object, ``data`` a base64 string (absent:
    empty), ``messageId`` a string, ``attributes`` an object of strings,
    ``publishTime`` an RFC 3339 timestamp with an offset (absent: unknown, the
    message's age then counts as 0). JSON nested more than 8 deep is refused
    before it is parsed. Other fields (``subscription``, ``deliveryAttempt``) are
    not read.

    Raises:
        InvalidInputError: Not a push envelope (answered 400).
    """
    if not json_nesting_within(body, _ENVELOPE_JSON_DEPTH):
        raise InvalidInputError("not a Pub/Sub push envelope: JSON nested too deeply")
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"not a Pub/Sub push envelope: {_clip(str(exc))}") from None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise InvalidInputError("not a Pub/Sub push envelope: no message object")
    encoded = message.get("data", "")
    if not isinstance(encoded, str):
        raise InvalidInputError("not a Pub/Sub push envelope: data is not a string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("not a Pub/Sub push envelope: data is not base64") from None
    message_id = message.get("messageId", message.get("message_id", ""))
    if not isinstance(message_id, str):
        raise InvalidInputError("not a Pub/Sub push envelope: messageId is not a string")
    attributes = message.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise InvalidInputError("not a Pub/Sub push envelope: attributes are not strings")
    published = message.get("publishTime", message.get("publish_time"))
    publish_time = None if published is None else _rfc3339(published)
    return _Envelope(message_id, data, attributes, publish_time)


def _rfc3339(text: object) -> float:
    if not isinstance(text, str) or len(text) > _MAX_PUBLISH_TIME:
        raise InvalidInputError("not a Pub/Sub push envelope: publishTime is not a timestamp")
    # Pub/Sub sends up to nanoseconds; fromisoformat takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        published = dt.datetime.fromisoformat(text)
        if published.tzinfo is None:
            raise ValueError("no UTC offset")
        return published.timestamp()
    except (ValueError, OverflowError, OSError):
        raise InvalidInputError(
            "not a Pub/Sub push envelope: publishTime is not an RFC 3339 timestamp"
        ) from None


class PushEndpoint:
    """An ASGI app for a Pub/Sub push subscription; needs no web framework.

        endpoint = PushEndpoint(manager, auth=PushAuth(audience="https://svc.run.app/push"))
        # uvicorn module:endpoint, or Starlette: Mount("/push", app=endpoint)

    Every POST is one push delivery; the path, query and content type are not
    checked. In order: authentication (``auth``: it takes no concurrency slot,
    so unauthenticated requests cannot crowd out authenticated ones), the
    concurrency bound, the body (16 MiB at most), the envelope, then the
    completion. Answers:

    - 200 once the completion is written (RECORDED, DUPLICATE or LATE): Pub/Sub acks.
    - 503 on a retryable failure of the write (``RetryExhaustedError``,
      ``CompletionTimeoutError``, ``WriteFailedError``, ``ManagerClosedError``) and
      while draining: redelivered with the subscription's backoff.
    - 425 when the batch does not exist yet (see ``UnknownBatchPolicy``).
    - 429 when ``max_concurrency`` deliveries are in flight already.
    - Poison (data that ``parse`` refuses, whatever it raises; ``InvalidInputError``;
      an unknown batch past the grace): 200 under ``poison="ack"``, 422 under
      ``poison="nack"``.
    - 400 for a body that is not a push envelope, 401/403 for refused authentication
      (503 if no certificates can be fetched), 405 for another method, 413 for a
      body over 16 MiB. Nothing is written for any of these.
    - 503 too for a request the server cancels (uvicorn at its
      ``--timeout-graceful-shutdown``): its write is cut short with it.
    - 500 only for a bug of this library: no exception leaves the app.

    Poison policy trade-off: ``"ack"`` drops the message after a warning log, the
    ``on_poison`` hook and ``stats().poison``; nothing else keeps it, so keep it
    in the hook if you need it. ``"nack"`` keeps it in Pub/Sub: configure a
    dead-letter topic with ``max_delivery_attempts`` on the subscription, else it
    is redelivered until the retention period ends.

    Timing: a delivery is answered within ``timeout`` (10 s) of its write
    starting; authentication adds at most one certificate fetch
    (``PushAuth.certs_timeout``, 5 s). Give the subscription an ack deadline of
    at least their sum plus a margin: 20 s. An answer later than the ack
    deadline is redelivered, which is safe (a DUPLICATE) but wasted work.

    Args:
        manager: The open manager that records completions.
        parse: ``parse(data, attributes) -> Completion`` (default: ``parse_json``).
        poison: ``"ack"`` or ``"nack"`` (default), see above.
        max_concurrency: Most deliveries in flight; more are answered 429 at once.
        auth: Verify the push OIDC token; None (default) accepts every request
            (only behind a private ingress).
        unknown_batch: How long a completion for an unknown batch is retried.
        on_poison: Called with each ``PoisonMessage`` (sync or async).
        timeout: ``record_completion``'s timeout in seconds (default 10); None: the
            manager's retry deadline.
        shutdown_budget: Seconds the ASGI lifespan shutdown may take: ``shutdown()``,
            i.e. drain what is left and close the manager (default 2). Under
            uvicorn it follows ``--timeout-graceful-shutdown``, so the two add up to
            the time from SIGTERM: 6 + 2 = 8 s, inside Cloud Run's 10.
        clock: Time source of the certificate cache (inject ``testing.FakeClock``).

    Raises:
        InvalidInputError: ``poison``, ``max_concurrency`` or ``shutdown_budget`` out of range.
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
        timeout: float | None = DELIVERY_TIMEOUT,
        shutdown_budget: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
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
        self._verifier = _TokenVerifier(auth, clock) if auth is not None else None
        self._shutdown_budget = validate_seconds("shutdown_budget", shutdown_budget)
        self._active = 0

    def stats(self) -> AdapterStats:
        """A snapshot of the endpoint's counters."""
        return self._processor.stats()

    @property
    def certificate_fetches(self) -> int:
        """Certificate fetches started so far (0 without ``auth``)."""
        return 0 if self._verifier is None else self._verifier.certificates.fetches

    async def drain(self, grace: float = SHUTDOWN_BUDGET) -> int:
        """Answer 503 to new requests; finish those in flight within ``grace`` seconds.

        Requests still unfinished after the grace are answered 503 (their write
        committed whole or not at all; the redelivery is safe).

        Returns:
            How many requests were cut short.
        """
        return await self._processor.drain(grace)

    async def shutdown(self, budget: float = SHUTDOWN_BUDGET) -> int:
        """Drain, then close the manager: all within ``budget`` seconds from the call.

        What ``drain_on_sigterm`` and the ASGI lifespan shutdown run. The drain
        takes what it needs of the budget; the manager's close gets the rest (its
        writes still queued or in flight then get ``ManagerClosedError``, its
        callbacks still running are cancelled and stay owed).

        Returns:
            How many requests the drain cut short.
        """
        return await self._processor.shutdown(budget, self.drain)

    def __repr__(self) -> str:
        s = self.stats()
        state = "accepting" if self._processor.accepting else "draining"
        return (
            f"<PushEndpoint {state} in_flight={self._active}/{self._max_concurrency} "
            f"acked={s.acked} retried={s.retried} poison={s.poison}>"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http``; ``lifespan`` shutdown runs ``shutdown``)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        try:
            status, body = await self._handle(scope, receive)
        except asyncio.CancelledError:
            # The server gave up on the request (uvicorn at --timeout-graceful-shutdown)
            # and its write was cut short with it: answer 503 (redeliver), not a traceback.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._processor.counts["retried"] += 1
            status, body = 503, {"error": "cut short by the server's shutdown, redeliver"}
        except Exception:  # a bug here, not the request: still an answer, never a crash
            logger.exception("push request failed unexpectedly")
            status, body = 500, {"error": "internal error"}
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
                await self.shutdown(self._shutdown_budget)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if scope.get("method") != "POST":
            return 405, {"error": "push deliveries are POSTs"}
        processor = self._processor
        if not processor.accepting:
            return 503, {"error": "draining"}
        if self._verifier is not None:
            # Before a slot is taken: forged requests must not crowd out real ones.
            try:
                await self._verifier.verify(_header(scope, b"authorization"))
            except PushAuthError as exc:
                processor.counts["unauthorized"] += exc.status != 503
                logger.warning("push request refused: %s", exc, extra={"status": exc.status})
                return exc.status, {"error": str(exc)}
        if self._active >= self._max_concurrency:
            processor.counts["saturated"] += 1
            return 429, {"error": "saturated"}
        self._active += 1  # from here to the answer: reading the body counts too
        try:
            return await self._admitted(receive)
        finally:
            self._active -= 1

    async def _admitted(self, receive: Receive) -> tuple[int, dict[str, Any]]:
        processor = self._processor
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
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            # The server gave up on this request: cut its write short too (then 503).
            task.cancel()
            await asyncio.wait({task})
            raise
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
        if bytes(key).lower() == name:
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
