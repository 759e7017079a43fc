"""Validation AUROC and accuracy under image corruptions that mimic other scanners and sites.

    .venv/bin/python benchmarks/robustness.py --limit 2000 --size 128 --epochs 8 --seeds 3

(--data defaults to ../shared/data/kermany-pneumonia/chest_xray/train.)

Per seed: the default recipe and a stronger one (augment.preset heavy, random erasing, mixup /
CutMix, weight EMA) are trained on one patient-level split, and their ensemble is made with
`cxr ensemble`. Each model is scored on the validation images, clean and under ten corruptions
at three severities (after MedMNIST-C, Di Salvo et al. 2024): contrast, gamma, brightness, blur,
noise, JPEG, resolution, rotation, cropping margins, burnt-in text. A corruption is applied to
the decoded image, before the run's own preprocessing (CLAHE, resize), as a different scanner or
site would produce it; thresholds are the run's, chosen on clean validation images. Prints mean
and spread (sample standard deviation over seeds) per recipe, corruption and severity, and
writes every number to OUT/robustness.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cxr.config import config_from_dict
from cxr.data.image_io import decode_image
from cxr.data.prepare import resolve_table
from cxr.ensemble import make_ensemble
from cxr.metrics import compute_metrics
from cxr.models import probabilities_numpy
from cxr.preprocess import preprocess
from cxr.run import load_run, split_keys
from cxr.runtime import forward, select_runtime
from cxr.train import train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
_WORKING_SIDE = 4  # corrupt at up to 4 x the model's input side (not at full film resolution)


# ------------------------------------------------------------------------- corruptions
# Each takes a float32 image in [0, 1] (H, W), a severity 1..3 and a numpy Generator.


def _contrast(x, s, rng):
    c = [0.7, 0.5, 0.3][s - 1]
    return (x - x.mean()) * c + x.mean()


def _gamma(x, s, rng):
    g = [1.4, 1.8, 2.5][s - 1]
    return np.power(np.clip(x, 0, 1), g if rng.random() < 0.5 else 1 / g)


def _brightness(x, s, rng):
    b = [0.1, 0.2, 0.3][s - 1]
    return x + (b if rng.random() < 0.5 else -b)


def _blur(x, s, rng):
    sigma = [1.0, 2.0, 3.0][s - 1] * min(x.shape) / 224  # in pixels of a 224-px image
    return cv2.GaussianBlur(x, (0, 0), sigma)


def _noise(x, s, rng):
    return x + rng.normal(0, [0.03, 0.06, 0.1][s - 1], x.shape).astype(np.float32)


def _jpeg(x, s, rng):
    buf = io.BytesIO()
    Image.fromarray(_u8(x)).save(buf, format="JPEG", quality=[30, 15, 5][s - 1])
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def _resolution(x, s, rng):
    f = [2, 4, 8][s - 1]
    h, w = x.shape
    small = cv2.resize(x, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _rotation(x, s, rng):
    deg = [5, 10, 20][s - 1] * (1 if rng.random() < 0.5 else -1)
    h, w = x.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _crop(x, s, rng):
    """Tighter framing: a margin of 5 / 10 / 15% cut from every side."""
    m = [0.05, 0.10, 0.15][s - 1]
    h, w = x.shape
    return x[int(h * m) : h - int(h * m), int(w * m) : w - int(w * m)]


def _text(x, s, rng):
    """Burnt-in annotations: white text (side markers, dates, IDs) at random places."""
    img = Image.fromarray(_u8(x))
    draw = ImageDraw.Draw(img)
    size = max(8, min(x.shape) // 20)
    font = ImageFont.load_default(size=size)
    words = ["L", "R", "AP", "PORTABLE", "2019-03-14", "ID 0042731", "SUPINE"]
    for _ in range([1, 3, 6][s - 1]):
        xy = (
            int(rng.integers(0, max(1, x.shape[1] - 4 * size))),
            int(rng.integers(0, max(1, x.shape[0] - size))),
        )
        draw.text(xy, str(rng.choice(words)), fill=255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


CORRUPTIONS = {
    "contrast": _contrast,
    "gamma": _gamma,
    "brightness": _brightness,
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "resolution": _resolution,
    "rotation": _rotation,
    "crop": _crop,
    "text": _text,
}


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    out = CORRUPTIONS[name](image.astype(np.float32), severity, np.random.default_rng(seed))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------- recipes

STRONG = {
    "augment": {"preset": "heavy", "erase_prob": 0.25, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
}


def _config(args, seed: int, out: Path, strong: bool, split_file: str | None):
    raw = {
        "data": {"path": args.data, "val_fraction": 0.25, "split_file": split_file}
        | ({"limit": args.limit} if args.limit else {}),
        "preprocess": {"image_size": args.size},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": 2e-3,
            "seed": seed,
            "early_stopping_patience": 0,
            "cache_dir": args.cache_dir,
        },
        "out_dir": str(out),
    }
    if strong:
        raw["augment"] = STRONG["augment"]
        raw["train"]["ema_decay"] = args.ema_decay
    return config_from_dict(raw)


def _val_images(run_dir: Path, size: int) -> tuple[list[np.ndarray], list[str]]:
    """The run's validation images, decoded and shrunk to at most _WORKING_SIDE x size."""
    keys = sorted(split_keys(run_dir, "val"))
    images = []
    for key in keys:
        image = decode_image(key)
        scale = _WORKING_SIDE * size / max(image.shape)
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        images.append(image.astype(np.float32))
    return images, keys


def _score(run, pixels: np.ndarray, labels: np.ndarray, rt) -> dict:
    logits, _ = forward(run.model, pixels, rt)
    probs = probabilities_numpy(logits, run.task)
    m = compute_metrics(labels, probs, run.findings, run.task, run.thresholds)
    return {"auroc": m["mean_auroc"], "accuracy": m["accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DATA / "kermany-pneumonia" / "chest_xray" / "train"))
    p.add_argument("--limit", type=int, default=2000, help="images used (0: all)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ema-decay", type=float, default=0.99, help="strong recipe's weight EMA")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--out", default="runs/bench-robustness")
    p.add_argument("--cache-dir", default=".cache/cxr")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or pass --out elsewhere")
    rt = select_runtime(args.device)
    start = time.perf_counter()

    results: dict = {}  # recipe -> condition -> metric -> [per seed]
    for seed in range(args.seeds):
        root = out / f"seed{seed}"
        default = train(_config(args, seed, root / "default", False, None), progress=False)
        split = str(default.run_dir / "split.csv")
        strong = train(_config(args, seed, root / "strong", True, split), progress=False)
        make_ensemble(
            [default.run_dir, strong.run_dir], root / "ensemble", str(rt.device), progress=False
        )
        runs = {
            name: load_run(root / name, rt.device) for name in ("default", "strong", "ensemble")
        }
        images, keys = _val_images(root / "default", args.size)
        labels = _labels(runs["default"], keys)
        cfg = runs["default"].config.preprocess  # one preprocessing for all three (one split)
        conditions = {"clean": None} | {
            f"{c}/{s}": (c, s) for c in args.corruptions for s in args.severities
        }
        for cond, spec in conditions.items():
            pixels = np.stack(
                [
                    preprocess(
                        img if spec is None else corrupt(img, *spec, seed=1000 * seed + i), cfg
                    )
                    for i, img in enumerate(images)
                ]
            )
            for name, run in runs.items():
                score = _score(run, pixels, labels, rt)
                slot = results.setdefault(name, {}).setdefault(cond, {})
                for metric, value in score.items():
                    slot.setdefault(metric, []).append(value)
    elapsed = time.perf_counter() - start
    _print(results, args, elapsed)
    summary = {
        "args": vars(args),
        "seconds": elapsed,
        "machine": f"{platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "results": results,
    }
    (out / "robustness.json").write_text(json.dumps(summary, indent=2))
    print(f"all numbers: {out / 'robustness.json'}")


def _labels(run, keys: list[str]) -> np.ndarray:
    """Labels of the validation keys, from the run's training data (read as it was trained)."""
    table = resolve_table(run.config.data, run.config.train.cache_dir, progress=False)
    index = {k: i for i, k in enumerate(table.keys)}
    return table.labels[[index[k] for k in keys]]


def _stat(values: list) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return "n/a"
    mean = float(np.mean(kept))
    spread = float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
    return f"{mean:.3f} ± {spread:.3f}"


def _print(results: dict, args, elapsed: float) -> None:
    recipes = list(results)
    print(
        f"\nvalidation mean AUROC / accuracy, mean ± sd over {args.seeds} seed(s); "
        f"{args.limit or 'all'} images at {args.size} px, {args.epochs} epochs; "
        f"{elapsed / 60:.1f} min"
    )
    print("| condition | " + " | ".join(f"{r} AUROC | {r} acc" for r in recipes) + " |")
    print("|---|" + "---|---|" * len(recipes))
    for cond in results[recipes[0]]:
        cells = []
        for r in recipes:
            cells += [_stat(results[r][cond]["auroc"]), _stat(results[r][cond]["accuracy"])]
        print(f"| {cond} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
