"""Shared fixtures: the real chest X-rays in ../shared/data (skipped with a message if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path.resolve()} (see ../shared/data/README.md)")
    return path.resolve()


@pytest.fixture(scope="session")
def kermany_train() -> Path:
    return _require(SHARED_DATA / "kermany-pneumonia" / "chest_xray" / "train")


@pytest.fixture(scope="session")
def nih_1000() -> Path:
    return _require(SHARED_DATA / "nih-chestxray14-1000")


@pytest.fixture(scope="session")
def nih_samples() -> Path:
    return _require(SHARED_DATA / "nih-chestxray14-samples")


@pytest.fixture(scope="session")
def tiny_kermany_run(kermany_train, tmp_path_factory) -> Path:
    """A ResNet-18 trained for one epoch on 100 real Kermany images at 48 px: the run the web
    API and the browser tests serve. Shared, so tests copy it before writing into it."""
    from cxr.config import config_from_dict
    from cxr.train import train

    root = tmp_path_factory.mktemp("tiny-kermany-run")
    cfg = config_from_dict(
        {
            "data": {"path": str(kermany_train), "limit": 100, "val_fraction": 0.25},
            "preprocess": {"image_size": 48},
            "train": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "seed": 0,
                      "cache_dir": str(root / "cache"), "early_stopping_patience": 0},
            "out_dir": str(root / "run"),
        }
    )  # fmt: skip
    return train(cfg, progress=False).run_dir
