"""The JSON API blueprint, mounted at /api. Thin: parse the request, call the Engine, answer.

Every error is JSON `{"error": message, "code": short_code, "status": http_status}`; the
handlers for that live in `cxr.serve.create_app`, so a bad upload never stops the server.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.errors import BadRequest, CxrError, UploadTooLarge
from cxr.inference.analysis import Analyser
from cxr.serve.openapi import openapi_spec

api = Blueprint("api", __name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def describe_error(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, short code, message a person can act on) for any error of a request.

    A cxr error declares its own status and code (cxr.errors); nothing is read from its text."""
    if isinstance(exc, RequestEntityTooLarge):  # Werkzeug's: the whole request was too large
        cfg = engine().cfg
        if request.endpoint == "api.predict_batch":
            limit = f"{cfg.max_batch_mb:g} MB per batch request (cxr serve --max-batch-mb)"
        else:
            limit = f"{cfg.max_upload_mb:g} MB per image (cxr serve --max-upload-mb)"
        return 413, "too_large", f"upload too large: the limit is {limit}"
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return exc.code or 500, code, exc.description or exc.name
    if isinstance(exc, CxrError):
        return exc.http_status, exc.code, str(exc)
    return (
        500,
        "internal_error",
        (
            "the server failed on this request (a bug: the details are in the server log); "
            "it keeps serving other requests"
        ),
    )


def engine() -> Analyser:
    return current_app.extensions["cxr_engine"]


def _flag(name: str, default: bool) -> bool:
    raw = request.args.get(name, request.form.get(name))
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name}={raw!r}: expected true or false")


def _uploads(field: str, many: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploaded files: multipart field `field`, or a raw request body."""
    limit = engine().cfg.max_upload_bytes
    files = [f for f in request.files.getlist(field) if f.filename or f.content_length]
    if not files and request.files:
        other = ", ".join(sorted(request.files))
        raise BadRequest(f"no file in form field '{field}' (got field(s) {other})")
    items: list[tuple[str, bytes]] = []
    if files:
        for f in files:
            items.append((_display_name(f.filename), f.read()))
    elif request.content_length and not request.form:
        name = request.args.get("filename") or "upload"
        items.append((_display_name(name), request.get_data(cache=False)))
    if not items:
        how = "files" if many else "file"
        raise BadRequest(
            f"no image uploaded: send multipart/form-data with the image in the '{field}' field "
            f"(e.g. curl -F {how}=@image.png), or the image itself as the request body"
        )
    for name, data in items:
        if len(data) > limit:
            raise UploadTooLarge(
                f"{name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:g} MB limit "
                "per image (cxr serve --max-upload-mb)"
            )
    _save_if_asked(items)
    return items


def _display_name(name: str | None) -> str:
    """The client's file name, for messages only: its last path part, at most 120 characters."""
    name = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name or "upload")[:120]


def _save_if_asked(items: list[tuple[str, bytes]]) -> None:
    """Uploads stay in memory unless the operator turned saving on (--save-uploads DIR)."""
    folder = engine().cfg.save_uploads
    if not folder:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, data in items:
        safe = secure_filename(name) or "upload"
        (folder / f"{stamp}-{uuid.uuid4().hex[:8]}-{safe}").write_bytes(data)


@api.before_request
def _batch_limit():
    """Flask's MAX_CONTENT_LENGTH is one image's size; a batch request may carry more."""
    if request.endpoint == "api.predict_batch":
        request.max_content_length = engine().cfg.max_batch_bytes


@api.get("/health")
def health():
    eng = engine()
    return jsonify(
        status="ok",
        model_loaded=True,
        model=eng.info["name"],
        version=__version__,
        uptime_s=round(time.time() - eng.started, 3),
        notice=NOT_A_MEDICAL_DEVICE,
    )


@api.get("/model")
def model():
    return jsonify(engine().info)


@api.get("/openapi.json")
def openapi():
    return jsonify(openapi_spec(engine().info))


@api.post("/predict")
def predict():
    name, data = _uploads("file", many=False)[0]
    answer = engine().analyse(
        data,
        name,
        heatmaps=request.args.get("heatmaps", request.form.get("heatmaps")),
        images=_flag("images", True),
        overlays=_flag("overlays", False),
    )
    return jsonify(answer)


@api.post("/predict/batch")
def predict_batch():
    eng = engine()
    items = _uploads("files", many=True)
    if len(items) > eng.cfg.max_batch_files:
        raise BadRequest(
            f"{len(items)} files in one request, over the limit of {eng.cfg.max_batch_files}; "
            "send them in smaller batches"
        )
    heatmaps = request.args.get("heatmaps", request.form.get("heatmaps", "none"))
    images = _flag("images", False)
    eng.heatmap_findings(heatmaps, dict.fromkeys(eng.findings, 0.0), set())  # validate once
    start = time.perf_counter()
    results = []
    for name, data in items:
        try:
            results.append(eng.analyse(data, name, heatmaps=heatmaps, images=images))
        except Exception as exc:  # noqa: BLE001 - one bad file must not sink the batch
            status, code, message = describe_error(exc)
            if status >= 500:
                current_app.logger.exception("batch item %s failed", name)
            results.append({"file": name, "error": message, "code": code, "status": status})
    return jsonify(
        results=results,
        n_ok=sum("error" not in r for r in results),
        n_failed=sum("error" in r for r in results),
        seconds=round(time.perf_counter() - start, 5),
        notice=NOT_A_MEDICAL_DEVICE,
    )
