"""Training logs that researchers' tools read: TensorBoard or MLflow, beside history.jsonl.

    cxr train ... --log tensorboard      # then: tensorboard --logdir RUN/tensorboard
    cxr train ... --log mlflow           # MLFLOW_TRACKING_URI, else MLflow's default
                                         # (./mlflow.db, artifacts in ./mlruns)

Per epoch: training loss, learning rate, images/s, validation mean AUROC, accuracy and AUROC per
finding, and a few augmented training images (what the model saw that epoch). Both come with
the optional extra `pip install cxr[tracking]` (TensorBoard and the MLflow client,
mlflow-skinny): asking for one that is not installed is a ConfigError naming the package,
before any training starts.
history.jsonl stays the run's own record either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.errors import ConfigError

TRACKERS = ("none", "tensorboard", "mlflow")
N_SAMPLE_IMAGES = 4


def _scalars(row: dict, metrics: dict) -> dict[str, float]:
    """The numbers of one epoch, under tool-friendly names (None left out)."""
    out = {
        "train/loss": row.get("train_loss"),
        "train/lr": row.get("lr"),
        "train/images_per_s": row.get("images_per_s"),
        "val/mean_auroc": metrics.get("mean_auroc"),
        "val/accuracy": metrics.get("accuracy"),
    }
    for finding, auroc in (metrics.get("auroc") or {}).items():
        out[f"val_auroc/{finding}"] = auroc
    return {k: float(v) for k, v in out.items() if v is not None}


class TensorBoardTracker:
    """torch.utils.tensorboard's SummaryWriter into RUN/tensorboard (appends on resume)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.log=tensorboard needs the tensorboard package: pip install "
                "'cxr[tracking]' (or pip install tensorboard), or train with --log none"
            ) from None
        self.dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def log_epoch(self, epoch: int, row: dict, metrics: dict, images=None) -> None:
        for name, value in _scalars(row, metrics).items():
            self.writer.add_scalar(name, value, epoch)
        if images is not None and len(images):
            self.writer.add_images("train/augmented", images, epoch, dataformats="NCHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per cxr run: its config as parameters, epochs as steps."""

    def __init__(self, run_dir: Path, config: dict):
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                "train.log=mlflow needs the mlflow package: pip install 'cxr[tracking]' (or "
                "pip install mlflow), or train with "
                "--log none (or --log tensorboard)"
            ) from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=Path(run_dir).name)
        flat = {
            f"{section}.{k}": v
            for section, fields in config.items()
            if isinstance(fields, dict)
            for k, v in fields.items()
        }
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log_epoch(self, epoch: int, row: dict, metrics: dict, images=None) -> None:
        names = {k.replace("/", "_"): v for k, v in _scalars(row, metrics).items()}
        self.mlflow.log_metrics(names, step=epoch)
        if images is not None and len(images):
            grid = np.concatenate(list(np.asarray(images)[:, 0]), axis=1)  # side by side
            self.mlflow.log_image((grid * 255).astype(np.uint8), f"augmented/epoch_{epoch:03d}.png")

    def close(self) -> None:
        self.mlflow.end_run()


def open_tracker(kind: str, run_dir: Path, config: dict):
    """The tracker for train.log (None for "none"); fails early when its package is missing."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir)
    if kind == "mlflow":
        return MlflowTracker(run_dir, config)
    raise ConfigError(f"train.log must be one of {', '.join(TRACKERS)}, got {kind!r}")
