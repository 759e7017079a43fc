"""Every error a user can act on, in one place. The CLI prints the message (never a traceback) and
exits with `exit_code`; the web API answers JSON with `http_status` and `code`. So the status of
an error is declared once, by its class, and nobody matches message text to choose it.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base class: anything the user can fix by changing their input or config."""

    http_status = 422
    code = "cannot_process"
    exit_code = 2


class ConfigError(CxrError):
    """A config field is unknown, out of range or inconsistent."""

    code = "bad_config"


class BadRequest(ConfigError):
    """A request parameter is wrong; the message names it and the accepted values."""

    http_status = 400
    code = "bad_request"


class DataError(CxrError):
    """A data file, row or field is missing or malformed; the message names which."""

    code = "unreadable_image"

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


class TooLarge(DataError):
    """An input is over a size or pixel limit; refused before it is decoded."""

    http_status = 413
    code = "too_many_pixels"


class UploadTooLarge(CxrError):
    """An uploaded file is over the server's size limit (cxr serve --max-upload-mb)."""

    http_status = 413
    code = "too_large"


class NotAChestXray(DataError):
    """The file decoded, but it is plainly not a chest radiograph (a colour photograph, or the
    run's out-of-distribution gate refused it). `ood` carries the gate's verdict when it ran."""

    code = "not_a_chest_xray"

    def __init__(self, message: str, path: str | None = None, ood: dict | None = None):
        super().__init__(message, path=path)
        self.ood = ood


class OfflineError(CxrError):
    """Something must be downloaded and the network is not reachable."""

    http_status = 503
    code = "offline"


class DistributedError(CxrError):
    """The processes of a distributed launch do not agree, or the launch is malformed."""


class StudyError(CxrError):
    """The tuning storage cannot be used, or the study does not fit this search space or split."""


class DecisionError(ConfigError):
    """A "decision" field that does not fit the run (wrong rule, unknown class, bad threshold)."""


class ServerBusy(CxrError):
    """The server cannot take this request now; the client should retry after `retry_after`."""

    http_status = 503
    code = "busy"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(CxrError):
    """The client hung up before its turn: its work is dropped, nothing is answered."""

    http_status = 503
    code = "client_gone"


class DisplayExpired(CxrError):
    """A display image's id is unknown: it expired, was evicted, or the server restarted."""

    http_status = 404
    code = "display_expired"


class DecodeWarning(UserWarning):
    """The decoder made a choice the user should know about (a fallback window, a bit depth)."""


class LeakageError(DataError):
    """Evaluated images or patients were in the run's training or validation data."""

    code = "overlaps_training_data"
