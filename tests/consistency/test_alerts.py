"""SlackWebhookAlerter against a local HTTP server on 127.0.0.1 (no emulator needed)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from async_batchstate import MigrationMode
from async_batchstate.consistency import ConsistencyReport, SlackWebhookAlerter


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self.release = threading.Event()
        self.hold = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/services/T/B/secret"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.server.headers.append(self.headers["Content-Type"])
        if self.server.hold:
            self.server.release.wait(10)  # a stuck webhook; released at teardown
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _report() -> ConsistencyReport:
    return ConsistencyReport(
        batch_id="batch-7",
        mode=MigrationMode.DUAL_WRITE,
        legacy_array_length=3,
        legacy_map_length=3,
        legacy_map_total=12,
        total_predictions=12,
        completed_count=3,
        total_predictions_subcoll=7,
        completion_docs=2,
        completion_predictions_sum=7,
        players_only_in_array=("ghost",),
    )


async def test_posts_report_as_json(server: _Server) -> None:
    """One POST with a JSON body naming the batch, the problem and the missing player."""
    alerter = SlackWebhookAlerter(server.url, timeout=5.0)

    await alerter(_report())

    assert 1 == len(server.bodies)
    assert "application/json" == server.headers[0]
    text = server.bodies[0]["text"]
    assert "CONSISTENCY MISMATCH" in text
    assert "batch-7" in text
    assert "ghost" in text
    assert 1 == alerter.sent


async def test_http_error_is_logged_not_raised(
    server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 from the webhook is one warning on async_batchstate.alerts."""
    server.status = 500
    alerter = SlackWebhookAlerter(server.url, timeout=5.0)
    caplog.set_level(logging.WARNING, logger="async_batchstate.alerts")

    await alerter(_report())

    assert 1 == alerter.failed
    assert ["batch-7"] == [r.batch_id for r in caplog.records]  # type: ignore[attr-defined]


async def test_server_down_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """Connection refused (nothing listens on the port) is logged, not raised."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    alerter = SlackWebhookAlerter(f"http://127.0.0.1:{port}/hook", timeout=2.0)
    caplog.set_level(logging.WARNING, logger="async_batchstate.alerts")

    await alerter(_report())

    assert 1 == alerter.failed
    assert 1 == len(caplog.records)


async def test_slow_server_times_out_and_is_logged(
    server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that never answers costs about ``timeout`` seconds, then a warning."""
    server.hold = True
    alerter = SlackWebhookAlerter(server.url, timeout=0.3)
    caplog.set_level(logging.WARNING, logger="async_batchstate.alerts")
    started = time.monotonic()

    await alerter(_report())

    assert time.monotonic() - started < 3.0
    assert 1 == alerter.failed
    assert 1 == len(caplog.records)


def test_repr_hides_the_webhook_secret() -> None:
    """The URL path (the secret) never appears in repr."""
    alerter = SlackWebhookAlerter("https://hooks.slack.com/services/T/B/secret")

    assert "secret" not in repr(alerter)


def test_rejects_non_http_url() -> None:
    """A URL that urllib would open as a file is refused at construction."""
    with pytest.raises(ValueError, match="http"):
        SlackWebhookAlerter("file:///etc/passwd")
