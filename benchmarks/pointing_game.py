"""Do Grad-CAM heatmaps point at the finding? The pointing game on SYNTHETIC phantoms.

Trains a ResNet-18 on phantoms with planted lesions (or reuses a run trained on them), then, on
the held-out test split (patients never seen in training or threshold choice), asks per finding
and method: does the heatmap's maximum fall in the lesion mask (dilated by 3% of the side), how
much of its mass lies in the mask, does it lean to the lesion's side, against random maps on the
same grid and a map fixed at the centre. See `cxr.explain.pointing.pointing_game` for the
definitions.

    .venv/bin/python benchmarks/pointing_game.py                 # trains: 600 phantoms, 128 px
    .venv/bin/python benchmarks/pointing_game.py --run runs/demo-...   # reuse a synthetic run

Writes pointing_game_<layer>.json, pointing_game_<layer>.png (bars) and pointing_gallery.png
(overlays with the mask outlined) into the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from cxr.config import config_from_dict
from cxr.data.image_io import decode_image
from cxr.data.splits import keys_in_split
from cxr.data.synthetic import load_masks
from cxr.explain import format_pointing_table, heatmaps, overlay, pointing_game
from cxr.inference.predictor import Predictor
from cxr.train import train


def train_phantom_run(out: Path, n: int, size: int, epochs: int) -> Path:
    cfg = config_from_dict(
        {
            "data": {
                "path": "synthetic",
                "format": "synthetic",
                "synthetic_count": n,
                "test_fraction": 0.2,
            },
            "preprocess": {"image_size": size},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "early_stopping_patience": 0},
            "out_dir": str(out),
        }
    )
    train(cfg)
    return out


def plot_bars(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r['finding']}\n{r['method']}" for r in results]
    x = np.arange(len(results))
    for ax, (key, title) in zip(
        axes,
        [("hit_rate", "pointing game: max in lesion"), ("side_rate", "mass on lesion side")],
        strict=True,
    ):
        ax.bar(x - 0.27, [r[key] for r in results], 0.27, label="Grad-CAM")
        ax.bar(x, [r[f"random_{key}"] for r in results], 0.27, label="random maps")
        ax.bar(x + 0.27, [r[f"centre_{key}"] for r in results], 0.27, label="centre map")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("SYNTHETIC phantoms, held-out test split", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gallery(predictor: Predictor, root: Path, keys: list[str], path: Path, layer: str) -> None:
    """One positive test image per finding: overlay, with the lesion mask outlined in white."""
    tiles = []
    for finding in predictor.findings:
        key = next((k for k in keys if finding in load_masks(root, k)), None)
        if key is None:
            continue
        image = decode_image(key)
        rgb = overlay(image, heatmaps(predictor, image, [finding], layer=layer)[finding])
        mask = load_masks(root, key)[finding].astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (255, 255, 255), 1)
        cv2.putText(rgb, finding, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        tiles.append(cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(path), np.concatenate(tiles, axis=1)[..., ::-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run trained on synthetic phantoms")
    ap.add_argument("--out", default="runs/bench-pointing", help="where to train when no --run")
    ap.add_argument("--n", type=int, default=600, help="phantoms to train on")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++"])
    ap.add_argument("--layer", default="last", choices=["last", "finer", "layer4", "layer3"])
    args = ap.parse_args()

    if args.run:
        run_dir = Path(args.run)
    elif (Path(args.out) / "model.safetensors").is_file():
        run_dir = Path(args.out)
    else:
        run_dir = train_phantom_run(Path(args.out), args.n, args.image_size, args.epochs)
    predictor = Predictor.from_run_dir(run_dir)
    keys = sorted(keys_in_split(run_dir / "split.csv", args.split))
    if not keys:
        raise SystemExit(f"{run_dir}/split.csv has no {args.split} images")
    root = Path(keys[0]).parents[1]
    if not (root / "masks").is_dir():
        raise SystemExit(f"{run_dir} was not trained on synthetic phantoms (no masks in {root})")

    results, start = [], time.perf_counter()
    for method in args.methods:
        for finding in predictor.findings:
            results.append(
                pointing_game(predictor, root, keys, finding, method=method, layer=args.layer)
            )
    seconds = time.perf_counter() - start
    n_maps = sum(r["n_images"] for r in results)

    size = predictor.run.config.preprocess.image_size
    val = json.loads((run_dir / "val_metrics.json").read_text())["auroc"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"run {run_dir} ({size} px, {args.layer} grid {results[0]['grid']} x "
        f"{results[0]['grid']}), {args.split} split of SYNTHETIC phantoms; tolerance "
        f"{results[0]['tolerance_px']} px; validation AUROC "
        + ", ".join(f"{f} {v:.3f}" for f, v in val.items() if v is not None)
    )
    print(format_pointing_table(results))
    print(f"{n_maps} heatmaps (+ 20 random maps each) in {seconds:.1f} s")

    stem = f"pointing_game_{args.layer}"
    (run_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    plot_bars(results, run_dir / f"{stem}.png")
    gallery(predictor, root, keys, run_dir / "pointing_gallery.png", args.layer)
    print(f"written: {run_dir}/{stem}.json, {stem}.png, pointing_gallery.png")


if __name__ == "__main__":
    main()
