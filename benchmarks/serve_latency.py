"""Latency of `POST /api/predict` through the real server (waitress on localhost), and requests/s
with concurrent clients.

Cases: a 224 x 224 8-bit PNG (a real Kermany X-ray) and a 2048 x 2048 16-bit PNG (a real NIH
X-ray enlarged), each without and with a Grad-CAM heatmap (the top finding). Latency is the
client's wall time per request (upload, decode, preprocess, model, heatmap, PNG encoding,
JSON), median and 95th percentile. Targets (ResNet-18, 224 px, 2-core CPU): < 100 ms median
without heatmap, < 300 ms with.

By default the model is an untrained ResNet-18 at 224 px with the 14 NIH findings (speed does not
depend on the weights, so no training is needed); pass --model RUN to time a trained run.

    .venv/bin/python benchmarks/serve_latency.py [--model RUN] [--n 30] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]


def untrained_run(folder: Path, image_size: int, arch: str) -> Path:
    """A run folder (config, model.json, weights) for an untrained model: enough to time it."""
    from cxr.checkpoint import save_weights, write_json
    from cxr.config import config_from_dict, save_config
    from cxr.models import build_model

    cfg = config_from_dict(
        {"preprocess": {"image_size": image_size}, "model": {"arch": arch}, "out_dir": str(folder)}
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.json")
    torch.manual_seed(0)
    save_weights(build_model(cfg.model, len(NIH_FINDINGS)), folder / "model.safetensors")
    write_json(
        folder / "model.json",
        {
            "findings": NIH_FINDINGS,
            "task": "multilabel",
            "thresholds": dict.fromkeys(NIH_FINDINGS, 0.5),
            "threshold_method": "fixed 0.5",
            "arch": arch,
            "image_size": image_size,
            "training_data": {"source": "none: untrained, for timing only"},
            "best_epoch": 0,
        },
    )
    return folder


def test_images() -> dict[str, bytes]:
    kermany = SHARED / "kermany-pneumonia" / "chest_xray" / "train" / "NORMAL"
    nih = SHARED / "nih-chestxray14-samples" / "images" / "00000001_000.png"
    if not kermany.is_dir() or not nih.is_file():
        raise SystemExit(f"real images not found under {SHARED.resolve()}")
    small = cv2.imread(str(sorted(kermany.iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(small, (224, 224), interpolation=cv2.INTER_AREA)
    big = cv2.imread(str(nih), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(big, (2048, 2048), interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 257
    return {
        "224x224 8-bit PNG": cv2.imencode(".png", small)[1].tobytes(),
        "2048x2048 16-bit PNG": cv2.imencode(".png", big)[1].tobytes(),
    }


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, ctype: str, heatmaps: str) -> tuple[float, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request(
        "POST", f"/api/predict?heatmaps={heatmaps}&images=true", body, {"Content-Type": ctype}
    )
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
    return elapsed, json.loads(payload)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a trained run folder (default: untrained ResNet-18)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=30, help="timed requests per case")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--concurrent-requests", type=int, default=40)
    ap.add_argument("--max-seconds", type=float, default=120, help="per case, a safety stop")
    args = ap.parse_args()

    import logging

    from cxr.config import serve_config
    from cxr.inference.analysis import Analyser as Engine
    from cxr.serve.server import build_server

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "queue depth" is expected here
    tmp = tempfile.TemporaryDirectory()
    model = args.model or untrained_run(Path(tmp.name) / "run", args.image_size, args.arch)
    cfg = serve_config({"model": str(model), "workers": args.clients, "queue": 64})
    engine = Engine(cfg)
    server = build_server(cfg, "127.0.0.1", 0, engine=engine)
    port = int(server.effective_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    info = engine.info
    print(
        f"model: {info['arch']} at {info['image_size']} px, {len(info['findings'])} outputs"
        f" ({'untrained, timing only' if not args.model else model})"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| image | heatmap | median ms | p95 ms | server median ms | requests |")
    print("|---|---|---|---|---|---|")
    images = test_images()
    for label, data in images.items():
        body, ctype = multipart(data, "x.png")
        for heatmaps in ("none", "top"):
            for _ in range(args.warmup):
                post(port, body, ctype, heatmaps)
            wall, server_s = [], []
            deadline = time.monotonic() + args.max_seconds
            while len(wall) < args.n and time.monotonic() < deadline:
                elapsed, answer = post(port, body, ctype, heatmaps)
                wall.append(elapsed)
                server_s.append(answer["seconds"])
            shown = "no" if heatmaps == "none" else "yes (top finding)"
            print(
                f"| {label} | {shown} | {1000 * statistics.median(wall):.0f} | "
                f"{1000 * percentile(wall, 95):.0f} | "
                f"{1000 * statistics.median(server_s):.0f} | {len(wall)} |",
                flush=True,
            )

    body, ctype = multipart(images["224x224 8-bit PNG"], "x.png")
    done: list[float] = []
    lock = threading.Lock()
    per_client = max(1, args.concurrent_requests // args.clients)

    def client() -> None:
        for _ in range(per_client):
            elapsed, _ = post(port, body, ctype, "none")
            with lock:
                done.append(elapsed)

    start = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = time.perf_counter() - start
    print()
    print(
        f"{args.clients} concurrent clients, 224 px PNG, no heatmap: {len(done) / total:.1f} "
        f"requests/s ({len(done)} requests in {total:.1f} s; median latency "
        f"{1000 * statistics.median(done):.0f} ms); load average after: "
        f"{os.getloadavg()[0]:.1f}"
    )
    tmp.cleanup()  # the server's daemon thread ends with the process (closing it mid-loop
    # from here races waitress's own trigger and prints tracebacks)


if __name__ == "__main__":
    main()
