"""A run folder: the names of its files, loading its model, the images of its splits.

`cxr train` writes one; every later command (evaluate, report, calibrate, export, serve, predict,
ood-fit) reads one. The file names live here only, so a command never spells them itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr.checkpoint import WEIGHTS_FILE, load_weights
from cxr.config import RunConfig, load_config
from cxr.data.splits import keys_in_split
from cxr.data.table import ImageTable
from cxr.errors import CxrError, DataError
from cxr.models import Classifier, build_model

__all__ = [
    "LoadedRun",
    "RunDir",
    "images_in_split",
    "load_run",
    "read_run_files",
    "split_keys",
]


@dataclass(frozen=True)
class RunDir:
    """Every file a run folder may hold, by what it is."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:  # RunConfig: how the run was made
        return self.path / "config.json"

    @property
    def model_json(self) -> Path:  # findings, task, thresholds, training data
        return self.path / "model.json"

    @property
    def weights(self) -> Path:  # the best epoch's weights (safetensors)
        return self.path / WEIGHTS_FILE

    @property
    def split(self) -> Path:  # which image went to train / val / test
        return self.path / "split.csv"

    @property
    def calibration(self) -> Path:  # temperature and thresholds fitted on validation
        return self.path / "calibration.json"

    @property
    def val_metrics(self) -> Path:
        return self.path / "val_metrics.json"

    @property
    def test_metrics(self) -> Path:
        return self.path / "test_metrics.json"

    @property
    def history(self) -> Path:  # one JSON line per epoch
        return self.path / "history.jsonl"

    @property
    def ood_gate(self) -> Path:  # the out-of-distribution gate's numbers (+ ood.safetensors)
        return self.path / "ood.json"

    @property
    def ood_tensors(self) -> Path:
        return self.path / "ood.safetensors"

    @property
    def onnx(self) -> Path:  # `cxr export`; its contract is beside it as model.onnx.json
        return self.path / "model.onnx"

    @property
    def report(self) -> Path:  # `cxr report`'s default output folder
        return self.path / "report"

    def is_finished(self) -> bool:
        return all(p.is_file() for p in (self.config, self.model_json, self.weights))


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it: config, findings, thresholds."""

    run_dir: Path
    config: RunConfig
    model: Classifier
    findings: list[str]
    task: str
    thresholds: np.ndarray
    info: dict

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)


def read_run_files(run_dir: str | Path) -> tuple[RunConfig, dict]:
    """config.json and model.json of a finished run; a clear error if any run file is missing."""
    files = RunDir(run_dir)
    for path in (files.config, files.model_json, files.weights):
        if not path.is_file():
            raise CxrError(
                f"{files.path} is not a finished run: {path.name} is missing "
                "(train one with `cxr train`, or finish it with `cxr train --resume`)"
            )
    return load_config(files.config), json.loads(files.model_json.read_text())


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load config.json, model.json and the weights of a finished run folder onto `device`."""
    files = RunDir(run_dir)
    cfg, info = read_run_files(files.path)
    model = build_model(
        cfg.model.model_copy(update={"pretrained": "none"}), len(info["findings"]), cfg.preprocess
    )
    load_weights(model, files.weights)
    model.to(device).eval()
    thresholds = np.array([info["thresholds"][f] for f in info["findings"]], dtype=np.float64)
    return LoadedRun(files.path, cfg, model, info["findings"], info["task"], thresholds, info)


def split_keys(run_dir: str | Path, split: str) -> set[str]:
    """The image keys the run's split.csv puts in `split` (train, val or test)."""
    return keys_in_split(RunDir(run_dir).split, split)


def images_in_split(table: ImageTable, run_dir: str | Path, split: str, where: str) -> ImageTable:
    """The rows of `table` that the run's split.csv puts in `split`; a DataError naming `where`
    (the data's path) when there are none."""
    wanted = split_keys(run_dir, split)
    subset = table.subset([i for i, key in enumerate(table.keys) if key in wanted])
    if len(subset) == 0:
        raise DataError(f"the run's split.csv has no {split!r} images", path=where)
    return subset
