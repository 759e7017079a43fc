"""`cxr train --log tensorboard`: per-epoch loss, learning rate, images/s, validation AUROC per
finding and augmented samples, in event files TensorBoard reads; training itself unchanged."""

from __future__ import annotations

import json
import sys

import pytest

from cxr.config import config_from_dict
from cxr.errors import ConfigError
from cxr.train import train


def _cfg(tmp_path, name: str, log: str):
    return config_from_dict(
        {
            "data": {
                "path": "synthetic",
                "format": "synthetic",
                "synthetic_count": 64,
                "val_fraction": 0.3,
            },
            "preprocess": {"image_size": 32},
            "model": {"arch": "resnet18", "pretrained": "none"},
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "seed": 0,
                "early_stopping_patience": 0,
                "cache_dir": str(tmp_path / "cache"),
                "log": log,
            },
            "out_dir": str(tmp_path / name),
        }
    )


@pytest.mark.slow  # trains a model
def test_tensorboard_log_has_every_epoch_and_leaves_training_unchanged(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra cxr[tracking]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = train(_cfg(tmp_path, "logged", "tensorboard"), progress=False)
    events = EventAccumulator(str(logged.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    findings = json.loads((logged.run_dir / "model.json").read_text())["findings"]
    wanted = {"train/loss", "train/lr", "train/images_per_s", "val/mean_auroc", "val/accuracy"}
    assert wanted | {f"val_auroc/{f}" for f in findings} <= scalars
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in logged.history])
    images = events.Images("train/augmented")
    assert [e.step for e in images] == [1, 2]
    assert images[0].width * images[0].height >= 4 * 32 * 32  # four 32 px samples, tiled

    # the samples have their own generator: the same run without the log trains identically
    plain = train(_cfg(tmp_path, "plain", "none"), progress=False)
    assert [r["train_loss"] for r in plain.history] == [r["train_loss"] for r in logged.history]
    assert not (plain.run_dir / "tensorboard").exists()


def test_a_missing_tensorboard_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="pip install 'cxr\\[tracking\\]'"):
        train(_cfg(tmp_path, "run", "tensorboard"), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_mlflow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match="pip install mlflow"):
        train(_cfg(tmp_path, "run", "mlflow"), progress=False)


@pytest.mark.slow  # trains a model
def test_mlflow_run_has_params_every_epoch_and_the_samples(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the optional extra cxr[tracking]")
    from mlflow.tracking import MlflowClient

    # MLflow's own default store (SQLite; its file store is deprecated): no server, all in tmp
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns of the working folder
    logged = train(_cfg(tmp_path, "logged", "mlflow"), progress=False)

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(client.search_experiments()[0].experiment_id)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "logged" and run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "resnet18"
    assert run.data.params["train.epochs"] == "2"
    findings = json.loads((logged.run_dir / "model.json").read_text())["findings"]
    wanted = {"train_loss", "train_lr", "train_images_per_s", "val_mean_auroc", "val_accuracy"}
    assert wanted | {f"val_auroc_{f}" for f in findings} <= set(run.data.metrics)
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == [1, 2]
    by_step = {m.step: m.value for m in loss}
    assert [by_step[1], by_step[2]] == pytest.approx([r["train_loss"] for r in logged.history])
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "augmented")]
    assert artifacts == ["augmented/epoch_001.png", "augmented/epoch_002.png"]
    assert len(list((tmp_path / "mlruns").rglob("epoch_00*.png"))) == 2
