"""Pub/Sub adapters: acknowledge a completion message only once its write is confirmed.

``PushEndpoint`` is a plain ASGI app for push subscriptions; ``PullConsumer`` an
asyncio consumer over streaming pull. Both parse each message (``parse_json`` by
default, or a ``parse=`` hook), call ``record_completion`` and then acknowledge
(RECORDED, DUPLICATE, LATE), redeliver (retryable failures; an unknown batch
later, see ``UnknownBatchPolicy``) or treat it as poison (``poison="ack"`` or
``"nack"``). ``drain_on_sigterm`` shuts an adapter and its manager down on
scale-in within one budget (8 s, inside Cloud Run's 10).

Needs the ``pubsub`` extra: ``pip install 'async-batchstate[pubsub]'``.
"""

try:
    import google.auth
    import google.cloud.pubsub_v1  # noqa: F401
except ImportError as _exc:  # pragma: no cover - tested in a subprocess without the extra
    raise ImportError(
        "async_batchstate.pubsub needs google-cloud-pubsub and google-auth: "
        "pip install 'async-batchstate[pubsub]'"
    ) from _exc

from ._core import AdapterStats, Drainable, PoisonHook, drain_on_sigterm
from ._messages import (
    Action,
    Completion,
    Decision,
    MessageParseError,
    Parser,
    PoisonMessage,
    PoisonPolicy,
    UnknownBatchPolicy,
    decide,
    parse_json,
)
from ._pull import PullConsumer
from ._push import PushAuth, PushAuthError, PushEndpoint, decode_envelope

__all__ = [
    "Action",
    "AdapterStats",
    "Completion",
    "Decision",
    "Drainable",
    "MessageParseError",
    "Parser",
    "PoisonHook",
    "PoisonMessage",
    "PoisonPolicy",
    "PullConsumer",
    "PushAuth",
    "PushAuthError",
    "PushEndpoint",
    "UnknownBatchPolicy",
    "decide",
    "decode_envelope",
    "drain_on_sigterm",
    "parse_json",
]
