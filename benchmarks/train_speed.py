"""Training images/s of cxr's loop against a bare torchvision loop, side by side in one process.

The bare loop is the floor: the same ResNet, batch and image size, fed one pre-made tensor with
no data path at all. cxr's loop reads the preprocessed cache, augments on the device, steps the
schedule. The ratio says how much the data path costs; the target is >= 0.95.

    .venv/bin/python benchmarks/train_speed.py [--image-size 128 --batch-size 32 --rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cxr.config import RunConfig
from cxr.data.cache import build_cache
from cxr.data.folder import read_folder
from cxr.losses import build_loss
from cxr.models import build_model
from cxr.optim import Schedule, build_optimizer
from cxr.runtime import select_runtime
from cxr.train import train_one_epoch

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def bare_loop(model, x, y, optimizer, steps: int) -> float:
    """torchvision-reference style: forward, loss, backward, step on an in-memory batch."""
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arch", default="resnet18")
    args = ap.parse_args()

    n = args.steps * args.batch_size
    cfg = RunConfig.model_validate(
        {
            "preprocess": {"image_size": args.image_size},
            "model": {"arch": args.arch},
            "train": {"batch_size": args.batch_size, "epochs": 100},
        }
    )
    rt = select_runtime()
    table = read_folder(KERMANY / "chest_xray" / "train")
    table = table.subset(torch.randperm(len(table), generator=torch.Generator().manual_seed(0))[:n])
    with tempfile.TemporaryDirectory() as cache_dir:
        images = build_cache(table, cfg.preprocess, cache_dir, progress=False)

        torch.manual_seed(0)
        ours = build_model(cfg.model, 2).to(rt.device)
        bare = build_model(cfg.model, 2).to(rt.device)
        if rt.channels_last:
            ours = ours.to(memory_format=torch.channels_last)
            bare = bare.to(memory_format=torch.channels_last)
        loss_fn = build_loss(cfg.train, "multiclass", images.table.labels)
        opt_ours = build_optimizer(ours, cfg.train)
        opt_bare = build_optimizer(bare, cfg.train)
        schedule = Schedule(opt_ours, cfg.train, args.steps)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch_size, 1, args.image_size, args.image_size, device=rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (args.batch_size,), device=rt.device)

        # Warm-up both (oneDNN picks kernels on first use), then alternate to share any drift.
        bare_loop(bare, x, y, opt_bare, 2)
        train_one_epoch(ours, images, loss_fn, opt_ours, schedule, cfg, gen, rt, progress=False)
        ours_rates, bare_rates = [], []
        for _ in range(args.rounds):
            bare_rates.append(bare_loop(bare, x, y, opt_bare, args.steps))
            stats = train_one_epoch(
                ours, images, loss_fn, opt_ours, schedule, cfg, gen, rt, progress=False
            )
            ours_rates.append(stats["images_per_s"])

    best_ours, best_bare = max(ours_rates), max(bare_rates)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, device {rt.device}, channels_last={rt.channels_last}, "
          f"bf16={rt.amp}")  # fmt: skip
    print(f"{args.arch} at {args.image_size} px, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds (best round)")  # fmt: skip
    print("| loop | images/s |")
    print("|---|---|")
    print(f"| bare torchvision loop (in-memory tensor) | {best_bare:.1f} |")
    print(f"| cxr loop (cache + augmentation + schedule) | {best_ours:.1f} |")
    print(f"| ratio cxr / bare | {best_ours / best_bare:.3f} |")


if __name__ == "__main__":
    main()
