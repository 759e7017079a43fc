"""Two gloo processes against one, and one process against itself with another thread count.

The same tiny real Kermany run as `tests/test_distributed.py` (96 images, 32 px, global batch
24, 2 epochs, deterministic) is trained three ways: `torchrun --nproc_per_node 2` on the CPU,
one process with 1 thread, and one process with 2 threads. The two single-process runs differ
only in float summation order, so their gap is the run's own float noise: the yardstick for
the gap between 2 processes and 1.

    .venv/bin/python benchmarks/ddp_equivalence.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cxr.cli import build_config, parser
from cxr.train import train

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def train_args(data: Path, cache: Path, out: Path, epochs: int) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--limit",
        "96",
        "--image-size",
        "32",
        "--epochs",
        str(epochs),
        "--batch-size",
        "24",
        "--optimizer",
        "sgd",
        "--lr",
        "0.002",
        "--seed",
        "0",
        "--out",
        str(out),
        "--set",
        f"train.cache_dir={json.dumps(str(cache))}",
        "--set",
        "train.deterministic=true",
        "--set",
        "train.early_stopping_patience=0",
        "--set",
        "data.val_fraction=0.25",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    data = (KERMANY / "chest_xray" / "train").resolve()
    if not data.is_dir():
        raise SystemExit(f"real data not found at {data} (see ../shared/data)")
    histories = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "cxr.cli",
        ]
        done = subprocess.run(
            [*launch, *train_args(data, cache, tmp / "ddp", args.epochs)],
            env=env | {"OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        lines = (tmp / "ddp" / "history.jsonl").read_text().splitlines()
        histories["2 processes (gloo), 1 thread each"] = [json.loads(line) for line in lines]
        for threads in (1, 2):
            cfg = build_config(
                parser().parse_args(train_args(data, cache, tmp / f"one-{threads}", args.epochs))
            )
            train_cfg = cfg.train.model_copy(update={"threads": threads})
            cfg = cfg.model_copy(update={"train": train_cfg})
            result = train(cfg, progress=False)
            histories[f"1 process, {threads} thread{'s' if threads > 1 else ''}"] = result.history
    print("| run | epoch | train loss | val mean AUROC |")
    print("|---|---|---|---|")
    for name, history in histories.items():
        for row in history:
            print(
                f"| {name} | {row['epoch']} | {row['train_loss']:.4f} | "
                f"{row['val_mean_auroc']:.3f} |"
            )
    rows = {k: h[-1] for k, h in histories.items()}
    ref = rows["1 process, 1 thread"]
    print()
    for name, row in rows.items():
        if name == "1 process, 1 thread":
            continue
        print(
            f"last epoch, {name} against 1 process with 1 thread: loss "
            f"{abs(row['train_loss'] - ref['train_loss']) / ref['train_loss']:.2%} apart, "
            f"AUROC {abs(row['val_mean_auroc'] - ref['val_mean_auroc']):.3f} apart"
        )


if __name__ == "__main__":
    main()
