"""From a DataConfig to cached, split, preprocessed arrays ready for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.config import DataConfig, PreprocessConfig
from cxr.data.cache import CachedImages, build_cache
from cxr.data.leakage import HASH_FILE, pixel_hashes, write_image_hashes
from cxr.data.splits import (
    check_patient_disjoint,
    choose_val_source,
    describe_split,
    describe_val_source,
    patient_level_split,
    read_split_file,
    write_split_file,
)
from cxr.data.table import ImageTable
from cxr.errors import DataError


@dataclass
class PreparedData:
    """The train and validation images (test is left alone while training)."""

    table: ImageTable  # every image that was read, before caching
    assignment: list[str]  # split per image of `table`
    train: CachedImages
    val: CachedImages
    val_source: str = "split file"  # "official", "fraction", or "split file" (data.split_file)

    @property
    def findings(self) -> list[str]:
        return self.table.findings

    @property
    def task(self) -> str:
        return self.table.task


def resolve_table(cfg: DataConfig, cache_dir: str | Path, progress: bool = True) -> ImageTable:
    """Read the table for cfg; the synthetic default is generated (once) into the cache."""
    if cfg.format == "synthetic" or (cfg.format == "auto" and cfg.path == "synthetic"):
        from cxr.data.synthetic import read_synthetic, write_synthetic_dataset

        root = Path(cache_dir) / f"synthetic-n{cfg.synthetic_count}-seed{cfg.split_seed}"
        write_synthetic_dataset(root, n=cfg.synthetic_count, seed=cfg.split_seed, progress=progress)
        return read_synthetic(root)
    from cxr.data import read_table

    table = read_table(cfg)
    if cfg.limit is not None and cfg.limit < len(table):
        keep = np.sort(np.random.default_rng(cfg.split_seed).permutation(len(table))[: cfg.limit])
        table = table.subset(keep)
    return table


def prepare_data(
    data: DataConfig,
    preprocess: PreprocessConfig,
    cache_dir: str | Path,
    split_path: Path,
    progress: bool = True,
) -> PreparedData:
    """Read, split by patient (or reuse a split file), write it to `split_path` (the run's
    split.csv), cache train + val."""
    table = resolve_table(data, cache_dir, progress)
    if data.split_file:
        assignment = read_split_file(data.split_file, table)
        val_source = "split file"
        print(f"validation: the split file {data.split_file}")
    else:
        val_source = choose_val_source(table, data.val_source)
        assignment = patient_level_split(
            table, data.val_fraction, data.test_fraction, data.split_seed, val_source
        )
        print(f"validation: {describe_val_source(table, val_source, data.val_fraction)}")
        print(describe_split(table, assignment))
    check_patient_disjoint(table, assignment)
    write_split_file(split_path, table, assignment)

    def cached(split: str) -> CachedImages:
        index = [i for i, s in enumerate(assignment) if s == split]
        if not index:
            raise DataError(f"the {split} split is empty: check val_fraction or the split file")
        return build_cache(
            table.subset(index), preprocess, cache_dir, skip_bad=data.skip_bad, progress=progress
        )

    train, val = cached("train"), cached("val")
    # Content hashes of what was trained and validated on, for the leak guard of every later
    # evaluation (cxr.data.leakage): taken from the cache now, never decoded again.
    write_image_hashes(
        split_path.with_name(HASH_FILE),
        {s: (c.table.keys, pixel_hashes(c.pixels)) for s, c in (("train", train), ("val", val))},
    )
    return PreparedData(table, assignment, train, val, val_source)
