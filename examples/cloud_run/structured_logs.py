"""JSON log lines that Cloud Logging reads: severity, message, trace, source location.

Cloud Run sends each line a container writes to Cloud Logging; a line that is a
JSON object becomes a structured entry, whose special fields set the entry's
severity and message and tie it to the request's trace. ``logging.json`` (the
Procfile's ``--log-config``) puts every logger, uvicorn's included, on this
formatter; ``trace_context`` sets the trace of the request being served.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"
SOURCE_LOCATION = "logging.googleapis.com/sourceLocation"

_SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
"""Python's level names that are Cloud Logging severities too (others: DEFAULT)."""
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
"""Attributes every LogRecord has (and uvicorn's); the rest came from ``extra=``."""
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class Trace:
    """The trace a request belongs to, from its headers."""

    trace_id: str
    span_id: str | None  # 16 hex digits, as Cloud Logging wants it
    sampled: bool


_current: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("trace", default=None)
_project: list[str] = []  # the project that trace ids are resolved in, set at startup


def set_project(project: str) -> None:
    """The Google Cloud project of the traces (``projects/<project>/traces/<id>``)."""
    _project[:] = [project]


def parse_trace(headers: Iterable[tuple[bytes, bytes]]) -> Trace | None:
    """The trace of ``X-Cloud-Trace-Context`` (else W3C ``traceparent``); None if neither."""
    found = {bytes(k).lower(): bytes(v).decode("latin-1") for k, v in headers}
    cloud = found.get(b"x-cloud-trace-context")
    if cloud is not None and (m := _CLOUD_TRACE.fullmatch(cloud.strip())):
        trace_id, span, sampled = m.groups()
        span_id = None if span is None else f"{int(span) & (2**64 - 1):016x}"
        return Trace(trace_id.lower(), span_id, sampled == "1")
    parent = found.get(b"traceparent")
    if parent is not None and (m := _TRACEPARENT.fullmatch(parent.strip())):
        trace_id, span_id, flags = m.groups()
        return Trace(trace_id, span_id, bool(int(flags, 16) & 1))
    return None


def trace_context(trace: Trace | None) -> contextvars.Token[Trace | None]:
    """Make ``trace`` the current request's (tasks started from here inherit it)."""
    return _current.set(trace)


def reset_trace(token: contextvars.Token[Trace | None]) -> None:
    """Undo ``trace_context``."""
    _current.reset(token)


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per record, with the fields Cloud Logging gives a meaning to.

    ``severity`` and ``message`` (with the traceback, if any), the request's trace and
    span, the source location, the logger's name, and every ``extra=`` field (the
    library logs its fields there: ``message_id``, ``reason``, ``batch_id``...).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, object] = {
            "severity": record.levelname if record.levelname in _SEVERITIES else "DEFAULT",
            "message": message,
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "logger": record.name,
            SOURCE_LOCATION: {
                "file": record.pathname,
                "line": record.lineno,
                "function": record.funcName,
            },
        }
        trace = _current.get()
        if trace is not None and _project:
            entry[TRACE] = f"projects/{_project[0]}/traces/{trace.trace_id}"
            entry[TRACE_SAMPLED] = trace.sampled
            if trace.span_id is not None:
                entry[SPAN_ID] = trace.span_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)
