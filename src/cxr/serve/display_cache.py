"""The full-depth display images behind `GET /api/display/<id>`: in memory only, briefly.

A predict response stays small (a JPEG preview inline); the lossless 8- or 16-bit PNG the
viewer windows is fetched separately by an unguessable id. Entries expire after a few minutes
and the cache is bounded in bytes and in entries (cachetools' TTLCache evicts the expired, then
the least recently used); nothing is written to disk and nothing survives a restart.
"""

from __future__ import annotations

import secrets
import threading

from cachetools import TTLCache

__all__ = ["DisplayCache"]


class DisplayCache:
    """Token -> PNG bytes; `put` answers None when one image alone is over the byte bound."""

    def __init__(self, max_bytes: int = 256 * 2**20, max_entries: int = 256, ttl_s: float = 600):
        self.max_bytes, self.max_entries, self.ttl_s = max_bytes, max_entries, ttl_s
        # Every entry counts at least max_bytes / max_entries, so the byte bound caps entries too.
        floor = max(1, max_bytes // max_entries)
        self._cache: TTLCache[str, bytes] = TTLCache(
            maxsize=max_bytes, ttl=ttl_s, getsizeof=lambda data: max(len(data), floor)
        )
        self._lock = threading.Lock()  # TTLCache is not thread-safe; the server is threaded

    def put(self, data: bytes) -> str | None:
        if len(data) > self.max_bytes:
            return None
        token = secrets.token_urlsafe(24)  # 192 random bits: not guessable, not enumerable
        with self._lock:
            self._cache[token] = data
        return token

    def get(self, token: str) -> bytes | None:
        with self._lock:
            return self._cache.get(token)

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    @property
    def bytes(self) -> int:
        with self._lock:
            self._cache.expire()
            return sum(len(v) for v in self._cache.values())
