"""One log line per request: method, path, status, milliseconds, bytes sent.

Only the path is logged, never the query string or form fields, which can carry a file name
(and a file name can carry a patient's name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("cxr.access")


class AccessLog:
    """WSGI middleware writing the access line once the response body has been sent."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        start = time.perf_counter()
        status = ["-"]

        def recording_start_response(line: str, headers, exc_info=None):
            status[0] = line.split(" ", 1)[0]
            return start_response(line, headers, exc_info)

        body = self.app(environ, recording_start_response)
        return _Counted(body, environ, status, start)


class _Counted:
    """The response iterable, counting bytes; logs when the server closes it."""

    def __init__(self, body: Iterable[bytes], environ: dict, status: list[str], start: float):
        self.body, self.environ, self.status, self.start = body, environ, status, start
        self.sent = 0

    def __iter__(self):
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            log.info(
                "%s %s %s %.1fms %dB",
                self.environ.get("REQUEST_METHOD", "-"),
                self.environ.get("PATH_INFO", "-"),
                self.status[0],
                (time.perf_counter() - self.start) * 1000,
                self.sent,
            )
