"""Does the data path keep up with the model? Cache reads + augmentation against the train step.

Training never holds the data set in memory: the preprocessed cache is one uint8 .npy per
(data, preprocessing) opened as a read-only memory map, and each batch reads only its own
rows (sorted, so the reads are sequential runs). This script measures, on real Kermany
radiographs at 224 px, with the same batch size:

- the model's training rate (forward, backward, optimizer step of the configured ResNet on one
  in-memory batch): the rate the data path must sustain;
- the data path: `cxr.train.batches` over the memory-mapped cache in a random order, then
  uint8 -> float, the batch augmentation and normalisation, exactly as `train_one_epoch` does;
  once COLD (the cache's pages dropped from the OS page cache with posix_fadvise, so every
  byte comes from disk, as for a data set larger than memory) and once warm;
- the same for one of two DDP ranks (`cxr.distributed.sharded_batches`): it reads half the
  rows, but augments the whole global batch.

    .venv/bin/python benchmarks/data_path.py [--images 256 --batch-size 32 --arch resnet18]
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

from cxr.augment import augment_batch
from cxr.config import RunConfig
from cxr.data.cache import build_cache
from cxr.data.folder import read_folder
from cxr.distributed import World, sharded_batches
from cxr.losses import build_loss
from cxr.models import build_model
from cxr.optim import build_optimizer
from cxr.preprocess import normalize
from cxr.runtime import batches, select_runtime, to_model

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def drop_from_page_cache(path: Path) -> None:
    """Evict this one file's pages (no effect on other files), so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def data_rate(images, cfg, rt, world: World | None = None) -> float:
    """images/s of read + to float + augment + normalise over one epoch of the cache."""
    generator = torch.Generator().manual_seed(0)
    seen, start = 0, time.perf_counter()
    if world is None:
        for x, _ in batches(images, cfg.train.batch_size, generator):
            x = normalize(augment_batch(to_model(x, rt), cfg.augment, generator))
            seen += len(x)
    else:
        for x, y, rows in sharded_batches(images, cfg.train.batch_size, generator, world):
            x = normalize(augment_batch(to_model(x, rt), cfg.augment, generator)[rows])
            seen += len(y)
    return seen / (time.perf_counter() - start)


def read_rate(images, batch_size: int) -> tuple[float, float]:
    """(images/s, MB/s) of the memory-mapped reads alone, random order, one epoch."""
    generator = torch.Generator().manual_seed(0)
    seen, nbytes, start = 0, 0, time.perf_counter()
    for x, _ in batches(images, batch_size, generator):
        seen += len(x)
        nbytes += x.numel()
    seconds = time.perf_counter() - start
    return seen / seconds, nbytes / seconds / 2**20


def step_rate(cfg, rt, steps: int) -> float:
    """images/s of forward + backward + step on one in-memory batch (no data path at all)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 2).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    labels = np.eye(2, dtype=np.float32)[np.arange(cfg.train.batch_size) % 2]
    loss_fn = build_loss(cfg.train, "multiclass", labels)
    s = cfg.preprocess.image_size
    x = torch.randn(cfg.train.batch_size, 1, s, s, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).to(rt.device)
    model.train()

    def step():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN/cuDNN choose kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps timed for the model")
    args = ap.parse_args()
    cfg = RunConfig.model_validate(
        {
            "preprocess": {"image_size": args.image_size},
            "model": {"arch": args.arch},
            "train": {"batch_size": args.batch_size},
        }
    )
    rt = select_runtime()
    root = KERMANY / "chest_xray" / "train"
    if not root.is_dir():
        raise SystemExit(f"real data not found at {root.resolve()} (see ../shared/data)")
    table = read_folder(root)
    keep = np.sort(np.random.default_rng(0).permutation(len(table))[: args.images])
    table = table.subset(keep)

    with tempfile.TemporaryDirectory() as cache_dir:
        tick = time.perf_counter()
        images = build_cache(table, cfg.preprocess, cache_dir, progress=False)
        build_s = time.perf_counter() - tick
        size_mb = images.path.stat().st_size / 2**20
        model = step_rate(cfg, rt, args.steps)
        drop_from_page_cache(images.path)
        reads, mb_s = read_rate(images, args.batch_size)
        drop_from_page_cache(images.path)
        cold = data_rate(images, cfg, rt)
        warm = data_rate(images, cfg, rt)
        drop_from_page_cache(images.path)
        rank_cold = data_rate(images, cfg, rt, World(0, 2, 0, 2, "localhost", 1))

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device {rt.device}, {torch.get_num_threads()} torch threads; load average "
        f"{os.getloadavg()[0]:.1f} (other jobs share these cores)"
    )
    print(
        f"{len(images)} real Kermany images at {args.image_size} px: cache {size_mb:.1f} MB "
        f"(memory-mapped .npy), built in {build_s:.1f} s (decode + CLAHE, once)"
    )
    print(f"batch {args.batch_size}, {args.arch}, augmentation on {rt.device}")
    print()
    print("| path | images/s | / model step rate |")
    print("|---|---|---|")
    print(f"| model: forward + backward + step ({args.arch}) | {model:.1f} | 1.00 |")
    for name, rate in (
        (f"reads alone: cold cache, random batches ({mb_s:.0f} MB/s from disk)", reads),
        ("data: cold cache (read from disk) + augment", cold),
        ("data: warm cache (page cache) + augment", warm),
        ("data: one of 2 DDP ranks, cold (half the rows)", rank_cold),
    ):
        print(f"| {name} | {rate:.1f} | {rate / model:.1f} |")
    share = model / cold
    print()
    print(
        f"the cold data path costs {share:.1%} of a training step's time: "
        + ("it keeps up" if cold >= model else "it does NOT keep up")
    )


if __name__ == "__main__":
    main()
