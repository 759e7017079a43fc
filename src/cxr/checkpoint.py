"""Run-folder I/O: atomic per-epoch checkpoints, safetensors weights, JSON for everything else.

A checkpoint is a folder written under a temporary name and renamed into place, so a run killed
at any moment leaves either the previous complete checkpoint or the new complete one, never a
half-written mix of weights from one epoch and optimizer state from another.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cxr.errors import CxrError

WEIGHTS_FILE = "model.safetensors"  # a run's weights, and each checkpoint's

CHECKPOINTS = "checkpoints"
KEEP_LAST = 2


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Weights as safetensors (no pickle), written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"weights not found: {path}")
    model.load_state_dict(load_file(str(path)))


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, trainer_state: dict) -> Path:
    """Write checkpoints/epoch_NNNN/{model.safetensors, trainer_state.pt} atomically.

    trainer_state holds only tensors and plain Python values (optimizer and scheduler state
    dicts, RNG state, counters), so it loads with torch.load(weights_only=True).
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / WEIGHTS_FILE)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("epoch_*"))[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted((run_dir / CHECKPOINTS).glob("epoch_*"))
    return done[-1] if done else None


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    load_weights(model, path / WEIGHTS_FILE)
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
