"""Accuracy on real chest X-rays from ../shared/data, with the time it took on this machine.

    .venv/bin/python benchmarks/real_data.py kermany   # patient-level 85/15 split of train
    .venv/bin/python benchmarks/real_data.py nih       # 840 NIH images, 14 findings

Each prints a markdown table for the README and leaves its run folder under runs/bench-*.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from cxr.config import config_from_dict
from cxr.train import train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

RECIPES = {
    # From scratch (no ImageNet download here): 128 px keeps 2 CPU cores at ~50 img/s, so an
    # epoch of 4,400 images takes ~1.5 minutes; 10 epochs with cosine decay fit in 20 minutes.
    "kermany": {
        "data": {"path": str(DATA / "kermany-pneumonia" / "chest_xray" / "train"),
                 "val_fraction": 0.15},
        "preprocess": {"image_size": 128},
        "train": {"epochs": 10, "batch_size": 32, "lr": 2e-3, "weight_decay": 5e-4,
                  "early_stopping_patience": 0},
    },
    # 840 images at 64 px: val is 25% of patients so that rare findings have any positives.
    "nih": {
        "data": {"path": str(DATA / "nih-chestxray14-1000"), "val_fraction": 0.25},
        "preprocess": {"image_size": 64},
        "train": {"epochs": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-3,
                  "loss": "weighted_bce", "early_stopping_patience": 8},
    },
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--out", help="run folder (default runs/bench-DATASET-TIMESTAMP)")
    args = ap.parse_args()

    recipe = RECIPES[args.dataset]
    if args.epochs:
        recipe["train"]["epochs"] = args.epochs
    out = args.out or f"runs/bench-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = config_from_dict(recipe | {"out_dir": out})
    start = time.perf_counter()
    result = train(cfg, progress=os.environ.get("TQDM_DISABLE") != "1")
    minutes = (time.perf_counter() - start) / 60
    m = result.val_metrics

    print(f"\n## {args.dataset}: validation split (patient-level), {result.run_dir}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; {cfg.model.arch} from scratch at "
          f"{cfg.preprocess.image_size} px, {len(result.history)} epochs "
          f"(best {result.best_epoch}), {minutes:.1f} min wall time including caching")  # fmt: skip
    print("| finding | val AUROC | val AUPRC | positives in val | negatives in val |")
    print("|---|---|---|---|---|")
    for finding, auc in m["auroc"].items():
        pf = m["per_finding"][finding]
        auprc = m["auprc"][finding]
        print(
            f"| {finding} | {_fmt(auc)} | {_fmt(auprc)} | {pf['n_positive']} | "
            f"{pf['n_negative']} |"
        )
    print(f"| **mean** | **{_fmt(m['mean_auroc'])}** | {_fmt(m['mean_auprc'])} | | |")
    print(f"accuracy at the validation-chosen thresholds: {m['accuracy']:.4f} "
          f"({m['n_images']} validation images)")  # fmt: skip


def _fmt(value) -> str:
    return "not estimable" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
