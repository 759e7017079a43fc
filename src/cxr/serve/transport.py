"""The HTTP layer under Flask: waitress, with the bounds a public server needs.

Waitress reads a whole request (headers and body) before the app sees it, so limits the app
checks come too late: a 120 MB POST to /api/health would already sit in memory. This module
bounds each request inside waitress itself:

- per-route body limits on Content-Length (and on chunked bodies as they arrive), before any
  byte of the body is read: the image route takes one image, the batch route a batch, every
  other route a small body;
- a deadline to receive a request: headers within `header_timeout_s`, the body at no less than
  `min_upload_bytes_per_s` after that (slowloris: one byte every few seconds never finishes);
- at most `per_client_connections` open connections per client address, so one client cannot
  hold every connection slot;
- waitress's own errors (400, 413, 431, 501) as the API's JSON, with the security headers;
- responses kept in memory: waitress would spool one over 1 MiB to a temporary file, and the
  answer to a prediction holds the patient's preview images.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import RequestEntityTooLarge

from cxr.errors import ConfigError

log = logging.getLogger("cxr.serve")

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
)
# The largest answer a batch can produce is well under this (32 files with previews and
# heatmaps are ~100 MB); past it waitress would write the rest of the response to /tmp.
NEVER_SPOOL = 2**40
SMALL_BODY = 64 * 1024  # routes that take no upload: room for a form, nothing more


@dataclass(frozen=True)
class TransportLimits:
    """What one client and one request may hold; every field has a `cxr serve` flag."""

    upload_bytes: int  # POST /api/predict
    batch_bytes: int  # POST /api/predict/batch
    per_client_connections: int = 16
    header_timeout_s: float = 10.0
    min_upload_bytes_per_s: float = 100_000.0
    idle_timeout_s: float = 30.0

    def body_limit(self, method: str, path: str) -> tuple[int, str]:
        """(largest body, the flag that sets it) for a route."""
        if method == "POST" and path == "/api/predict":
            return self.upload_bytes, "--max-upload-mb"
        if method == "POST" and path == "/api/predict/batch":
            return self.batch_bytes, "--max-batch-mb"
        return SMALL_BODY, ""

    def receive_deadline(self, content_length: int) -> float:
        """Seconds a client may take to send a whole request of this size."""
        return self.header_timeout_s + content_length / self.min_upload_bytes_per_s


def json_error(status: int, reason: str, code: str, message: str) -> tuple[str, list, bytes]:
    """(status line, headers, body) of the API's JSON error, outside Flask."""
    body = json.dumps({"error": message, "code": code, "status": status}).encode()
    headers = [("Content-Type", "application/json"), *SECURITY_HEADERS]
    return f"{status} {reason}", headers, body


class _Parser(HTTPRequestParser):
    """Checks the route's body limit as soon as the headers are in, and notes the start time."""

    limits: TransportLimits

    def __init__(self, adj):
        super().__init__(adj)
        self.started = time.monotonic()
        self.limit_checked = False

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.headers_finished and not self.limit_checked:
            self.limit_checked = True
            limit, _ = self.limits.body_limit(self.method, self.target)
            if self.error is None and self.content_length > limit:
                self.error = RequestEntityTooLarge(self.too_large())
                self.completed = True
            elif self.error is None and self.chunked:
                # waitress checks a chunked body against adj as it arrives: this route's limit
                self.adj = copy.copy(self.adj)
                self.adj.max_request_body_size = limit + 1
        return consumed

    @property
    def method(self) -> str:
        return getattr(self, "command", None) or "-"  # set once the request line is parsed

    @property
    def target(self) -> str:
        return getattr(self, "path", None) or "-"

    def too_large(self) -> str:
        """The 413 message: the body's size, the route's limit and the flag that sets it."""
        limit, flag = self.limits.body_limit(self.method, self.target)
        size = f"{self.content_length / 2**20:.1f} MB" if self.content_length else "the body"
        if flag:
            return (
                f"upload too large: {size} is over the {limit / 2**20:.1f} MB limit of "
                f"{self.target} (cxr serve {flag})"
            )
        return f"{self.target} takes no upload: a body of at most {limit // 1024} KB"


class _ErrorTask(ErrorTask):
    """Waitress's own errors in the API's JSON shape, with the security headers."""

    def execute(self):
        error = self.request.error
        message = str(error.body)
        if isinstance(error, RequestEntityTooLarge):
            message = self.request.too_large()
        code = error.reason.lower().replace(" ", "_")
        status, headers, body = json_error(error.code, error.reason, code, message)
        self.status = status
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        log.info(
            "%s %s %d %.1fms %dB (refused by the server)",
            self.request.method,
            self.request.target,
            error.code,
            0.0,
            len(body),
        )


class _Task(WSGITask):
    def get_environment(self):
        environ = super().get_environment()
        environ.setdefault("cxr.received", self.request.started)
        return environ


class _Channel(HTTPChannel):
    task_class = _Task
    error_task_class = _ErrorTask


class GuardedServer(TcpWSGIServer):
    """TcpWSGIServer with per-client connection bounds and deadlines to receive a request."""

    limits: TransportLimits

    def handle_accept(self):
        try:
            pair = self.accept()
        except OSError:
            return
        if pair is None:
            return
        conn, addr = pair
        client = addr[0] if isinstance(addr, tuple) else addr
        open_ = sum(1 for c in list(self.active_channels.values()) if c.addr[0] == client)
        if open_ >= self.limits.per_client_connections:
            self._refuse(conn, client)
            return
        try:
            self.set_socket_options(conn)
        except OSError:
            conn.close()
            return
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def _refuse(self, conn: socket.socket, client: str) -> None:
        status, headers, body = json_error(
            503,
            "Service Unavailable",
            "too_many_connections",
            f"this client already holds {self.limits.per_client_connections} open connections; "
            "close some or reuse them (keep-alive)",
        )
        head = [
            f"HTTP/1.1 {status}",
            *(f"{k}: {v}" for k, v in headers),
            f"Content-Length: {len(body)}",
            "Retry-After: 1",
            "Connection: close",
            "",
            "",
        ]
        try:
            conn.setblocking(False)
            conn.send("\r\n".join(head).encode() + body)
        except OSError:
            pass
        conn.close()
        log.warning(
            "refused a connection from %s: over %d open connections",
            client,
            self.limits.per_client_connections,
        )

    def maintenance(self, now: float) -> None:
        """Close idle keep-alive connections, and those too slow to send their request."""
        super().maintenance(now)
        clock = time.monotonic()
        for channel in list(self.active_channels.values()):
            request = channel.request  # the request being received, if any
            if request is None or request.completed:
                continue
            allowed = self.limits.receive_deadline(max(request.content_length, 0))
            if clock - request.started > allowed:
                channel.will_close = True
                log.warning(
                    "closed a connection from %s: request not received within %.0f s",
                    channel.addr[0],
                    allowed,
                )


class _OncePerMinute(logging.Filter):
    """Waitress warns 'Task queue depth is N' on every queued request: say it once a minute."""

    def __init__(self):
        super().__init__()
        self._last = 0.0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < 60:
                return False
            self._last = now
            return True


_QUEUE_FILTER = _OncePerMinute()


def create_guarded_server(
    app: Callable, host: str, port: int, threads: int, limits: TransportLimits
) -> GuardedServer:
    """Bind host:port (a clear ConfigError when taken) and return the server; `.run()` serves."""
    if not 0 <= port <= 65535:  # 0: any free port (tests)
        raise ConfigError(f"--port {port}: expected a port number from 1 to 65535")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: expected at least 1 worker thread")
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="cxr",
        # the route limits above are checked first; this is the hard ceiling behind them
        max_request_body_size=max(limits.upload_bytes, limits.batch_bytes) + 1,
        inbuf_overflow=max(limits.upload_bytes, limits.batch_bytes) + 2,  # never to disk
        outbuf_overflow=NEVER_SPOOL,  # responses never to disk
        max_request_header_size=64 * 1024,
        channel_timeout=limits.idle_timeout_s,
        cleanup_interval=1,
        connection_limit=max(100, 4 * limits.per_client_connections),
        channel_request_lookahead=1,  # lets a request see that its client has gone
    )
    logging.getLogger("waitress.queue").addFilter(_QUEUE_FILTER)
    parser = type("Parser", (_Parser,), {"limits": limits})
    channel = type("Channel", (_Channel,), {"parser_class": parser})
    server_class = type("Server", (GuardedServer,), {"limits": limits, "channel_class": channel})
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    family, kind, proto, address = adj.listen[0]
    try:
        return server_class(
            app,
            {},
            True,
            None,
            dispatcher=dispatcher,
            adj=adj,
            sockinfo=(family, kind, proto, address),
        )
    except OSError as exc:
        dispatcher.shutdown()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another program, or "
            "another `cxr serve`, may be using the port: choose one with --port)"
        ) from None
