"""Errors a user can act on. The CLI prints their message (never a traceback) and exits non-zero."""

from __future__ import annotations


class CxrError(Exception):
    """Base class: anything the user can fix by changing their input or config."""


class ConfigError(CxrError):
    """A config field is unknown, out of range or inconsistent."""


class DataError(CxrError):
    """A data file, row or field is missing or malformed; the message names which."""

    def __init__(self, message: str, path: str | None = None, row: int | None = None):
        self.path = path
        self.row = row
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)


class OfflineError(CxrError):
    """Something must be downloaded and the network is not reachable."""
