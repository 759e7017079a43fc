"""Load on `cxr serve`: requests/s, latency percentiles and errors for 1, 4 and 16 keep-alive
clients, with and without a Grad-CAM heatmap, and the server's RSS before and after the load, on
the PyTorch and the ONNX backends, with micro-batching on (--max-batch 16: concurrent requests
share one model call) and off (--max-batch 1), side by side.

The server runs as its own process (`cxr serve`, waitress, every guard on), so its RSS is its
own; clients are threads here, each holding one keep-alive connection. The image is a real
Kermany X-ray at 224 px. Without --model the run is an untrained ResNet-18 at 224 px with the
14 NIH findings (speed does not depend on the weights), exported to ONNX here.

    .venv/bin/python benchmarks/serve_load.py [--model RUN] [--n 200] [--clients 1 4 16]
        [--backends torch onnx] [--batching on off] [--rss-requests 1000]
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import multipart, test_images, untrained_run  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model: Path, backend: str, port: int, workers: int, max_batch: int
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "cxr.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--backend",
        backend,
        "--threads",
        str(workers),
        "--max-batch",
        str(max_batch),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"cxr serve exited: {proc.stdout.read()[-2000:]}")
    proc.kill()
    raise SystemExit("cxr serve did not answer /api/health within 180 s")


def load(port: int, body: bytes, ctype: str, heatmaps: str, clients: int, n: int):
    """n requests over `clients` keep-alive connections: (latencies s, errors, wall s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in iter(lambda: next(counter, None), None):
            start = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    f"/api/predict?heatmaps={heatmaps}&images=true",
                    body,
                    {"Content-Type": ctype},
                )
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException) as exc:
                ok, response = False, exc
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors.append(str(getattr(response, "status", response)))
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a trained run folder (default: untrained ResNet-18)")
    ap.add_argument("--n", type=int, default=200, help="requests per case")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--rss-requests", type=int, default=1000, help="requests for the RSS check")
    ap.add_argument("--workers", type=int, default=4, help="cxr serve --threads")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument(
        "--batching",
        nargs="+",
        default=["on", "off"],
        choices=["on", "off"],
        help="on: cxr serve --max-batch MAX_BATCH (concurrent requests share a model call); "
        "off: --max-batch 1",
    )
    ap.add_argument("--max-batch", type=int, default=16, help="cxr serve --max-batch when on")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = (
        Path(args.model) if args.model else untrained_run(Path(tmp.name) / "run", 224, "resnet18")
    )
    if "onnx" in args.backends and not (model / "model.onnx").is_file():
        subprocess.run(
            [sys.executable, "-m", "cxr.cli", "export", "--model", str(model)],
            check=True,
            capture_output=True,
        )
    body, ctype = multipart(test_images()["224x224 8-bit PNG"], "x.png")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average before: {os.getloadavg()[0]:.1f}; model: "
        f"{model if args.model else 'untrained ResNet-18, 224 px, 14 outputs'}"
    )
    print()
    print(
        "| backend | batching | heatmap | clients | requests/s | p50 ms | p95 ms | p99 ms | "
        "errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rss_rows = []
    for backend, batching in [(b, m) for b in args.backends for m in args.batching]:
        max_batch = args.max_batch if batching == "on" else 1
        proc = start_server(model, backend, args.port, args.workers, max_batch)
        try:
            load(args.port, body, ctype, "none", 2, 6)  # warm up
            for heatmaps in ("none", "top"):
                for clients in args.clients:
                    lat, errors, wall = load(args.port, body, ctype, heatmaps, clients, args.n)
                    ms = np.percentile(np.asarray(lat) * 1000, [50, 95, 99])
                    print(
                        f"| {backend} | {batching} | {'no' if heatmaps == 'none' else 'top'} | "
                        f"{clients} | "
                        f"{len(lat) / wall:.1f} | {ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | "
                        f"{len(errors)} |",
                        flush=True,
                    )
            before = rss_mb(proc.pid)
            _, errors, _ = load(args.port, body, ctype, "none", 4, args.rss_requests)
            label = f"{backend}, batching {batching}"
            rss_rows.append((label, before, rss_mb(proc.pid), len(errors)))
            print(f"({label}: server RSS {before:.0f} -> {rss_rows[-1][2]:.0f} MB)", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print()
    for backend, before, after, errors in rss_rows:
        print(
            f"{backend}: server RSS {before:.0f} MB before and {after:.0f} MB after "
            f"{args.rss_requests} more requests ({errors} errors)"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
