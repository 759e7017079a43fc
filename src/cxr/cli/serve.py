"""`cxr serve`: its flags and start-up, apart from the other commands so that starting the
server imports only what serving needs (no scikit-learn, matplotlib, Optuna or report code:
see `cxr.cli.main`, which builds only this command's parser for `cxr serve`)."""

from __future__ import annotations

import argparse

from cxr.cli.common import device_flag, gate_flag, model_flag, resolve_device
from cxr.config import serve_config


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)",
    )
    p.add_argument("--threads", type=int, default=4, help="requests in model work at once")
    p.add_argument("--queue", type=int, default=16, help="requests waiting (503 past it)")
    p.add_argument("--deadline-s", type=float, default=60.0, help="a request's time to its answer")
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="concurrent requests answered by one model call (1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a model call waits for more requests after the first",
    )
    p.add_argument("--max-connections-per-client", type=int, default=16)
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host to answer besides the bound address and localhost",
    )
    p.add_argument("--token-file", help="require the bearer token in this file (API routes)")
    p.add_argument("--save-uploads-max-mb", type=float, default=1024.0)
    p.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest image file")
    p.add_argument("--max-batch-mb", type=float, default=128.0, help="largest batch request")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="larger images are refused before decoding",
    )
    p.add_argument(
        "--save-uploads",
        metavar="DIR",
        help="keep a copy of each upload here (default: memory only)",
    )
    p.add_argument("--web-dir", help="built front end to serve (default: web/dist)")
    p.add_argument(
        "--allow-modality",
        action="store_true",
        help="read DICOM modalities other than CR/DX/DR/RG/OT (CT, MR, ...)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from cxr.errors import ConfigError
    from cxr.serve.security import default_allowed_hosts
    from cxr.serve.server import run_server  # the only command that needs Flask

    if args.threads < 1 or args.queue < 0 or args.max_connections_per_client < 1:
        raise ConfigError("--threads and --max-connections-per-client must be >= 1, --queue >= 0")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a port number from 1 to 65535")
    cfg = serve_config(
        {
            "model": args.model,
            "device": resolve_device(args.device),
            "max_upload_mb": args.max_upload_mb,
            "max_batch_mb": args.max_batch_mb,
            "max_pixels": args.max_pixels,
            "save_uploads": args.save_uploads,
            "web_dir": args.web_dir,
            "ood_gate": not args.no_ood_gate,
            "backend": args.backend,
            "workers": args.threads,
            "queue": args.queue,
            "deadline_s": args.deadline_s,
            "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms,
            "allowed_hosts": (*default_allowed_hosts(args.host), *args.allowed_host),
            "token_file": args.token_file,
            "save_uploads_max_mb": args.save_uploads_max_mb,
            "allow_modality": args.allow_modality,
        }
    )
    run_server(
        cfg,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        per_client_connections=args.max_connections_per_client,
    )
    return 0


COMMANDS = {
    "serve": (
        "the web app and JSON API for a trained run (waitress)",
        serve_arguments,
        run_serve,
        [model_flag, device_flag, gate_flag],
    ),
}
