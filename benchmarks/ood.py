"""How the out-of-distribution gate does: false refusals on real validation X-rays, and the share
of synthetic non-chest-X-ray probes it flags (colour photographs, hand X-rays, blank frames,
inverted X-rays), per check.

Trains a ResNet-18 on real Kermany images (or reuses a run), fits the gate on the run's training
split (`cxr ood-fit`), checks the run's validation split and the probes.

    .venv/bin/python benchmarks/ood.py                         # trains: 800 Kermany images, 96 px
    .venv/bin/python benchmarks/ood.py --run runs/kermany      # any finished run

Writes ood_benchmark.json and ood_scores.png (feature and layout distances of validation images
against the probes, with the thresholds) into the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from cxr.config import config_from_dict
from cxr.ood.fit import fit_ood_gate_for_run, iter_split_images
from cxr.ood.gate import OodGate
from cxr.ood.probes import probe_inputs
from cxr.run import load_run
from cxr.train import train

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def train_kermany_run(out: Path, limit: int, size: int, epochs: int) -> Path:
    data = KERMANY / "chest_xray" / "train"
    if not data.is_dir():
        raise SystemExit(f"Kermany data not found at {data.resolve()}; pass --run")
    cfg = config_from_dict(
        {
            "data": {"path": str(data), "limit": limit, "val_fraction": 0.2},
            "preprocess": {"image_size": size},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "early_stopping_patience": 0},
            "out_dir": str(out),
        }
    )
    train(cfg)
    return out


def verdicts(gate: OodGate, inputs) -> list:
    return [gate.check(image, raw) for image, raw in inputs]


def summary(results: list) -> dict:
    firsts = [next(n for n, c in r.checks.items() if not c["ok"]) for r in results if not r.ok]
    return {
        "n": len(results),
        "flagged": len(firsts),
        "rate": len(firsts) / len(results) if results else None,
        "by_check": {name: firsts.count(name) for name in sorted(set(firsts))},
    }


def plot_scores(gate: OodGate, groups: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, name, limit in zip(
        axes, ["features", "layout"], ["feature_max", "layout_max"], strict=True
    ):
        for label, results in groups.items():
            scores = [r.checks[name]["score"] for r in results]
            ax.scatter(scores, np.full(len(scores), label), s=12, alpha=0.6)
        ax.axvline(gate.limits[limit], color="k", ls="--", lw=1, label="threshold")
        ax.set_xscale("log")
        ax.set_title(f"{name} distance (Mahalanobis)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run (default: train one on Kermany)")
    ap.add_argument("--out", default="runs/bench-ood", help="where to train when no --run")
    ap.add_argument("--limit", type=int, default=800, help="Kermany images to train on")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--val-limit", type=int, default=1000)
    ap.add_argument("--per-kind", type=int, default=20, help="probes of each kind")
    args = ap.parse_args()

    if args.run:
        run_dir = Path(args.run)
    elif (Path(args.out) / "model.safetensors").is_file():
        run_dir = Path(args.out)
    else:
        run_dir = train_kermany_run(Path(args.out), args.limit, args.image_size, args.epochs)
    start = time.perf_counter()
    gate = fit_ood_gate_for_run(run_dir)
    fit_s = time.perf_counter() - start
    run = load_run(run_dir)
    val = list(iter_split_images(run, "val", limit=args.val_limit))
    inverted = [image for image, _ in val[: args.per_kind]]
    groups = {"validation X-rays": val} | probe_inputs(inverted, seed=1, per_kind=args.per_kind)
    start = time.perf_counter()
    results = {label: verdicts(gate, inputs) for label, inputs in groups.items()}
    per_image_ms = 1000 * (time.perf_counter() - start) / sum(len(v) for v in groups.values())
    table = {label: summary(r) for label, r in results.items()}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"run {run_dir} ({run.config.preprocess.image_size} px, data {run.config.data.path})")
    print(
        f"gate fitted on {gate.info['n_fit']} training images, thresholds from "
        f"{gate.info['n_calibration']} held out ({gate.config.percentile}th percentile), "
        f"in {fit_s:.1f} s; {per_image_ms:.1f} ms per check"
    )
    print(f"{'input':<22}{'n':>6}{'flagged':>9}{'rate':>8}  first failed check")
    for label, s in table.items():
        kind = "false refusals" if label == "validation X-rays" else "detected"
        print(
            f"{label:<22}{s['n']:>6}{s['flagged']:>9}{100 * s['rate']:>7.1f}%  "
            f"{s['by_check']}  ({kind})"
        )
    probes = [s for label, s in table.items() if label != "validation X-rays"]
    detected = sum(s["flagged"] for s in probes) / sum(s["n"] for s in probes)
    print(
        f"OOD detection rate over all probes: {100 * detected:.1f}%; false refusal rate on "
        f"validation: {100 * table['validation X-rays']['rate']:.1f}%"
    )

    payload = {
        "limits": gate.limits,
        "info": gate.info,
        "results": table,
        "detection_rate": detected,
    }
    (run_dir / "ood_benchmark.json").write_text(json.dumps(payload, indent=2))
    plot_scores(gate, results, run_dir / "ood_scores.png")
    print(f"written: {run_dir}/ood_benchmark.json, ood_scores.png")


if __name__ == "__main__":
    main()
