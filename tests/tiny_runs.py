"""Small real runs for the tests that need a trained model: ResNet-18, one epoch, on the
Kermany images in ../shared/data."""

from __future__ import annotations

from pathlib import Path

from cxr.config import config_from_dict
from cxr.train import train


def train_kermany_run(data: Path, root: Path, limit: int, image_size: int, **train_cfg) -> Path:
    """Train on the first `limit` images (a quarter held out for validation) at `image_size`
    into root/run, caching into root/cache; `train_cfg` overrides train.* fields."""
    cfg = config_from_dict(
        {
            "data": {"path": str(data), "limit": limit, "val_fraction": 0.25},
            "preprocess": {"image_size": image_size},
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "lr": 2e-3,
                "seed": 0,
                "cache_dir": str(root / "cache"),
                "early_stopping_patience": 0,
            }
            | train_cfg,
            "out_dir": str(root / "run"),
        }
    )
    return train(cfg, progress=False).run_dir
