"""The JSON API blueprint, mounted at /api. Thin: parse the request, call the Engine, answer.

Every error is JSON `{"error": message, "code": short_code, "status": http_status}`; the
handlers for that live in `cxr.serve.create_app`, so a bad upload never stops the server.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.errors import BadRequest, ClientGone, CxrError, DisplayExpired, UploadTooLarge
from cxr.inference.analysis import Analyser
from cxr.serve.display_cache import DisplayCache
from cxr.serve.openapi import openapi_spec
from cxr.serve.queue import ModelQueue
from cxr.serve.saved_uploads import UploadFolder

api = Blueprint("api", __name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def describe_error(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, short code, message a person can act on) for any error of a request.

    A cxr error declares its own status and code (cxr.errors); nothing is read from its text."""
    if isinstance(exc, RequestEntityTooLarge):  # Werkzeug's: the whole request was too large
        cfg = engine().cfg
        if (request.content_length or 0) <= (request.max_content_length or 0):
            app = current_app.config  # the body fits: werkzeug's form limits refused it
            return (
                413,
                "form_too_large",
                (
                    f"the form has more than {app['MAX_FORM_PARTS']} parts, or a field that is not "
                    f"a file is over {app['MAX_FORM_MEMORY_SIZE'] // 1000} KB; send fewer files "
                    "per request, and images only as files"
                ),
            )
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


def model_queue() -> ModelQueue:
    return current_app.extensions["cxr_queue"]


def _model_turn():
    """A turn at the model for this request (503 when busy or late; dropped if client gone)."""
    env = request.environ
    return model_queue().turn(env.get("cxr.received"), env.get("waitress.client_disconnected"))


def _heatmaps_param(default: str | None) -> str | None:
    """`heatmaps` from the query or the form; both, and different, is an error."""
    query, form = request.args.get("heatmaps"), request.form.get("heatmaps") or None
    if query is not None and form is not None and query != form:
        raise BadRequest(
            f"heatmaps is {query!r} in the query but {form!r} in the form: send it once"
        )
    return query if query is not None else form if form is not None else default


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
    """(name, bytes) of the uploaded files: multipart field `field`, or a raw request body.

    Sizes are checked by the caller: a batch answers an oversized file with its own error.
    """
    items: list[tuple[str, bytes]] = []
    for f in request.files.getlist(field):
        data = f.read()
        if f.filename or data:  # a part with filename="" but content is still a file
            items.append((_display_name(f.filename), data))
    if not items and request.files:
        other = ", ".join(sorted(request.files))
        raise BadRequest(f"no file in form field '{field}' (got field(s) {other})")
    multipart = request.mimetype == "multipart/form-data"
    if not items and multipart and not request.form:
        raise BadRequest(
            "the multipart/form-data body could not be read (no boundary= in its Content-Type, "
            "or a malformed body): send it with curl -F or a browser's FormData"
        )
    if not items and not multipart and request.content_length and not request.form:
        name = request.args.get("filename") or "upload"
        items.append((_display_name(name), request.get_data(cache=False)))
    if not items:
        how = "files" if many else "file"
        raise BadRequest(
            f"no image uploaded: send multipart/form-data with the image in the '{field}' field "
            f"(e.g. curl -F {how}=@image.png), or the image itself as the request body"
        )
    return items


def _check_size(name: str, data: bytes) -> None:
    limit = engine().cfg.max_upload_bytes
    if len(data) > limit:
        raise UploadTooLarge(
            f"{name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:g} MB limit "
            "per image (cxr serve --max-upload-mb)"
        )


def _display_name(name: str | None) -> str:
    """The client's file name, for messages only: its last path part, at most 120 characters."""
    name = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name or "upload")[:120]


def _save_if_asked(name: str, data: bytes) -> None:
    """Uploads stay in memory unless the operator turned saving on (--save-uploads DIR);
    then only images the model answered are kept, up to the folder's size cap."""
    folder: UploadFolder | None = current_app.extensions.get("cxr_upload_folder")
    if folder is not None:
        folder.save(name, data)


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


def display_cache() -> DisplayCache:
    return current_app.extensions["cxr_display"]


def _keep_display(data: bytes) -> dict | None:
    """The display PNG into the in-memory cache; where the browser fetches it, and until when."""
    cache = display_cache()
    token = cache.put(data)
    if token is None:
        return None
    return {"url": f"/api/display/{token}", "expires_s": int(cache.ttl_s)}


@api.get("/display/<token>")
def display(token: str):
    """A display image by the id a predict answer gave: lossless PNG at the preview's depth."""
    data = display_cache().get(token)
    if data is None:
        raise DisplayExpired(
            "this display image is no longer held (images are kept in memory for "
            f"{display_cache().ttl_s:g} s and never stored): analyse the file again"
        )
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _depth() -> int:
    raw = request.args.get("depth", request.form.get("depth", "8"))
    if raw.strip() not in ("8", "16"):
        raise BadRequest(f"depth={raw!r}: expected 8 or 16 (bits of the preview PNG)")
    return int(raw)


@api.post("/predict")
def predict():
    name, data = _uploads("file", many=False)[0]
    _check_size(name, data)
    heatmaps = _heatmaps_param(None)
    options = {
        "images": _flag("images", True),
        "overlays": _flag("overlays", False),
        "depth": _depth(),
        "layer": request.args.get("heatmap_layer", request.form.get("heatmap_layer", "last")),
    }
    engine().heatmap_findings(heatmaps, dict.fromkeys(engine().findings, 0.0), set())
    with _model_turn() as turn:
        answer = engine().analyse(
            data, name, heatmaps=heatmaps, waiter=turn, keep_display=_keep_display, **options
        )
    _save_if_asked(name, data)
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
    heatmaps = _heatmaps_param("none")
    images = _flag("images", False)
    eng.heatmap_findings(heatmaps, dict.fromkeys(eng.findings, 0.0), set())  # validate once
    start = time.perf_counter()
    results = []
    with _model_turn() as deadline:
        for name, data in items:
            try:
                deadline.check(f"before {name}")
                _check_size(name, data)
                results.append(
                    eng.analyse(data, name, heatmaps=heatmaps, images=images, waiter=deadline)
                )
                _save_if_asked(name, data)
            except ClientGone:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not sink the batch
                status, code, message = describe_error(exc)
                if status >= 500 and status != 503:
                    current_app.logger.exception("batch item %s failed", name)
                item = {"file": name, "error": message, "code": code, "status": status}
                if getattr(exc, "ood", None):
                    item["ood"] = exc.ood  # what the single endpoint says about a refusal
                results.append(item)
    return jsonify(
        results=results,
        n_ok=sum("error" not in r for r in results),
        n_failed=sum("error" in r for r in results),
        seconds=round(time.perf_counter() - start, 5),
        notice=NOT_A_MEDICAL_DEVICE,
    )
