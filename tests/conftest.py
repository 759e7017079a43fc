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
    from tiny_runs import train_kermany_run

    return train_kermany_run(kermany_train, tmp_path_factory.mktemp("tiny-kermany-run"), 100, 48)


# Fixtures that train a model (directly or through another fixture): a test that uses one is
# marked slow, so `make test-fast` (pytest -m "not slow") runs no training at all.
TRAINING_FIXTURES = {
    "tiny_kermany_run",
    "phantom_run",
    "predictor",
    "run",
    "exported",
    "kermany_run",
    "gate",
    "val_images",
    "kermany_report",
    "nih_report",
    "run_dir",
    "engine",
    "client",
    "spec",
    "tiny_run",
    "server",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
