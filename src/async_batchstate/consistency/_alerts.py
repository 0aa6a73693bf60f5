"""Alerts for consistency mismatches: the hook protocol, the mismatch log record, Slack."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

from .._errors import ConfigurationError
from .._store.ids import validate_seconds
from ._report import ConsistencyReport

logger = logging.getLogger("async_batchstate.alerts")
consistency_logger = logging.getLogger("async_batchstate.consistency")

MISMATCH_PREFIX = "CONSISTENCY MISMATCH"

_MAX_PLAYERS_SHOWN = 10


class AlertHook(Protocol):
    """Called with the report of every confirmed mismatch found by sampled validation.

    Sync or async; exceptions are logged and ignored. ``report.confirmation``
    says how the mismatch was confirmed.
    """

    def __call__(self, report: ConsistencyReport, /) -> Awaitable[None] | None:
        """Handle one mismatch."""
        ...


async def run_alert_hooks(hooks: Iterable[AlertHook], report: ConsistencyReport) -> None:
    """Call every hook with ``report``; a hook's failure never reaches the caller."""
    for hook in hooks:
        try:
            maybe = hook(report)
            if inspect.isawaitable(maybe):
                await maybe
        except Exception:
            consistency_logger.exception(
                "alert hook %r failed for batch %r",
                hook,
                report.batch_id,
                extra={"batch_id": report.batch_id},
            )


def log_mismatch(report: ConsistencyReport) -> None:
    """Log ONE ``CONSISTENCY MISMATCH`` record at ERROR, the report in ``extra=`` fields."""
    consistency_logger.error(
        "%s in batch %r (mode %s, confirmed by %s): %s",
        MISMATCH_PREFIX,
        report.batch_id,
        report.mode.name,
        report.confirmation or "one read",
        "; ".join(report.problems),
        extra=report.log_fields(),
    )


class SlackWebhookAlerter:
    """An alert hook that POSTs a mismatch report to a Slack incoming webhook.

    Uses the standard library's ``urllib`` in a worker thread (no extra
    dependency). A failure (connection refused, HTTP error, timeout) is logged
    on ``async_batchstate.alerts`` and never raised: an alert must not break
    the code that found the mismatch.

    Args:
        url: The webhook URL (``https://hooks.slack.com/services/...``).
        timeout: Seconds for connecting and for the response.
        username: Optional display name for the message.

    Raises:
        ConfigurationError: ``url`` is not an http(s) URL str, ``timeout`` is not a
            finite number of seconds > 0, or ``username`` is neither a str nor None.
    """

    def __init__(self, url: str, timeout: float = 5.0, *, username: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ConfigurationError("the Slack webhook url must be an http(s) URL str")
        if validate_seconds("timeout", timeout, error=ConfigurationError) <= 0:
            raise ConfigurationError("timeout must be > 0 seconds")
        if username is not None and not isinstance(username, str):
            raise ConfigurationError(f"username must be a str, not {type(username).__name__}")
        self.url = url
        self.timeout = timeout
        self.username = username
        self.sent = 0
        self.failed = 0

    def __repr__(self) -> str:
        # The webhook URL is a secret: show only its host.
        host = self.url.split("/")[2]
        return f"<SlackWebhookAlerter host={host!r} sent={self.sent} failed={self.failed}>"

    def payload(self, report: ConsistencyReport) -> dict[str, Any]:
        """The JSON body posted for ``report`` (override to customise)."""

        def players(names: tuple[str, ...]) -> str:
            shown = ", ".join(names[:_MAX_PLAYERS_SHOWN])
            more = len(names) - _MAX_PLAYERS_SHOWN
            return shown + (f" (+{more} more)" if more > 0 else "")

        lines = [
            f":warning: *CONSISTENCY MISMATCH* in batch `{report.batch_id}` "
            f"(mode {report.mode.name})",
            *(f"- {problem}" for problem in report.problems),
            *([f"confirmed by: {report.confirmation}"] if report.confirmation else []),
            f"legacy array: {report.legacy_array_length}, completed_count: "
            f"{report.completed_count}, completion docs: {report.completion_docs}",
            f"total_predictions: {report.total_predictions}, total_predictions_subcoll: "
            f"{report.total_predictions_subcoll}, sum over docs: "
            f"{report.completion_predictions_sum}",
        ]
        if report.players_only_in_array:
            lines.append(f"only in array: {players(report.players_only_in_array)}")
        if report.players_only_in_subcollection:
            lines.append(f"only in subcollection: {players(report.players_only_in_subcollection)}")
        body: dict[str, Any] = {"text": "\n".join(lines)}
        if self.username:
            body["username"] = self.username
        return body

    async def __call__(self, report: ConsistencyReport) -> None:
        """Post ``report``; log, never raise, on failure."""
        body = json.dumps(self.payload(report)).encode("utf-8")
        try:
            # The socket timeout bounds connect and read; the outer one also bounds
            # what it does not (name resolution), leaving the thread to finish alone.
            # Both are real time on purpose, not a manager's Clock: they guard a
            # blocking socket in a thread, which a fake clock's time never reaches.
            async with asyncio.timeout(self.timeout * 2 + 1):
                status = await asyncio.to_thread(self._post, body)
        except Exception as exc:  # refused, HTTP error, timeout, bad response: all logged
            self.failed += 1
            logger.warning(
                "Slack alert for batch %r failed: %s",
                report.batch_id,
                exc,
                extra={"batch_id": report.batch_id, "error": repr(exc)},
            )
            return
        self.sent += 1
        logger.debug("Slack alert for batch %r sent (HTTP %d)", report.batch_id, status)

    def _post(self, body: bytes) -> int:
        request = urllib.request.Request(
            self.url,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()
            return int(response.status)
