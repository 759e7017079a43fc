"""Where `cxr serve`'s resident memory goes: RSS after each step of start-up and of the first
requests (imports, the model, the first prediction, the first Grad-CAM heatmap, which makes the
private model copy Grad-CAM computes on).

    .venv/bin/python benchmarks/serve_memory.py --model RUN
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a run folder")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    steps = [("python", rss_mb())]
    import torch

    steps.append(("import torch", rss_mb()))
    from serve_latency import test_images

    from cxr.config import ServeConfig
    from cxr.serve import create_app

    steps.append(("import cxr.serve (flask, waitress, cv2, ...)", rss_mb()))
    app = create_app(ServeConfig(model=args.model, backend=args.backend))
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
    steps.append(("20 more predictions", rss_mb()))
    post("top")
    steps.append(("first Grad-CAM heatmap (model copy made)", rss_mb()))
    for _ in range(20):
        post("top")
    steps.append(("20 more with a heatmap", rss_mb()))

    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op; backend {args.backend}"
    )
    print()
    print("| step | RSS MB | + MB |")
    print("|---|---|---|")
    last = steps[0][1]
    for name, value in steps:
        print(f"| {name} | {value:.0f} | {value - last:+.0f} |")
        last = value


if __name__ == "__main__":
    main()
