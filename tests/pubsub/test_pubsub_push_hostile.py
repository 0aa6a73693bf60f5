"""The push endpoint at a hostile edge: tables of tokens, envelopes and message data.

Every request gets a deliberate answer (never an exception out of the app, never a
500): 401/403 for tokens by rule, 400 for envelopes, 413 for size, poison for data.
The tables put every JSON type (nested, deep, oversized) in every place a sender
controls; the expected answer of each entry is computed from the rule it tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from async_batchstate import AsyncBatchStateManager
from async_batchstate.pubsub import Completion, PushAuth, PushEndpoint
from async_batchstate.testing import LoopbackAsgiServer

from ..helpers import ManagerFactory
from ..pubsub_helpers import payload
from ._push_kit import (
    AUDIENCE,
    EMAIL,
    KID,
    OTHER_PRIVATE,
    CertsApp,
    asgi_call,
    b64,
    envelope,
    good_claims,
    http_post,
    raw_token,
    token,
    uvicorn_serving,
)

DEEP = 100_000
ABSENT = object()
"""A table value meaning: leave the field out."""


class Raw:
    """A JSON text spliced in as a value (nesting json.dumps could not build)."""

    def __init__(self, text: str, depth: int) -> None:
        self.text = text
        self.depth = depth


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# Every JSON type, nested a little, nested past the bounds, and oversized.
VALUES: dict[str, Any] = {
    "absent": ABSENT,
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "minus-one": -1,
    "int64": 2**63,
    "big-int": 10**300,
    "float": 1.5,
    "huge-float": 1e308,
    "empty-str": "",
    "str": "x",
    "str-true": "true",
    "str-false": "false",
    "str-number": "1700000000",
    "long-str": "a" * 10_000,
    "empty-list": [],
    "list": ["x", 1],
    "empty-object": {},
    "object": {"k": "v"},
    "nested-3": nested(3),
    "nested-9": nested(9),
    "deep-list": Raw("[" * DEEP + "]" * DEEP, DEEP),
    "deep-object": Raw('{"a":' * DEEP + "1" + "}" * DEEP, DEEP),
}


def depth(value: Any) -> int:
    """Nesting of arrays and objects in a table value."""
    if isinstance(value, Raw):
        return value.depth
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def dumps(obj: dict[str, Any]) -> str:
    """JSON of ``obj``: ABSENT fields left out and Raw values spliced in, at any depth."""
    fields = []
    for key, value in obj.items():
        if value is ABSENT:
            continue
        if isinstance(value, Raw):
            text = value.text
        elif isinstance(value, dict):
            text = dumps(value)
        else:
            text = json.dumps(value)
        fields.append(f"{json.dumps(key)}: {text}")
    return "{" + ", ".join(fields) + "}"


def with_value(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != field} | {field: value}


GOOD_HEADER = {"alg": "RS256", "kid": KID, "typ": "JWT"}
HEADER_FIELDS = [
    "alg", "kid", "typ", "cty", "crit", "jku", "jwk", "x5u", "x5c", "x5t", "zip", "b64", "other",
]  # fmt: skip
CLAIM_FIELDS = [
    "aud", "iss", "email", "email_verified", "exp", "iat", "nbf", "sub", "azp", "other",
]  # fmt: skip


def too_big(tok: str, parts: dict[str, Any]) -> bool:
    """Refused before parsing: over 8 KiB, or a segment nested past 8 levels."""
    return len(tok) > 8 * 1024 or any(1 + depth(v) > 8 for v in parts.values())


def header_expected(field: str, value: Any) -> int:
    """200 only for a header google-auth may check: alg RS256, our kid, typ JWT, no crit."""
    if field == "alg":
        return 200 if isinstance(value, str) and value == "RS256" else 401
    if field == "kid":
        return 200 if isinstance(value, str) and value == KID else 401
    if field == "typ":
        return 200 if value is ABSENT or (isinstance(value, str) and value == "JWT") else 401
    if field == "crit":
        return 200 if value is ABSENT else 401
    return 200


def is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def claim_expected(field: str, value: Any, now: float) -> int:
    """Time claims: JSON numbers that hold now (else 401); identity claims: type and value (403)."""
    if field == "exp":
        return 200 if is_number(value) and value >= now - 10 else 401
    if field == "iat":
        return 200 if is_number(value) and value <= now + 10 else 401
    if field == "nbf":
        return 200 if value is ABSENT or (is_number(value) and value <= now + 10) else 401
    if field == "aud":
        return 200 if isinstance(value, str) and value == AUDIENCE else 403
    if field == "iss":
        ok = isinstance(value, str) and value in PushAuth(AUDIENCE).issuers
        return 200 if ok else 403
    if field == "email":
        return 200 if isinstance(value, str) and value == EMAIL else 403
    if field == "email_verified":
        return 200 if value is True else 403
    return 200


def claim_values(field: str, now: int) -> dict[str, Any]:
    """The shared table plus the right value in and out of shape for ``field``."""
    right = good_claims().get(field, "x")
    extra: dict[str, Any] = {
        "right": right,
        "right-in-list": [right],
        "right-in-object": {field: right},
        "right-as-str": str(right),
        "now": now,
        "in-an-hour": now + 3600,
        "an-hour-ago": now - 3600,
    }
    if field == "email_verified":
        extra |= {"one": 1, "str-True": "True"}
    if field == "iss":
        extra |= {"other-google-form": "accounts.google.com", "evil": "https://evil.example"}
    return VALUES | extra


Case = tuple[str, str, int]  # (name, Authorization header, expected status)


def header_cases() -> Iterator[Case]:
    claims = dumps(good_claims())
    for field in HEADER_FIELDS:
        for name, value in VALUES.items():
            header = with_value(GOOD_HEADER, field, value)
            tok = raw_token(dumps(header), claims)
            expected = 401 if too_big(tok, header) else header_expected(field, value)
            yield f"header {field}={name}", f"Bearer {tok}", expected


def claim_cases() -> Iterator[Case]:
    now = int(time.time())
    header = dumps(GOOD_HEADER)
    for field in CLAIM_FIELDS:
        for name, value in claim_values(field, now).items():
            claims = with_value(good_claims(), field, value)
            tok = raw_token(header, dumps(claims))
            expected = 401 if too_big(tok, claims) else claim_expected(field, value, now)
            yield f"claim {field}={name}", f"Bearer {tok}", expected


def forged_cases() -> Iterator[Case]:
    """Every header and claim case unsigned, signed by another key, or with junk signatures."""
    other = token(OTHER_PRIVATE).rsplit(".", 1)[1]
    for name, authorization, _ in [*header_cases(), *claim_cases()]:
        signed = authorization.rsplit(".", 1)[0]
        for how, signature in [("unsigned", ""), ("junk", "AAAA"), ("other-key", other)]:
            yield f"{name} {how}", f"{signed}.{signature}", 401
    none = raw_token(dumps({"alg": "none", "kid": KID}), dumps(good_claims()), signature="")
    yield "alg none", f"Bearer {none}", 401


def authorization_cases() -> Iterator[tuple[str, str | None, int]]:
    """The Authorization header itself, every shape."""
    good = token()
    yield "missing", None, 401
    yield "empty", "", 401
    yield "scheme only", "Bearer", 401
    yield "scheme and space", "Bearer ", 401
    yield "lower-case scheme", f"bearer {good}", 200
    yield "basic", "Basic dXNlcjpwdw==", 401
    yield "two segments", "Bearer a.b", 401
    yield "four segments", f"Bearer {good}.x", 401
    yield "empty segments", "Bearer ..", 401
    yield "not base64url", "Bearer !!!.???.***", 401
    yield "one char segments", "Bearer a.a.a", 401
    yield "latin-1 bytes", "Bearer \xe9\xff.\xe9.\xe9", 401
    yield "oversized", "Bearer " + "A" * 100_000, 401
    yield "oversized valid shape", f"Bearer {b64(b'{}' * 5000)}.{b64(b'{}')}.AAAA", 401
    yield "header is a list", f"Bearer {b64(b'[]')}.{b64(b'{}')}.AAAA", 401
    yield "header is a string", f"Bearer {b64(json.dumps('x').encode())}.{b64(b'{}')}.AAAA", 401
    yield "header not JSON", f"Bearer {b64(b'{nope')}.{b64(b'{}')}.AAAA", 401
    quotes = b64(b'"' + b'\\"' * 2500)
    yield "unterminated escaped quotes", f"Bearer {quotes}.{b64(b'{}')}.AAAA", 401
    not_utf8 = b64(bytes([0xFF, 0xFE]))
    yield "header not UTF-8", f"Bearer {not_utf8}.{b64(b'{}')}.AAAA", 401
    yield "trailing text", f"Bearer {good} extra", 401


async def authenticated(manager: AsyncBatchStateManager, certs_url: str) -> PushEndpoint:
    await manager.create_batch("b", expected_players=["p1"])
    auth = PushAuth(AUDIENCE, service_account_email=EMAIL, certs_url=certs_url)
    return PushEndpoint(manager, auth=auth)


def run_table(
    cases: Iterator[tuple[str, str | None, int]],
) -> Callable[[PushEndpoint], Any]:
    async def run(endpoint: PushEndpoint) -> dict[str, tuple[int, int]]:
        body = envelope(payload("b", "p1", 3))
        wrong = {}
        for name, authorization, expected in cases:
            got = (await asgi_call(endpoint, body, authorization=authorization)).status
            if got != expected:
                wrong[name] = (expected, got)
        return wrong

    return run


async def test_forged_tokens_of_every_shape_are_401_and_write_nothing(
    make_manager: ManagerFactory,
) -> None:
    """Unsigned, junk-signed and other-key tokens with every header and claim: 401, no write."""
    manager = make_manager()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await authenticated(manager, certs.url)
        assert {} == await run_table(forged_cases())(endpoint)
        assert 1 == certs.requests  # forged key ids never made it fetch again
    assert 0 == (await manager.get_progress("b")).completed_count
    assert 0 == endpoint.stats().received


async def test_signed_tokens_with_hostile_headers_are_answered_by_rule(
    make_manager: ManagerFactory,
) -> None:
    """Validly signed, every JOSE header field with every JSON type: 200 only for RS256/kid/JWT."""
    manager = make_manager()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await authenticated(manager, certs.url)
        assert {} == await run_table(header_cases())(endpoint)
        assert certs.requests <= 2  # the first fetch, at most one for an unknown kid


async def test_claims_are_compared_by_type_and_value(make_manager: ManagerFactory) -> None:
    """email_verified must be true (not "true", "false" or 1); aud/iss/email strings; times numbers."""
    manager = make_manager()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await authenticated(manager, certs.url)
        assert {} == await run_table(claim_cases())(endpoint)


async def test_authorization_headers_of_every_shape(make_manager: ManagerFactory) -> None:
    """Missing, other schemes, wrong segment counts, not base64url, oversized: 401."""
    manager = make_manager()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await authenticated(manager, certs.url)
        assert {} == await run_table(authorization_cases())(endpoint)


# -- envelopes -----------------------------------------------------------------------


def envelope_cases() -> Iterator[tuple[str, bytes, int]]:
    """Bodies: not JSON, every JSON type at every place of the envelope, deep, oversized."""
    good = payload("b", "p1", 3)
    data = base64.b64encode(good).decode()
    message = {"data": data, "messageId": "m1", "publishTime": "2026-01-02T03:04:05.123456789Z"}
    yield "good", envelope(good), 200
    yield "empty", b"", 400
    yield "not JSON", b"{nope", 400
    yield "not UTF-8", b"\xff\xfe\x00", 400
    yield "deep list", b"[" * DEEP + b"]" * DEEP, 400
    yield "deep object", b'{"a":' * DEEP + b"1" + b"}" * DEEP, 400
    yield "unbalanced deep", b"[" * DEEP, 400
    # Each quote of an unterminated string could restart a scan to the end: quadratic.
    yield "unterminated escaped quotes", b'{"a": "' + b'\\"' * 4_000_000, 400
    yield "over 16 MiB", b" " * (16 * 1024 * 1024 + 1), 413
    for name, value in VALUES.items():
        yield f"envelope={name}", dumps({"v": value})[6:-1].encode(), 400
        # An object without data is a message with empty data: poison (422), not a bad envelope.
        is_message = isinstance(value, dict) and depth(value) < 7
        yield f"message={name}", dumps({"message": value}).encode(), 422 if is_message else 400
        # Data that is base64 (empty, or 4k letters) decodes to junk: poison again.
        is_base64 = value is ABSENT or (isinstance(value, str) and len(value) % 4 == 0)
        yield (
            f"data={name}",
            dumps({"message": with_value(message, "data", value)}).encode(),
            422 if is_base64 else 400,
        )
        ok_id = value is ABSENT or isinstance(value, str)
        yield (
            f"messageId={name}",
            dumps({"message": with_value(message, "messageId", value)}).encode(),
            200 if ok_id else 400,
        )
        ok_attrs = value is ABSENT or value is None or value == {} or value == {"k": "v"}
        yield (
            f"attributes={name}",
            dumps({"message": with_value(message, "attributes", value)}).encode(),
            200 if ok_attrs else 400,
        )
        yield (
            f"attribute value={name}",
            dumps({"message": message | {"attributes": with_value({}, "k", value)}}).encode(),
            200 if isinstance(value, str) or value is ABSENT else 400,
        )
        ok_time = value is ABSENT or value is None
        yield (
            f"publishTime={name}",
            dumps({"message": with_value(message, "publishTime", value)}).encode(),
            200 if ok_time else 400,
        )
        yield (
            f"extra field={name}",
            dumps({"message": message, "subscription": value}).encode(),
            400 if 1 + depth(value) > 8 else 200,
        )
    for name, stamp, expected in [
        ("naive", "2026-01-02T03:04:05", 400),
        ("offset", "2026-01-02T03:04:05+02:00", 200),
        ("year 1", "0001-01-01T00:00:00Z", 200),
        ("year 9999", "9999-12-31T23:59:59.999999999Z", 200),
        ("month 13", "2026-13-01T00:00:00Z", 400),
        ("nanoseconds only", "2026-01-02T03:04:05.123456789123456789Z", 200),
        ("long", "2026-01-02T03:04:05Z" + " " * 100, 400),
    ]:
        yield f"publishTime {name}", envelope(good, stamp), expected
    yield "data not base64", dumps({"message": message | {"data": "!!!!"}}).encode(), 400
    yield "data non-ASCII", dumps({"message": message | {"data": "é"}}).encode(), 400


async def test_envelopes_of_every_shape_are_answered_400_or_413(
    make_manager: ManagerFactory,
) -> None:
    """A body that is no push envelope is 400 (over 16 MiB: 413), whatever it holds."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager)
    wrong = {}
    for name, body, expected in envelope_cases():
        got = (await asgi_call(endpoint, body)).status
        if got != expected:
            wrong[name] = (expected, got)
    assert {} == wrong


# -- message data --------------------------------------------------------------------


def data_cases() -> Iterator[tuple[str, bytes, int]]:
    """Message data: deep JSON, every type at the top and in each key, hostile ids and counts."""
    good = {"batch_id": "b", "player": "p1", "predictions_count": 3}
    yield "good", json.dumps(good).encode(), 200
    yield "empty", b"", 422
    yield "not UTF-8", b"\xff\xfe", 422
    yield "deep list", b"[" * DEEP + b"]" * DEEP, 422
    yield "deep object", b'{"a":' * DEEP + b"1" + b"}" * DEEP, 422
    yield "deep inside an extra key", dumps(good | {"x": VALUES["deep-list"]}).encode(), 422
    yield (
        "big int",
        b'{"batch_id": "b", "player": "p1", "predictions_count": 1' + b"0" * 5000 + b"}",
        422,
    )
    for name, value in VALUES.items():
        yield f"top={name}", dumps({"v": value})[6:-1].encode() or b"x", 422
        for key in good:
            expected = 422
            if key == "predictions_count" and name == "zero":
                expected = 200  # a valid count (a DUPLICATE after the first: still 200)
            if key == "batch_id" and isinstance(value, str) and 0 < len(value) <= 1500:
                expected = 425  # a well-formed id of a batch not created (yet)
            yield f"{key}={name}", dumps(with_value(good, key, value)).encode(), expected
    for name, batch_id, player, expected in [
        ("slash", "a/b", "p1", 422),
        ("dots", "..", "p1", 422),
        ("reserved", "__x__", "p1", 422),
        ("lone surrogate", "b\ud800", "p1", 422),
        ("2 KB id", "b" * 2000, "p1", 422),
        ("player not in roster", "b", "stranger", 422),
        ("player lone surrogate", "b", "p\udfff", 422),
        ("unknown batch", "nope", "p1", 425),
        ("unknown batch with NUL", "no\x00pe", "p1", 425),
    ]:
        body = json.dumps({"batch_id": batch_id, "player": player, "predictions_count": 1})
        yield name, body.encode(), expected
    for name, count in [("negative", -1), ("over int64", 2**63)]:
        yield name, json.dumps(good | {"predictions_count": count}).encode(), 422


async def test_message_data_of_every_shape_is_poison_not_retried(
    make_manager: ManagerFactory,
) -> None:
    """Whatever parsing raises (RecursionError included) is poison (422), never a 503 retry."""
    manager = make_manager()
    await manager.create_batch("b", expected_players=["p1"])
    endpoint = PushEndpoint(manager, poison="nack")
    wrong = {}
    for name, data, expected in data_cases():
        got = (await asgi_call(endpoint, envelope(data, "2999-01-01T00:00:00Z"))).status
        if got != expected:
            wrong[name] = (expected, got)
    assert {} == wrong
    assert 0 == endpoint.stats().retried


class Boom(Exception):
    """Not an error type a parser is expected to raise."""


def raising(error: BaseException) -> Callable[[bytes, Any], Completion]:
    def parse(data: bytes, attributes: Any) -> Completion:
        raise error

    return parse


def deep_parse(data: bytes, attributes: Any) -> Completion:
    def down(n: int) -> int:
        return down(n + 1)

    return Completion("b", "p1", down(0))


@pytest.mark.parametrize(
    "parse",
    [
        raising(RecursionError("deep")),
        raising(RuntimeError("x")),
        raising(AssertionError("x")),
        raising(ZeroDivisionError("x")),
        raising(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")),
        raising(Boom()),
        deep_parse,
        lambda data, attributes: None,
        lambda data, attributes: Completion(1, "p1", 3),  # type: ignore[arg-type]
        lambda data, attributes: Completion("b", "p1", "3"),  # type: ignore[arg-type]
        lambda data, attributes: Completion("b", "p1", True),
    ],
    ids=[
        "RecursionError",
        "RuntimeError",
        "AssertionError",
        "ZeroDivisionError",
        "UnicodeDecodeError",
        "custom",
        "real recursion",
        "None",
        "int id",
        "str count",
        "bool count",
    ],
)
async def test_whatever_a_parse_hook_raises_is_poison(
    make_manager: ManagerFactory, parse: Callable[[bytes, Any], Completion]
) -> None:
    """A custom parser's every exception, and a result that is no completion: poison."""
    manager = make_manager()
    endpoint = PushEndpoint(manager, poison="ack", parse=parse)
    answer = await asgi_call(endpoint, envelope(b"{}"))
    assert (200, "poison") == (answer.status, answer.body["status"])
    assert (1, 0) == (endpoint.stats().poison, endpoint.stats().retried)


# -- under a real server -------------------------------------------------------------


async def test_under_uvicorn_no_request_gets_a_500(make_manager: ManagerFactory) -> None:
    """The token, envelope and data tables over HTTP to uvicorn: the same answers, no 5xx."""
    manager = make_manager()
    async with LoopbackAsgiServer(CertsApp()) as certs:
        endpoint = await authenticated(manager, certs.url)
        async with uvicorn_serving(endpoint) as url:
            good = f"Bearer {token()}"
            requests: list[tuple[str, bytes, str | None, int]] = []
            for name, authorization, expected in [
                *header_cases(),
                *claim_cases(),
                *authorization_cases(),
            ]:
                # uvicorn refuses request heads over 64 KiB itself (431 or 400).
                if authorization is None or len(authorization) < 60_000:
                    requests.append(
                        (name, envelope(payload("b", "p1", 3)), authorization, expected)
                    )
            for name, body, expected in envelope_cases():
                requests.append((name, body, good, expected))
            for name, data, expected in data_cases():
                body = envelope(data, "2999-01-01T00:00:00Z")
                requests.append((name, body, good, expected))
            wrong = {}
            for name, body, authorization, expected in requests:
                got = await asyncio.to_thread(http_post, url, body, authorization)
                if got != expected:
                    wrong[name] = (expected, got)
    assert {} == wrong
