"""`cxr adapt` on a simulated new site: Kermany training images at another prevalence.

    .venv/bin/python benchmarks/adapt_prevalence.py [--limit 240 --size 48 --epochs 2]

Trains a small ResNet-18 on Kermany's training folder (about 3 in 4 pneumonia), calibrates it,
then builds a "new site" from patients it never saw, at --prevalence pneumonia (default 0.25):
once without labels (what `cxr adapt` gets) and once with (to score). Prints the EM estimate of
the prevalence and the NLL, ECE, accuracy and AUROC of the calibrated probabilities before and
after adaptation. A small model on one source: an illustration of the method, not a
measurement of a real second hospital.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from cxr.adapt import adapt_run, compare_on_labelled
from cxr.calibration import calibrate_run
from cxr.config import DataConfig, config_from_dict
from cxr.train import train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _patients(run: Path) -> set[str]:
    with open(run / "split.csv", newline="") as fh:
        return {row["patient_id"] for row in csv.DictReader(fh)}


def _seen(path: Path, patients: set[str]) -> bool:
    stem = path.stem
    return any(stem == p or stem.startswith((p + "_", p + "-")) for p in patients)


def _site(data: Path, root: Path, used: set[str], counts: dict, labelled: bool, seed: int) -> Path:
    for cls, n in counts.items():
        files = [p for p in sorted((data / cls).iterdir()) if not _seen(p, used)]
        target = root / cls if labelled else root
        target.mkdir(parents=True, exist_ok=True)
        for i in np.random.default_rng(seed).choice(len(files), n, replace=False):
            (target / files[i].name).symlink_to(files[i])
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DATA / "kermany-pneumonia" / "chest_xray" / "train"))
    p.add_argument("--limit", type=int, default=240)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--site-images", type=int, default=120)
    p.add_argument("--prevalence", type=float, default=0.25, help="pneumonia share at the site")
    p.add_argument("--thresholds", default="keep", choices=["keep", "bayes"])
    p.add_argument("--out", default="runs/bench-adapt")
    args = p.parse_args()
    out, data = Path(args.out), Path(args.data).resolve()
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or pass --out elsewhere")
    start = time.perf_counter()
    cfg = config_from_dict(
        {
            "data": {"path": str(data), "limit": args.limit, "val_fraction": 0.25},
            "preprocess": {"image_size": args.size},
            "train": {
                "epochs": args.epochs,
                "batch_size": 16,
                "lr": 2e-3,
                "seed": 0,
                "cache_dir": str(out / "cache"),
                "early_stopping_patience": 0,
            },
            "out_dir": str(out / "run"),
        }
    )
    run = train(cfg, progress=False).run_dir
    calibrate_run(run, progress=False)
    n_pneu = round(args.site_images * args.prevalence)
    counts = {"NORMAL": args.site_images - n_pneu, "PNEUMONIA": n_pneu}
    used = _patients(run)
    site = _site(data, out / "site", used, counts, labelled=False, seed=1)
    labelled = _site(data, out / "site-labelled", used, counts, labelled=True, seed=1)
    summary = adapt_run(run, site, out / "adapted", args.thresholds, progress=False)
    both = compare_on_labelled(run, out / "adapted", DataConfig(path=str(labelled)), progress=False)
    before = summary["prevalence_before"]["PNEUMONIA"]
    after = summary["prevalence_after"]["PNEUMONIA"]
    print(
        f"pneumonia prevalence: validation {before:.3f}, "
        f"site (true) {n_pneu / args.site_images:.3f}, EM estimate {after:.3f}"
    )
    print("| run | NLL | ECE | accuracy | AUROC | mean P(pneumonia) |")
    print("|---|---|---|---|---|---|")
    for name in ("before", "after"):
        r = both[name]
        print(
            f"| {name} | {r['nll']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} | "
            f"{r['mean_auroc']:.3f} | {r['mean_probability']['PNEUMONIA']:.3f} |"
        )
    print(
        f"{time.perf_counter() - start:.0f} s; ResNet-18, {args.limit} images at {args.size} px, "
        f"{args.epochs} epochs; thresholds {args.thresholds}"
    )


if __name__ == "__main__":
    main()
