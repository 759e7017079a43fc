"""The web app: `create_app(config)` builds a Flask app for one trained run.

An application factory with no global state (Flask's tutorial pattern): the loaded model lives in
`app.extensions["cxr_engine"]`, so tests can build as many apps as they like. The API blueprint
is mounted at /api; the built React front end (web/dist) is served from / on the same origin.
Production serving goes through `cxr.serve.server` (waitress), never Flask's debug server.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.security import safe_join

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import ServeConfig, serve_config
from cxr.inference.analysis import Analyser
from cxr.serve.access_log import AccessLog
from cxr.serve.api import api, describe_error
from cxr.serve.display_cache import DisplayCache
from cxr.serve.queue import ModelQueue
from cxr.serve.saved_uploads import UploadFolder
from cxr.serve.security import AccessGuard, read_token
from cxr.serve.static import send_front_end_file

__all__ = ["create_app", "default_web_dir"]

REQUEST_OVERHEAD = 1024 * 1024  # multipart headers and form fields around the files
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class InMemoryRequest(Request):
    """Uploads are held in memory: Werkzeug would spool files over 500 KB to a temporary file."""

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()


def default_web_dir() -> Path:
    """web/dist of a source checkout (where `npm run build` writes the front end)."""
    return Path(__file__).resolve().parents[3] / "web" / "dist"


def create_app(config: ServeConfig | dict, engine: Analyser | None = None) -> Flask:
    """A Flask app serving the run named by config.model (loaded once, here).

    `engine` lets a caller share one loaded model between apps (tests); by default it is built
    from `config`.
    """
    cfg = serve_config(config)
    if engine is None:
        engine = Analyser(cfg)
    else:  # share the loaded model, under this app's limits
        engine = copy.copy(engine)
        engine.cfg = cfg
    app = Flask(__name__, static_folder=None)
    app.request_class = InMemoryRequest
    # One image per request by default; the batch endpoint raises it for its own requests.
    app.config.update(MAX_CONTENT_LENGTH=cfg.max_upload_bytes + REQUEST_OVERHEAD)
    app.json.sort_keys = False
    app.extensions["cxr_engine"] = engine
    app.extensions["cxr_queue"] = ModelQueue(cfg.workers, cfg.queue, cfg.deadline_s)
    app.extensions["cxr_display"] = DisplayCache()  # full-depth display images, in memory
    if cfg.save_uploads:
        app.extensions["cxr_upload_folder"] = UploadFolder(
            cfg.save_uploads, int(cfg.save_uploads_max_mb * 2**20)
        )
    # Host, origin and token checks run before Flask reads a body; the access log sees all.
    app.wsgi_app = AccessLog(
        AccessGuard(app.wsgi_app, cfg.allowed_hosts, read_token(cfg.token_file))
    )
    app.register_blueprint(api, url_prefix="/api")
    _register_errors(app)
    _register_front_end(app, Path(cfg.web_dir) if cfg.web_dir else default_web_dir())

    @app.after_request
    def _headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", _CSP)
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def _register_errors(app: Flask) -> None:
    def as_json(exc: BaseException):
        status, code, message = describe_error(exc)
        if status >= 500:
            app.logger.exception("request %s %s failed", request.method, request.path)
        body = {"error": message, "code": code, "status": status}
        ood = getattr(exc, "ood", None)
        if ood:
            body["ood"] = ood
        headers = {}
        if isinstance(exc, HTTPException) and exc.code == 405:
            headers = {k: v for k, v in exc.get_headers() if k == "Allow"}
        if hasattr(exc, "retry_after"):
            headers["Retry-After"] = str(exc.retry_after)
        return jsonify(body), status, headers

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if not request.path.startswith("/api/") and exc.code == 404:
            return exc  # the front end's own 404 page
        if request.path.startswith("/api/") and exc.code == 405:
            # routing saw the front end's GET catch-all: say what the API itself takes
            exc = _api_miss(app, request.path.lstrip("/"))
        return as_json(exc)

    @app.errorhandler(Exception)
    def _any(exc: Exception):
        return as_json(exc)


def _api_methods(app: Flask, path: str) -> set[str]:
    """The methods the API's own routes take at `path` (not the front end's catch-all)."""
    methods: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.rule == path:
            methods |= set(rule.methods or ()) - {"OPTIONS"}
    return methods


def _api_miss(app: Flask, path: str) -> HTTPException:
    """A request under /api/ that no API route takes: 405 (with exactly the API's methods in
    Allow) if the path exists for another method, else 404."""
    allowed = _api_methods(app, f"/{path}")
    if not allowed:
        return NotFound(f"no API endpoint /{path}; see /api/openapi.json")
    shown = " or ".join(sorted(allowed - {"HEAD"}))
    return MethodNotAllowed(
        sorted(allowed), description=f"/{path} takes {shown} (see /api/openapi.json)"
    )


def _register_front_end(app: Flask, web_dir: Path) -> None:
    index = web_dir / "index.html"

    @app.before_request
    def _api_options():
        """OPTIONS under /api/ lists the API's methods only, not the front end's GET."""
        if request.method == "OPTIONS" and request.path.startswith("/api/"):
            allowed = _api_methods(app, request.path)
            if not allowed:
                raise _api_miss(app, request.path.lstrip("/"))
            return "", 204, {"Allow": ", ".join(sorted(allowed | {"OPTIONS"}))}
        return None

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def front_end(path: str):
        if path.startswith("api/"):
            raise _api_miss(app, path)
        if not index.is_file():
            return (
                "<!doctype html><title>cxr</title><h1>cxr API</h1>"
                f"<p>The front end is not built: run <code>bash web/ci.sh</code> (or "
                "<code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>). The API "
                "answers at <a href='/api/health'>/api/health</a>; its description is at "
                f"<a href='/api/openapi.json'>/api/openapi.json</a>.</p><p>{NOT_A_MEDICAL_DEVICE}"
                "</p>",
                200,
                {"Content-Type": "text/html; charset=utf-8"},
            )
        # the joined path is checked before the filesystem is asked: '../../etc/passwd' must
        # answer exactly as a missing file does, or the route tells which files exist
        inside = safe_join(str(web_dir), path) if path else None
        if inside is not None and Path(inside).is_file():
            return send_front_end_file(web_dir, path)
        return send_front_end_file(web_dir, "index.html")  # client-side routes
