"""`cxr serve`: the app under waitress, a pure-Python production WSGI server (Linux, macOS,
Windows alike), never Flask's development server.

The bounds a public server needs (per-route body limits before reading, receive deadlines,
connections per client, JSON errors, responses never spooled to disk) live in
`cxr.serve.transport`; the model queue with its deadline in `cxr.serve.queue`; Host, origin and
token checks in `cxr.serve.security`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import ServeConfig, serve_config
from cxr.inference.analysis import Analyser
from cxr.serve import REQUEST_OVERHEAD, create_app, default_web_dir
from cxr.serve.queue import ModelQueue
from cxr.serve.security import is_loopback
from cxr.serve.transport import GuardedServer, TransportLimits, create_guarded_server


def transport_limits(
    cfg: ServeConfig, per_client_connections: int = 16, header_timeout_s: float = 10.0
) -> TransportLimits:
    return TransportLimits(
        upload_bytes=cfg.max_upload_bytes + REQUEST_OVERHEAD,
        batch_bytes=cfg.max_batch_bytes + REQUEST_OVERHEAD,
        per_client_connections=per_client_connections,
        header_timeout_s=header_timeout_s,
    )


def configure_logging(level: str = "info") -> None:
    """One line per request (cxr.access); pydicom's chatter about a bad file only at debug."""
    numeric = getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(numeric)
    logging.getLogger("pydicom").setLevel(logging.DEBUG if numeric <= logging.DEBUG else 100)


def build_server(
    cfg: ServeConfig,
    host: str,
    port: int,
    per_client_connections: int = 16,
    header_timeout_s: float = 10.0,
    engine: Analyser | None = None,
) -> GuardedServer:
    """The app on a bound, guarded waitress server (call `.run()`); used by tests too."""
    app = create_app(cfg, engine=engine)
    queue: ModelQueue = app.extensions["cxr_queue"]
    limits = transport_limits(cfg, per_client_connections, header_timeout_s)
    return create_guarded_server(app, host, port, queue.threads, limits)


def run_server(
    config: ServeConfig | dict,
    host: str = "127.0.0.1",
    port: int = 8000,
    per_client_connections: int = 16,
    log_level: str = "info",
) -> None:
    """Load the model once, then serve the API and the front end until interrupted."""
    cfg = serve_config(config)
    configure_logging(log_level)
    engine = Analyser(cfg)  # fails here, with a clear CxrError, if the run folder is unusable
    server = build_server(cfg, host, port, per_client_connections, engine=engine)
    web = Path(cfg.web_dir) if cfg.web_dir else default_web_dir()
    built = (web / "index.html").is_file()
    info = engine.info
    print(f"cxr serve: {info['arch']} '{info['name']}', findings: {', '.join(info['findings'])}")
    print(f"  out-of-distribution gate: {info['ood_gate']['note']}")
    print(f"  front end: {web}" + ("" if built else " (not built: run `bash web/ci.sh`)"))
    saved = f", copies saved to {cfg.save_uploads}" if cfg.save_uploads else ", never on disk"
    print("  uploads are kept in memory" + saved)
    print(
        f"  model work: {cfg.workers} at once, {cfg.queue} waiting, {cfg.deadline_s:g} s "
        "deadline; health and the front end never wait behind it"
    )
    print(
        f"  batching: up to {cfg.max_batch} concurrent requests per model call, "
        f"{cfg.batch_wait_ms:g} ms wait"
        if cfg.max_batch > 1
        else "  batching: off (--max-batch 1), one model call per request"
    )
    print(f"  {NOT_A_MEDICAL_DEVICE}")
    if not is_loopback(host) and not cfg.token_file:
        print(
            f"  WARNING: listening on {host} without --token-file: anyone who can reach this "
            "machine can send images to the model and read its answers",
            file=sys.stderr,
        )
    print(f"  listening on http://{host}:{server.effective_port}/  (Ctrl+C stops)", flush=True)
    try:
        server.run()
    finally:
        server.task_dispatcher.shutdown()
