"""What the leak guard's content hash costs, next to what caching an image costs anyway.

The guard (`cxr.data.leakage`) hashes each preprocessed image once: the training images when a
run is trained (written to `image_hashes.csv`), the evaluated images when they are cached for an
evaluation. It reads the cache's memory map; nothing is decoded twice. This script times, on
real Kermany radiographs at the given size, (1) decoding + preprocessing each image into the
cache (what every first evaluation pays already) and (2) hashing the cached pixels.

    .venv/bin/python benchmarks/leak_guard.py [--images 200 --image-size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr.config import PreprocessConfig
from cxr.data.cache import build_cache
from cxr.data.folder import read_folder
from cxr.data.leakage import pixel_hashes

KERMANY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-pneumonia"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    table = read_folder(KERMANY / "chest_xray" / "train")
    table = table.subset(np.linspace(0, len(table) - 1, args.images).astype(int))
    cfg = PreprocessConfig(image_size=args.image_size)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        images = build_cache(table, cfg, cache_dir, workers=1, progress=False)
        cache_s = time.perf_counter() - start
        start = time.perf_counter()
        pixel_hashes(images.pixels)
        hash_s = time.perf_counter() - start
    n = len(images.table)
    print(f"{n} real Kermany images at {args.image_size} px, one process:")
    print(f"  decode + preprocess into the cache: {1e3 * cache_s / n:.2f} ms/image")
    print(
        f"  content hash of the cached pixels:  {1e3 * hash_s / n:.3f} ms/image "
        f"({100 * hash_s / cache_s:.1f}% of caching)"
    )


if __name__ == "__main__":
    main()
