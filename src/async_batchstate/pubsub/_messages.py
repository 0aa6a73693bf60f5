"""Messages and what to do with each: parsing, and the ack/retry/poison decision (no I/O).

Both adapters run every delivery through the same two steps: ``parse`` turns the
message into a ``Completion`` (or refuses it as poison), then ``decide`` turns
the outcome of ``record_completion`` into a ``Decision``: acknowledge, redeliver
soon, redeliver later, or poison.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .._errors import BatchNotFoundError, InvalidInputError
from .._types import CompletionResult

__all__ = [
    "Action",
    "Completion",
    "Decision",
    "MessageParseError",
    "Parser",
    "PoisonMessage",
    "PoisonPolicy",
    "UnknownBatchPolicy",
    "decide",
    "parse_json",
]

PoisonPolicy = Literal["ack", "nack"]
"""``"ack"``: acknowledge poison (logged, hooked, counted) so it never comes back.
``"nack"``: refuse it, so the subscription redelivers it until its dead-letter
policy moves it to the dead-letter topic."""


class MessageParseError(InvalidInputError):
    """A message's data is not a completion in the expected format (the message is poison)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One worker completion carried by a message: the arguments of ``record_completion``."""

    batch_id: str
    player: str
    predictions_count: int


Parser = Callable[[bytes, Mapping[str, str]], Completion]
"""``parse(data, attributes) -> Completion``; whatever it raises makes the message
poison (``MessageParseError`` says why best)."""

# A string, or an unterminated one to the end: a match never fails, so no quote is
# tried as a start again (a pattern that can fail rescans the tail: quadratic time).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")


def json_nesting_within(text: bytes, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays and objects at most ``limit`` deep.

    Checked without recursion and in time linear in ``len(text)`` per level (so
    before ``json.loads``, whose recursion a deep enough document exhausts).
    Unbalanced brackets count as too deep: such a text is not JSON anyway; an
    unterminated string hides the brackets after it, which ``json.loads`` never
    reaches either.
    """
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_A_BRACKET)
    too_deep = re.compile(rb"[\[{]{%d}" % (limit + 1))  # limit + 1 openers in a row
    for _ in range(limit):
        if not brackets:
            return True
        if too_deep.search(brackets):  # the usual attack, found in one pass
            return False
        brackets = _INNERMOST_PAIR.sub(b"", brackets)  # one level fewer
    return not brackets


def parse_json(data: bytes, attributes: Mapping[str, str]) -> Completion:
    """The default format: UTF-8 JSON ``{"batch_id", "player", "predictions_count"}``.

    ``batch_id`` and ``player`` are strings, ``predictions_count`` an integer.

    Extra keys are ignored; attributes are not read. Ids and counts are checked
    again by ``record_completion`` (Firestore id rules, count bounds).

    Raises:
        MessageParseError: Not UTF-8 JSON, not an object, a key missing or of the wrong type.
    """
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageParseError(f"message data is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:  # nested deeper than the interpreter's recursion limit
        raise MessageParseError("message data is JSON nested too deeply") from exc
    if not isinstance(body, dict):
        raise MessageParseError(f"message data is a JSON {type(body).__name__}, not an object")
    missing = [k for k in ("batch_id", "player", "predictions_count") if k not in body]
    if missing:
        raise MessageParseError(f"message data lacks {', '.join(missing)}")
    batch_id, player, count = body["batch_id"], body["player"], body["predictions_count"]
    if not isinstance(batch_id, str) or not isinstance(player, str):
        raise MessageParseError("batch_id and player must be JSON strings")
    if isinstance(count, bool) or not isinstance(count, int):
        raise MessageParseError(
            f"predictions_count must be a JSON integer, not {type(count).__name__}"
        )
    return Completion(batch_id, player, count)


def parse_with(parse: Parser, data: bytes, attributes: Mapping[str, str]) -> Completion:
    """Run a parse hook; whatever it raises, or a result that is no completion, is poison.

    The same message parses the same way on every delivery, so no error of the
    parser (``RecursionError`` from deep JSON included) can pass by retrying:
    only the write is ever retried.

    Raises:
        MessageParseError: The hook raised (chained), or returned something other
            than a ``Completion`` of two ``str`` and an ``int``.
    """
    try:
        completion = parse(data, attributes)
    except MessageParseError:
        raise
    except Exception as exc:
        raise MessageParseError(f"{type(exc).__name__}: {_clip(str(exc))}") from exc
    if not isinstance(completion, Completion):
        raise MessageParseError(f"parse returned {type(completion).__name__}, not a Completion")
    if not isinstance(completion.batch_id, str) or not isinstance(completion.player, str):
        raise MessageParseError("parse returned a Completion whose ids are not str")
    count = completion.predictions_count
    if isinstance(count, bool) or not isinstance(count, int):
        raise MessageParseError("parse returned a Completion whose count is not an int")
    return completion


def _clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters: errors may quote a whole hostile message."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class UnknownBatchPolicy:
    """How long a completion for a batch that does not exist (yet) is retried.

    A worker's message may overtake the coordinator's ``create_batch``, so an
    unknown batch is first redelivered with a growing delay: about half the
    message's age, between ``min_delay`` and ``max_delay`` (so roughly doubling
    from one delivery to the next). Once the message is ``grace`` seconds old
    (from its publish time) it is poison. The bound is on age, not on a count of
    deliveries, so it holds across processes and restarts without any state.

    Pull: the delay is the message's new ack deadline (``modify_ack_deadline``),
    the message then leaves lease management and comes back when it expires.
    Push: an answer of 425 (Too Early); when the next try comes is the push
    subscription's retry policy (configure an exponential backoff on it).

    Attributes:
        grace: Seconds after publishing when an unknown batch makes the message poison
            (default 600).
        min_delay: Least redelivery delay in seconds (default 10, Pub/Sub's advice).
        max_delay: Most redelivery delay in seconds (default 600, Pub/Sub's maximum).
    """

    grace: float = 600.0
    min_delay: float = 10.0
    max_delay: float = 600.0

    def __post_init__(self) -> None:
        if not (0 <= self.min_delay <= self.max_delay <= 600) or self.grace < 0:
            raise InvalidInputError(
                "UnknownBatchPolicy needs grace >= 0 and 0 <= min_delay <= max_delay <= 600"
            )

    def delay(self, age: float) -> int:
        """Seconds to wait before the next delivery of a message ``age`` seconds old."""
        return math.ceil(min(self.max_delay, max(self.min_delay, age / 2)))


class Action(enum.Enum):
    """What an adapter does with a delivery."""

    ACK = "ack"
    """The completion is written (RECORDED, DUPLICATE or LATE): acknowledge."""
    RETRY = "retry"
    """A failure that may pass (the write, the manager): redeliver (nack, or 503)."""
    DELAY = "delay"
    """The batch does not exist yet: redeliver after ``Decision.delay`` seconds (or 425)."""
    POISON = "poison"
    """It will never succeed: acknowledge or refuse per the poison policy."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The action for one delivery, with its delay (``DELAY``) and the reason (for logs)."""

    action: Action
    reason: str = ""
    delay: int = 0
    error: BaseException | None = field(default=None, compare=False)


def decide(
    outcome: CompletionResult | BaseException, *, age: float, unknown_batch: UnknownBatchPolicy
) -> Decision:
    """The action for a delivery, from what parsing and ``record_completion`` gave.

    Args:
        outcome: The ``CompletionResult``, or the error recording raised (or the
            ``MessageParseError`` that ``parse_with`` made of any parser error).
        age: Seconds since the message was published.
        unknown_batch: When an unknown batch stops being retried.

    Returns:
        ``ACK`` for any result; ``POISON`` for bad input (``InvalidInputError``,
        which includes ``MessageParseError`` and ``UnexpectedPlayerError``) and for
        an unknown batch older than the grace; ``DELAY`` for a younger unknown
        batch; ``RETRY`` for everything else (``RetryExhaustedError``,
        ``CompletionTimeoutError``, ``ManagerClosedError``, ``WriteFailedError``,
        anything unexpected from the write): nothing is acknowledged that was not written.
    """
    if isinstance(outcome, CompletionResult):
        return Decision(Action.ACK, outcome.status.value)
    reason = f"{type(outcome).__name__}: {_clip(str(outcome))}"
    if isinstance(outcome, InvalidInputError):
        return Decision(Action.POISON, reason, error=outcome)
    if isinstance(outcome, BatchNotFoundError):
        if age >= unknown_batch.grace:
            return Decision(Action.POISON, f"{reason} ({age:.0f}s after publishing)", error=outcome)
        return Decision(Action.DELAY, reason, unknown_batch.delay(age), error=outcome)
    return Decision(Action.RETRY, reason, error=outcome)


@dataclass(frozen=True, slots=True)
class PoisonMessage:
    """A message that will never be recorded, as handed to the ``on_poison`` hook.

    Attributes:
        message_id: Pub/Sub's message id.
        data: The message data.
        attributes: The message attributes.
        reason: Why it is poison.
        error: The parse or ``record_completion`` error.
        acknowledged: True under ``poison="ack"`` (it will not come back).
    """

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    reason: str
    error: BaseException | None
    acknowledged: bool
