"""Minutes to a good model on a laptop: wall time until Kermany validation AUROC first reaches
0.99, for the README recipe against the fast recipe, one after the other in one run.

Each recipe starts from a cold cxr cache (a fresh cache folder: every JPEG is decoded and
CLAHE'd once, inside the timed region; the operating system's file cache is not dropped), on the
same patient-level 85/15 split of the official train folder, and stops at the end of the first
epoch whose validation mean AUROC reaches the target, or when its time budget is spent.

- default: the README's Kermany recipe (`benchmarks/real_data.py kermany`): 128 px throughout,
  AdamW with cosine decay over 10 epochs.
- fast: images cached once at 128 px, trained at 64 px first and grown to 128 px over half the
  epochs (progressive resizing, shrunk on the device: `cxr.progressive`), one-cycle learning
  rate over 4 epochs.

Target (issue 16): the fast recipe under 5 minutes on the 2-core development machine.

    .venv/bin/python benchmarks/time_to_accuracy.py [--recipes default,fast] [--budget-s 900]
    .venv/bin/python benchmarks/time_to_accuracy.py --limit 600 --budget-s 120   # quick check
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from real_data import RECIPES  # benchmarks/real_data.py, beside this file

from cxr.config import config_from_dict
from cxr.train import train

DEFAULT = RECIPES["kermany"]
FAST = copy.deepcopy(DEFAULT)
FAST["train"] |= {
    "epochs": 4,
    "scheduler": "onecycle",
    "lr": 3e-3,
    "progressive_start_size": 64,
    "progressive_fraction": 0.5,
}
RECIPE_BY_NAME = {"default": DEFAULT, "fast": FAST}


class _Stop(Exception):
    """Raised from the epoch callback to end a run: target reached or budget spent."""


def time_recipe(name: str, recipe: dict, args, root: Path) -> dict:
    raw = copy.deepcopy(recipe)
    raw["train"] |= {"cache_dir": str(root / f"cache-{name}"), "seed": 0}
    if args.limit:
        raw["data"]["limit"] = args.limit
    cfg = config_from_dict(raw | {"out_dir": str(root / f"run-{name}")})
    epochs: list[dict] = []
    start = time.perf_counter()

    def on_epoch(epoch: int, row: dict) -> None:
        elapsed = time.perf_counter() - start
        auroc = row["val_mean_auroc"] or 0.0
        epochs.append(
            {
                "epoch": epoch,
                "seconds": elapsed,
                "auroc": auroc,
                "image_size": row.get("image_size"),
                "img_s": row["images_per_s"],
            }
        )
        print(
            f"  {name}: epoch {epoch} at {row.get('image_size')} px, {elapsed:.0f} s, "
            f"val AUROC {auroc:.4f}, {row['images_per_s']:.1f} img/s",
            flush=True,
        )
        if auroc >= args.target or elapsed >= args.budget_s:
            raise _Stop

    try:
        train(cfg, progress=False, on_epoch=on_epoch)
    except _Stop:
        pass
    reached = next((e for e in epochs if e["auroc"] >= args.target), None)
    return {
        "name": name,
        "reached_s": reached["seconds"] if reached else None,
        "reached_epoch": reached["epoch"] if reached else None,
        "best": max((e["auroc"] for e in epochs), default=0.0),
        "spent_s": time.perf_counter() - start,
        "epochs": len(epochs),
        "recipe": recipe["train"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="default,fast")
    ap.add_argument("--target", type=float, default=0.99, help="validation mean AUROC")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=900.0,
        help="per recipe: stop after the first epoch ending past this",
    )
    ap.add_argument("--limit", type=int, help="use only this many images (a quick check)")
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = set(names) - set(RECIPE_BY_NAME)
    if unknown:
        raise SystemExit(f"--recipes: unknown {sorted(unknown)}; choose from default, fast")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results.append(time_recipe(name, RECIPE_BY_NAME[name], args, Path(tmp)))

    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, load average {os.getloadavg()[0]:.1f} (1 min); Kermany train folder"
        + (f" limited to {args.limit} images" if args.limit else "")
        + f"; target validation AUROC {args.target}, budget {args.budget_s:.0f} s per recipe"
    )
    print()
    print("| recipe | wall time to target (cold cache) | epoch | best val AUROC | time spent |")
    print("|---|---|---|---|---|")
    for r in results:
        reached = (
            f"{r['reached_s'] / 60:.1f} min"
            if r["reached_s"] is not None
            else f"not reached in {r['epochs']} epoch(s)"
        )
        print(
            f"| {r['name']} | {reached} | {r['reached_epoch'] or '-'} | {r['best']:.4f} | "
            f"{r['spent_s'] / 60:.1f} min |"
        )
    for r in results:
        t = r["recipe"]
        print(
            f"{r['name']}: {t.get('epochs')} epochs, {t.get('scheduler', 'cosine')}, lr "
            f"{t.get('lr')}, progressive from {t.get('progressive_start_size') or '-'} px"
        )
    if len(results) == 2 and all(r["reached_s"] for r in results):
        print(f"speed-up fast / default: {results[0]['reached_s'] / results[1]['reached_s']:.2f}x")


if __name__ == "__main__":
    main()
