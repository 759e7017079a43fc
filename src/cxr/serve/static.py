"""The built front end's files: hashed assets cached for a year and gzipped when the browser
accepts it (Vite names them by content hash, so a new build never meets a stale cache);
index.html always revalidated, so a new build is picked up on the next load."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from flask import Response, request, send_from_directory

_COMPRESSIBLE = {".js", ".css", ".html", ".svg", ".json", ".map", ".txt"}
_YEAR = 365 * 24 * 3600


@lru_cache(maxsize=64)
def _gzipped(path: str, mtime_ns: int) -> bytes:  # mtime in the key: a rebuild is re-read
    return gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0)


def send_front_end_file(web_dir: Path, path: str) -> Response:
    """One file of web_dir, with the caching and compression its kind allows."""
    hashed = path.startswith("assets/")
    response = send_from_directory(web_dir, path, max_age=_YEAR if hashed else 0)
    if hashed:
        response.cache_control.immutable = True
        response.cache_control.public = True
    else:
        response.cache_control.no_cache = True
    file = web_dir / path
    if file.suffix in _COMPRESSIBLE and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = _gzipped(str(file), file.stat().st_mtime_ns)
        response.direct_passthrough = False
        response.set_data(body)
        response.headers["Content-Encoding"] = "gzip"
    response.vary.add("Accept-Encoding")
    return response
