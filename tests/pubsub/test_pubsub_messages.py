"""Messages without I/O: the default format, the parse hook, and ack/retry/delay/poison decisions."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import pytest

from async_batchstate import (
    BatchNotFoundError,
    CompletionResult,
    CompletionStatus,
    CompletionTimeoutError,
    InvalidIdError,
    ManagerClosedError,
    UnexpectedPlayerError,
    WriteFailedError,
)
from async_batchstate.pubsub import (
    Action,
    Completion,
    MessageParseError,
    UnknownBatchPolicy,
    decide,
    decode_envelope,
    parse_json,
)
from async_batchstate.pubsub._messages import parse_with

from ..helpers import run_python

POLICY = UnknownBatchPolicy(grace=600, min_delay=10, max_delay=600)


def test_parse_json_reads_the_default_format() -> None:
    """The three keys, extra keys ignored."""
    data = json.dumps({"batch_id": "b", "player": "p", "predictions_count": 3, "x": 1}).encode()
    assert Completion("b", "p", 3) == parse_json(data, {})


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"batch_id": "b", "player": "p"}',
        b'{"batch_id": 1, "player": "p", "predictions_count": 1}',
        b'{"batch_id": "b", "player": "p", "predictions_count": "3"}',
        b'{"batch_id": "b", "player": "p", "predictions_count": true}',
        b'{"batch_id": "b", "player": "p", "predictions_count": 1.5}',
    ],
)
def test_parse_json_refuses_what_is_not_a_completion(data: bytes) -> None:
    """Undecodable, not an object, a key missing or of the wrong type: MessageParseError."""
    with pytest.raises(MessageParseError):
        parse_json(data, {})


def test_a_parse_hook_error_becomes_a_parse_error() -> None:
    """A hook raising KeyError (or returning something else) makes the message poison."""

    def from_attributes(data: bytes, attributes: Mapping[str, str]) -> Completion:
        return Completion(attributes["batch"], attributes["player"], int(data))

    assert Completion("b", "p", 7) == parse_with(
        from_attributes, b"7", {"batch": "b", "player": "p"}
    )
    with pytest.raises(MessageParseError, match="KeyError"):
        parse_with(from_attributes, b"7", {})
    with pytest.raises(MessageParseError, match="not a Completion"):
        parse_with(lambda d, a: "nope", b"", {})  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("status", list(CompletionStatus))
def test_every_result_is_acknowledged(status: CompletionStatus) -> None:
    """RECORDED, DUPLICATE and LATE are written: ACK."""
    result = CompletionResult("b", "p", status)
    assert Action.ACK == decide(result, age=0, unknown_batch=POLICY).action


@pytest.mark.parametrize(
    "error",
    [
        MessageParseError("x"),
        InvalidIdError("x"),
        UnexpectedPlayerError("x"),
    ],
)
def test_bad_input_is_poison(error: Exception) -> None:
    """Parse errors and every InvalidInputError, incl. an unexpected player, are poison."""
    assert Action.POISON == decide(error, age=0, unknown_batch=POLICY).action


@pytest.mark.parametrize(
    "error",
    [
        CompletionTimeoutError("x"),
        ManagerClosedError("x"),
        WriteFailedError("x"),
        RuntimeError("unexpected"),
    ],
)
def test_other_failures_are_retried(error: Exception) -> None:
    """Nothing is acknowledged that was not written: every other failure is RETRY."""
    assert Action.RETRY == decide(error, age=0, unknown_batch=POLICY).action


def test_an_unknown_batch_is_delayed_with_a_growing_delay_then_poison() -> None:
    """Half the age, within [min_delay, max_delay]; poison once the age reaches the grace."""
    error = BatchNotFoundError("b")
    delays = [decide(error, age=a, unknown_batch=POLICY) for a in (0, 30, 100, 599)]
    assert [Action.DELAY] * 4 == [d.action for d in delays]
    assert [10, 15, 50, 300] == [d.delay for d in delays]
    assert Action.POISON == decide(error, age=600, unknown_batch=POLICY).action
    capped = UnknownBatchPolicy(grace=10_000, max_delay=120)
    assert 120 == decide(error, age=5_000, unknown_batch=capped).delay


def test_unknown_batch_policy_refuses_bad_bounds() -> None:
    """Delays beyond Pub/Sub's 600 s or inverted bounds are refused."""
    with pytest.raises(ValueError):
        UnknownBatchPolicy(min_delay=20, max_delay=10)
    with pytest.raises(ValueError):
        UnknownBatchPolicy(max_delay=601)


def test_decode_envelope_reads_a_push_request() -> None:
    """data (base64), messageId, attributes and publishTime (nanoseconds) are read."""
    body = {
        "message": {
            "data": base64.b64encode(b"hello").decode(),
            "messageId": "42",
            "attributes": {"k": "v"},
            "publishTime": "2026-01-02T03:04:05.123456789Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }
    envelope = decode_envelope(json.dumps(body).encode())
    assert (b"hello", "42", {"k": "v"}) == (
        envelope.data,
        envelope.message_id,
        envelope.attributes,
    )
    assert envelope.publish_time == pytest.approx(1767323045.123456)


@pytest.mark.parametrize("body", [b"", b"{}", b'{"message": {"data": "!!"}}', b"[]"])
def test_decode_envelope_refuses_other_bodies(body: bytes) -> None:
    """Not JSON, no message, bad base64: InvalidInputError (answered 400)."""
    with pytest.raises(ValueError):
        decode_envelope(body)


def test_without_the_extra_only_the_pubsub_module_fails_and_names_the_extra(
    pytester: pytest.Pytester,
) -> None:
    """No google-cloud-pubsub: the library and its testing helpers import; the adapters say what to install."""
    result = run_python(
        pytester,
        """
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("google.cloud.pubsub"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Blocked())
        import async_batchstate, async_batchstate.testing, async_batchstate.cli
        try:
            import async_batchstate.pubsub
        except ImportError as exc:
            print("REFUSED", exc)
        """,
    )
    assert 0 == result.ret, result.stderr.str()
    assert "async-batchstate[pubsub]" in result.stdout.str()
