"""Where `cxr serve`'s resident memory goes: RSS after each step of start-up and of the first
requests (imports, the model, the first prediction, the first Grad-CAM heatmap, which makes the
private model copy Grad-CAM computes on), on each backend, before and after the idle-memory cuts.

"before" repeats what `cxr serve` did until the cuts: import every CLI command (training,
evaluation, reports: scikit-learn, matplotlib, ...) and, on ONNX, build the PyTorch model at
start. "after" is today's path: only the serve command, and on ONNX the PyTorch model only when
a heatmap is first asked for. Each column is its own fresh process.

    .venv/bin/python benchmarks/serve_memory.py --model RUN [--backends torch onnx]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, backend: str, mode: str) -> list[tuple[str, float]]:
    """The steps of one fresh server process, with RSS after each."""
    steps = [("python", rss_mb())]
    import torch

    torch.set_num_threads(torch.get_num_threads())
    steps.append(("import torch", rss_mb()))
    import torchvision  # noqa: F401 - what cxr.models imports for its families

    steps.append(("import torchvision (cxr.models)", rss_mb()))
    import pandas  # noqa: F401 - what cxr.data imports for its tables

    steps.append(("import pandas (cxr.data)", rss_mb()))
    if mode == "before":
        from cxr.cli import parser

        parser()  # every command's module: training, evaluation, reports
    else:
        from cxr.cli import parser

        parser(("serve",))  # what `cxr serve` builds now
    steps.append(("import the CLI (before: every command; after: serve)", rss_mb()))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_latency import test_images

    from cxr.config import ServeConfig
    from cxr.serve import create_app

    steps.append(("import cxr.serve (flask, waitress, cv2, ...)", rss_mb()))
    app = create_app(ServeConfig(model=model, backend=backend))
    engine = app.extensions["cxr_engine"]
    if mode == "before" and backend == "onnx":
        engine.predictor.model.eval()  # built at start before the cut
    steps.append(("model loaded (create_app)", rss_mb()))
    client = app.test_client()
    image = test_images()["224x224 8-bit PNG"]

    def post(heatmaps: str) -> None:
        answer = client.post(
            f"/api/predict?heatmaps={heatmaps}", data={"file": (io.BytesIO(image), "x.png")}
        )
        assert answer.status_code == 200, answer.get_data(as_text=True)[:300]

    post("none")
    steps.append(("first prediction, no heatmap", rss_mb()))
    for _ in range(20):
        post("none")
    steps.append(("20 more predictions (idle footprint)", rss_mb()))
    post("top")
    steps.append(("first Grad-CAM heatmap (model copy made)", rss_mb()))
    for _ in range(20):
        post("top")
    steps.append(("20 more with a heatmap", rss_mb()))
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a run folder (with model.onnx for onnx)")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, *args.child)))
        return

    import torch

    print(f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads")
    for backend in args.backends:
        columns = {}
        for mode in ("before", "after"):
            done = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--child", backend, mode],
                capture_output=True,
                text=True,
                check=True,
            )
            columns[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print()
        print(f"backend {backend}")
        print()
        print("| step | before RSS MB | + MB | after RSS MB | + MB |")
        print("|---|---|---|---|---|")
        last = {mode: columns[mode][0][1] for mode in columns}
        for (name, before), (_, after) in zip(columns["before"], columns["after"], strict=True):
            print(
                f"| {name} | {before:.0f} | {before - last['before']:+.0f} | "
                f"{after:.0f} | {after - last['after']:+.0f} |"
            )
            last = {"before": before, "after": after}


if __name__ == "__main__":
    main()
