"""`cxr serve`: the app under waitress, a pure-Python production WSGI server (Linux, macOS,
Windows alike), never Flask's development server.

Waitress buffers request bodies itself and, by default, moves a body over 512 KB to a temporary
file; `inbuf_overflow` is raised above the largest accepted request so uploads stay in memory,
and `max_request_body_size` refuses anything larger before reading it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import ServeConfig, serve_config
from cxr.inference.analysis import Analyser
from cxr.serve import REQUEST_OVERHEAD, create_app, default_web_dir


def waitress_options(cfg: ServeConfig, host: str, port: int, threads: int) -> dict:
    largest = max(cfg.max_upload_bytes, cfg.max_batch_bytes) + REQUEST_OVERHEAD
    return {
        "host": host,
        "port": port,
        "threads": threads,
        "max_request_body_size": largest,
        "inbuf_overflow": largest + 1,  # never spool an upload to disk
        "ident": "cxr",
        "channel_timeout": 120,
    }


def run_server(config: ServeConfig | dict, host: str = "127.0.0.1", port: int = 8000,
               threads: int = 4) -> None:  # fmt: skip
    """Load the model once, then serve the API and the front end until interrupted."""
    from waitress import serve

    cfg = serve_config(config)
    engine = Analyser(cfg)  # fails here, with a clear CxrError, if the run folder is unusable
    app = create_app(cfg, engine=engine)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    web = Path(cfg.web_dir) if cfg.web_dir else default_web_dir()
    built = (web / "index.html").is_file()
    info = engine.info
    print(f"cxr serve: {info['arch']} '{info['name']}', findings: {', '.join(info['findings'])}")
    print(f"  out-of-distribution gate: {info['ood_gate']['note']}")
    print(f"  front end: {web}" + ("" if built else " (not built: run `bash web/ci.sh`)"))
    saved = f", copies saved to {cfg.save_uploads}" if cfg.save_uploads else ", never on disk"
    print("  uploads are kept in memory" + saved)
    print(f"  {NOT_A_MEDICAL_DEVICE}")
    print(f"  listening on http://{host}:{port}/  (Ctrl+C stops)", flush=True)
    serve(app, **waitress_options(cfg, host, port, threads))
