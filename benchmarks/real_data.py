"""Accuracy on real chest X-rays from ../shared/data, with the time it took on this machine.

    .venv/bin/python benchmarks/real_data.py kermany   # patient-level 85/15 split of train
    .venv/bin/python benchmarks/real_data.py nih       # 840 NIH images, 14 findings
    .venv/bin/python benchmarks/real_data.py nih --seeds 3   # mean +- sd over 3 seeds

Each prints a markdown table for the README and leaves its run folder under runs/bench-*.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from spread import show, spread  # benchmarks/spread.py

from cxr.config import config_from_dict
from cxr.train import train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

RECIPES = {
    # From scratch (no ImageNet download here): 128 px keeps 2 CPU cores at ~50 img/s, so an
    # epoch of 4,400 images takes ~1.5 minutes; 10 epochs with cosine decay fit in 20 minutes.
    "kermany": {
        "data": {
            "path": str(DATA / "kermany-pneumonia" / "chest_xray" / "train"),
            "val_fraction": 0.15,
        },
        "preprocess": {"image_size": 128},
        "train": {
            "epochs": 10,
            "batch_size": 32,
            "lr": 2e-3,
            "weight_decay": 5e-4,
            "early_stopping_patience": 0,
        },
    },
    # 840 images at 64 px: val is 25% of patients so that rare findings have any positives.
    "nih": {
        "data": {"path": str(DATA / "nih-chestxray14-1000"), "val_fraction": 0.25},
        "preprocess": {"image_size": 64},
        "train": {
            "epochs": 30,
            "batch_size": 32,
            "lr": 1e-3,
            "weight_decay": 1e-3,
            "loss": "weighted_bce",
            "early_stopping_patience": 8,
        },
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument(
        "--seeds", type=int, default=1, help="repeat with seeds 0..N-1 (split and weights)"
    )
    ap.add_argument("--limit", type=int, help="use at most this many images (smoke runs)")
    ap.add_argument("--out", help="run folder (default runs/bench-DATASET-TIMESTAMP)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change one field of the recipe (a trial of a candidate recipe), e.g. "
        "--set train.ema_decay=0.99; VALUE is read as JSON when it parses",
    )
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    recipe = copy.deepcopy(RECIPES[args.dataset])
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            ap.error(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=3e-4")
        section, field = key.split(".", 1)
        try:
            recipe.setdefault(section, {})[field] = json.loads(value)
        except json.JSONDecodeError:
            recipe.setdefault(section, {})[field] = value
    if args.epochs:
        recipe["train"]["epochs"] = args.epochs
    if args.limit:
        recipe["data"]["limit"] = args.limit
    out = Path(args.out or f"runs/bench-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    results, minutes = [], []
    for seed in range(args.seeds):
        recipe_seed = recipe | {
            "data": recipe["data"] | {"split_seed": seed},
            "train": recipe["train"] | {"seed": seed},
        }
        run = out if args.seeds == 1 else out / f"seed_{seed}"
        cfg = config_from_dict(recipe_seed | {"out_dir": str(run)})
        start = time.perf_counter()
        results.append(train(cfg, progress=os.environ.get("TQDM_DISABLE") != "1"))
        minutes.append((time.perf_counter() - start) / 60)
    report(args, cfg, results, minutes, out)


def report(args, cfg, results: list, minutes: list[float], out: Path) -> None:
    """Per finding, mean +- sd over seeds (each seed its own patient-level split and weights)."""
    n = len(results)
    metrics = [r.val_metrics for r in results]
    print(f"\n## {args.dataset}: validation split (patient-level), {out}")
    if args.set:
        print(f"recipe changed by: {' '.join('--set ' + item for item in args.set)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; {cfg.model.arch} from scratch at "
        f"{cfg.preprocess.image_size} px, {cfg.train.epochs} epochs at most (best "
        f"{', '.join(str(r.best_epoch) for r in results)}), "
        f"{sum(minutes):.1f} min wall time including caching"
    )
    print(
        f"{n} seed(s) ({', '.join(map(str, range(n)))}): each its own split and weights; "
        + ("figures are mean +- sample sd over seeds" if n > 1 else "one seed: no spread measured")
    )
    print("| finding | val AUROC | val AUPRC | positives in val | negatives in val |")
    print("|---|---|---|---|---|")
    for finding in metrics[0]["auroc"]:
        auc = spread([m["auroc"][finding] for m in metrics])
        auprc = spread([m["auprc"][finding] for m in metrics])
        pos = spread([m["per_finding"][finding]["n_positive"] for m in metrics])
        neg = spread([m["per_finding"][finding]["n_negative"] for m in metrics])
        print(
            f"| {finding} | {_fmt(auc)} | {_fmt(auprc)} | {pos['mean']:.0f} | {neg['mean']:.0f} |"
        )
    mean_auc = spread([m["mean_auroc"] for m in metrics])
    mean_auprc = spread([m["mean_auprc"] for m in metrics])
    print(f"| **mean** | **{_fmt(mean_auc)}** | {_fmt(mean_auprc)} | | |")
    accuracy = spread([m["accuracy"] for m in metrics])
    print(
        f"accuracy at the validation-chosen decision rule: {_fmt(accuracy, 4)} "
        f"({metrics[0]['n_images']} validation images in seed 0)"
    )


def _fmt(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "not estimable"
    return show(s, digits) if s["n"] + s["n_missing"] > 1 else f"{s['mean']:.{digits}f}"


if __name__ == "__main__":
    main()
