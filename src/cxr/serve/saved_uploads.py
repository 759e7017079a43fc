"""`cxr serve --save-uploads DIR`: keep copies of the images the model answered, nothing else.

Off by default (uploads live in memory only). When on, a refused upload (not an image, too
large, not a chest X-ray) is never written, the folder stops growing at its size cap, and a
file name keeps its letters in any script, so two uploads named in Chinese stay told apart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
import uuid
from pathlib import Path

log = logging.getLogger("cxr.serve")

_UNSAFE = re.compile(r"[^\w.\-]+")  # \w is Unicode-aware: letters and digits of any script


def safe_file_name(name: str) -> str:
    """A file name that cannot leave the folder or hide: NFC, no separators, no leading dots."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).lstrip("._")[:100]
    return name or "upload"


class UploadFolder:
    """A folder of saved uploads, capped at `max_bytes` in all (files already there count)."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        self._warned = False

    @property
    def used_bytes(self) -> int:
        return self._used

    def save(self, name: str, data: bytes) -> Path | None:
        """Write one accepted upload; None (and one warning) once the folder is full."""
        with self._lock:
            if self._used + len(data) > self.max_bytes:
                if not self._warned:
                    log.warning(
                        "--save-uploads folder %s is full (%.0f MB): not saving more",
                        self.folder,
                        self.max_bytes / 2**20,
                    )
                    self._warned = True
                return None
            self._used += len(data)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.folder / f"{stamp}-{uuid.uuid4().hex[:8]}-{safe_file_name(name)}"
        path.write_bytes(data)
        return path
