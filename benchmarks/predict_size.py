"""Bytes of a `POST /api/predict` answer for large uploads, and of the display image fetched
apart from it (GET /api/display/<id>), as the web page asks for them (depth=16 for 16-bit files).

Cases: a 3000 x 3000 16-bit PNG made from a real 512 px NIH X-ray (enlarged, with sub-grey-level
grain so it compresses like a real large film), pydicom-data's real 1955 x 1841 15-bit chest CR
DICOM, and a real 224 px Kermany JPEG; each with the default heatmaps (auto: the top finding and
every positive one) and with all 14. Target: every answer under 150 KB.

The model is an untrained ResNet-18 at 224 px with the 14 NIH findings unless --model RUN is
given (sizes hardly depend on the weights, except through how many findings are positive).

    .venv/bin/python benchmarks/predict_size.py [--model RUN] [--image-size 224]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import SHARED, untrained_run  # noqa: E402

BUDGET = 150_000


def uploads() -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, bytes, depth the web page asks for)."""
    from pydicom.data import get_testdata_file

    nih = SHARED / "nih-chestxray14-samples" / "images" / "00000001_000.png"
    kermany = SHARED / "kermany-pneumonia" / "chest_xray" / "train" / "NORMAL"
    if not nih.is_file() or not kermany.is_dir():
        raise SystemExit(f"real images not found under {SHARED.resolve()}")
    pixels = cv2.imread(str(nih), cv2.IMREAD_GRAYSCALE)
    up = cv2.resize(pixels, (3000, 3000), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    grain = np.random.default_rng(0).normal(0.0, 0.15, up.shape)
    png16 = np.clip((up + grain) * 257, 0, 65535).astype(np.uint16)
    out = {
        "3000x3000 16-bit PNG (NIH, enlarged)": (
            "big16.png",
            cv2.imencode(".png", png16)[1].tobytes(),
            "16",
        ),
        "224x224 JPEG (Kermany)": ("k.jpeg", sorted(kermany.iterdir())[0].read_bytes(), "8"),
    }
    real = get_testdata_file("RG1_UNCR.dcm", download=False)
    if real is not None:
        out["1955x1841 15-bit DICOM (RG1_UNCR)"] = ("RG1_UNCR.dcm", Path(real).read_bytes(), "16")
    else:
        print("RG1_UNCR.dcm not installed (pip install pydicom-data): that case is skipped")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a trained run folder (default: untrained ResNet-18)")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()

    from cxr.serve import create_app

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(untrained_run(Path(tmp) / "run", args.image_size, "resnet18"))
        client = create_app({"model": model}).test_client()
        print(f"model: {model if args.model else 'untrained ResNet-18'}, budget {BUDGET} bytes")
        print(
            f"{'upload':40s} {'heatmaps':>9s} {'maps':>5s} {'answer B':>9s} {'display B':>10s} "
            f"{'depth':>5s} {'s':>6s}  ok"
        )
        worst = 0
        for label, (name, data, depth) in uploads().items():
            for heatmaps in ("auto", "all"):
                start = time.perf_counter()
                response = client.post(
                    f"/api/predict?heatmaps={heatmaps}&depth={depth}",
                    data={"file": (io.BytesIO(data), name)},
                )
                seconds = time.perf_counter() - start
                if response.status_code != 200:
                    raise SystemExit(
                        f"{label}: HTTP {response.status_code} {response.data[:300]!r}"
                    )
                body = response.get_json()
                display = client.get(body["image"]["display"]["url"])
                size = len(response.data)
                worst = max(worst, size) if heatmaps == "auto" else worst
                print(
                    f"{label:40s} {heatmaps:>9s} {len(body['heatmaps']):5d} {size:9d} "
                    f"{len(display.data):10d} {body['image']['depth']:5d} {seconds:6.2f}  "
                    f"{'yes' if size < BUDGET else 'NO'}"
                )
        print(f"largest answer with the default heatmaps: {worst} bytes (budget {BUDGET})")


if __name__ == "__main__":
    main()
