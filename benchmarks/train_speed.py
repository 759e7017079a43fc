"""Training images/s of cxr's loop against a bare torchvision loop, side by side in one process.

The bare loop is the floor: the same ResNet, batch, image size, precision (bf16 autocast on GPUs
that have it) and memory layout (channels-last), fed one pre-made tensor already on the device,
with no data path at all. cxr's loop is `cxr.train.train_one_epoch` over whole epochs of real
Kermany images: it reads the preprocessed cache, copies uint8 batches to the device (pinned,
non-blocking on a GPU), augments them there and steps the schedule. The ratio says what the data
path costs; the target is >= 0.95 at every batch size, compiled or not. Validation
(`cxr.train.predict_cached` over the held-out images, once per epoch in `cxr train`) is timed
apart and reported in its own column.

On a GPU every timed region starts and ends with torch.cuda.synchronize() (kernels are queued
asynchronously: without it a timer measures how fast Python queues work, not how fast the GPU
does it), and each configuration is warmed up first (cuDNN picks its kernels, torch.compile
compiles, the caching allocator fills) outside the timed rounds.

    .venv/bin/python benchmarks/train_speed.py                      # CPU: ResNet-18, 128 px
    .venv/bin/python benchmarks/train_speed.py --arch resnet50 --image-size 224 \\
        --batch-sizes 64,256 --compile off,on --epoch-images 4096   # a GPU (issue 16 targets)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.config import RunConfig
from cxr.data.cache import build_cache
from cxr.data.folder import read_folder
from cxr.losses import build_loss
from cxr.models import build_model
from cxr.optim import Schedule, build_optimizer
from cxr.runtime import select_runtime
from cxr.train import predict_cached, train_one_epoch

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, x, y, optimizer, steps: int, rt) -> float:
    """torchvision-reference style: forward (bf16 autocast where cxr uses it), loss, backward,
    step on one in-memory batch; images/s between two synchronisations."""
    model.train()
    sync(rt.device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(rt.device)
    return steps * len(x) / (time.perf_counter() - start)


def cxr_epoch(model, images, loss_fn, optimizer, schedule, cfg, generator, rt) -> float:
    """One whole epoch of cxr's loop, images/s between two synchronisations."""
    sync(rt.device)
    start = time.perf_counter()
    train_one_epoch(model, images, loss_fn, optimizer, schedule, cfg, generator, rt, progress=False)
    sync(rt.device)
    return len(images.table) / (time.perf_counter() - start)


def validation_rate(model, images, rt) -> float:
    sync(rt.device)
    start = time.perf_counter()
    predict_cached(model, images, "multiclass", rt)
    sync(rt.device)
    return len(images.table) / (time.perf_counter() - start)


def measure(args, rt, batch_size: int, compiled: bool, train_images, val_images) -> dict:
    """Bare and cxr loops for one (batch size, compile) setting, alternating round by round."""
    cfg = RunConfig.model_validate(
        {
            "preprocess": {"image_size": args.image_size},
            "model": {"arch": args.arch},
            "train": {
                "batch_size": batch_size,
                "epochs": 100,
                "compile": "on" if compiled else "off",
            },
        }
    )
    torch.manual_seed(0)
    ours = build_model(cfg.model, 2).to(rt.device)
    bare = build_model(cfg.model, 2).to(rt.device)
    if rt.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        bare = bare.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.train, "multiclass", train_images.table.labels)
    opt_ours = build_optimizer(ours, cfg.train)
    opt_bare = build_optimizer(bare, cfg.train)
    steps = len(train_images.table) // batch_size
    schedule = Schedule(opt_ours, cfg.train, steps)
    # What `cxr train` runs with train.compile=on: the training model compiled, validation eager.
    net_ours = torch.compile(ours) if compiled else ours
    net_bare = torch.compile(bare) if compiled else bare
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, args.image_size, args.image_size, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,), device=rt.device)

    # Warm-up outside the timed rounds: kernel selection, compilation, allocator.
    start = time.perf_counter()
    bare_loop(net_bare, x, y, opt_bare, args.warmup_steps, rt)
    cxr_epoch(net_ours, train_images, loss_fn, opt_ours, schedule, cfg, gen, rt)
    validation_rate(ours, val_images, rt)
    warmup_s = time.perf_counter() - start
    ours_rates, bare_rates, val_rates = [], [], []
    for _ in range(args.rounds):  # alternating, so both share any drift in machine load
        bare_rates.append(bare_loop(net_bare, x, y, opt_bare, steps, rt))
        ours_rates.append(
            cxr_epoch(net_ours, train_images, loss_fn, opt_ours, schedule, cfg, gen, rt)
        )
        val_rates.append(validation_rate(ours, val_images, rt))
    return {
        "batch": batch_size,
        "compile": "on" if compiled else "off",
        "bare": max(bare_rates),
        "cxr": max(ours_rates),
        "bare_median": float(np.median(bare_rates)),
        "cxr_median": float(np.median(ours_rates)),
        "val": max(val_rates),
        "warmup_s": warmup_s,
    }


def device_name(rt) -> str:
    if rt.device.type == "cuda":
        return torch.cuda.get_device_name(rt.device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-sizes", default="32", help="comma-separated, e.g. 64,256")
    ap.add_argument("--compile", default="off", help="off, on or off,on (torch.compile)")
    ap.add_argument(
        "--epoch-images",
        type=int,
        default=384,
        help="training images per epoch (a whole number of every batch size is "
        "used; real Kermany images, cached first)",
    )
    ap.add_argument("--val-images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per loop")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    args = ap.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    compiles = [c == "on" for c in args.compile.split(",")]
    if set(args.compile.split(",")) - {"off", "on"}:
        raise SystemExit(f"--compile: expected off, on or off,on, got {args.compile!r}")

    rt = select_runtime(args.device)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms
    largest = max(batch_sizes)
    n_train = max(largest, args.epoch_images // largest * largest)
    root = KERMANY / "chest_xray" / "train"
    if not root.is_dir():
        raise SystemExit(f"real data not found at {root.resolve()} (see ../shared/data)")
    table = read_folder(root)
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0)).numpy()
    need = n_train + args.val_images
    if need > len(table):
        raise SystemExit(f"--epoch-images + --val-images = {need} > {len(table)} Kermany images")
    preprocess = RunConfig.model_validate({"preprocess": {"image_size": args.image_size}})
    results = []
    with tempfile.TemporaryDirectory() as cache_dir:
        tick = time.perf_counter()
        train_images = build_cache(
            table.subset(np.sort(order[:n_train])), preprocess.preprocess, cache_dir, progress=False
        )
        val_images = build_cache(
            table.subset(np.sort(order[n_train:need])),
            preprocess.preprocess,
            cache_dir,
            progress=False,
        )
        cache_s = time.perf_counter() - tick
        for batch_size in batch_sizes:
            for compiled in compiles:
                # A whole number of batches per epoch: the same work for both loops, and no
                # smaller last batch for torch.compile to compile a second graph for.
                n = len(train_images.table) // batch_size * batch_size
                part = train_images
                if n != len(part.table):
                    from cxr.data.cache import CachedImages

                    part = CachedImages(
                        part.pixels[:n], part.table.subset(np.arange(n)), [], part.path
                    )
                results.append(measure(args, rt, batch_size, compiled, part, val_images))
                torch._dynamo.reset()  # drop the compiled graphs of this setting
                if rt.device.type == "cuda":
                    torch.cuda.empty_cache()

    load = os.getloadavg()[0]
    print(
        f"device: {device_name(rt)}; torch {torch.__version__}; bf16 autocast={rt.amp}, "
        f"channels_last={rt.channels_last}; load average {load:.1f} (1 min)"
    )
    print(
        f"{args.arch} at {args.image_size} px; epochs of {n_train} real Kermany images "
        f"(cache built once in {cache_s:.1f} s, not timed), validation on {args.val_images}; "
        f"best of {args.rounds} alternating rounds (median in brackets)"
    )
    print()
    print(
        "| batch | torch.compile | bare loop (img/s) | cxr loop, whole epochs (img/s) | "
        "cxr / bare | cxr validation (img/s) | warm-up (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['batch']} | {r['compile']} | {r['bare']:.1f} ({r['bare_median']:.1f}) | "
            f"{r['cxr']:.1f} ({r['cxr_median']:.1f}) | {r['cxr'] / r['bare']:.3f} | "
            f"{r['val']:.1f} | {r['warmup_s']:.1f} |"
        )
    print()
    worst = min(r["cxr"] / r["bare"] for r in results)
    print(f"lowest cxr / bare ratio: {worst:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
