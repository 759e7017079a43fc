"""Real training runs on Kermany images: the loss falls, checkpoints resume exactly, CLI works."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from cxr.cli import main
from cxr.config import config_from_dict
from cxr.train import train

pytestmark = pytest.mark.slow


def _cfg(data, tmp_path, out="run", **train):
    return config_from_dict(
        {
            "data": {"path": str(data), "limit": 160, "val_fraction": 0.25},
            "preprocess": {"image_size": 48},
            "train": {
                "epochs": 3,
                "batch_size": 16,
                "lr": 2e-3,
                "seed": 0,
                "deterministic": True,
                "cache_dir": str(tmp_path / "cache"),
                "early_stopping_patience": 0,
            }
            | train,
            "out_dir": str(tmp_path / out),
        }
    )


def test_short_real_training_run_loss_falls(kermany_train, tmp_path):
    result = train(_cfg(kermany_train, tmp_path, epochs=4), progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] * 0.9, losses
    run = result.run_dir
    for name in (
        "config.json",
        "model.json",
        "model.safetensors",
        "split.csv",
        "history.jsonl",
        "val_metrics.json",
        "val_roc.png",
        "training_curves.png",
    ):
        assert (run / name).is_file(), name
    info = json.loads((run / "model.json").read_text())
    assert info["findings"] == ["NORMAL", "PNEUMONIA"]
    assert len((run / "history.jsonl").read_text().splitlines()) == 4
    assert result.val_metrics["mean_auroc"] > 0.5  # learnt something on real images


def test_resume_after_interrupt_gives_the_same_weights(kermany_train, tmp_path, monkeypatch):
    whole = train(_cfg(kermany_train, tmp_path, out="whole"), progress=False)

    import cxr.train as train_module

    real_epoch = train_module.train_one_epoch
    calls = {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies in the middle of epoch 3
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(kermany_train, tmp_path, out="cut"), progress=False)
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    resumed = train(config_from_dict({"out_dir": str(cut)}), resume=True, progress=False)

    a = load_file(str(whole.run_dir / "checkpoints" / "epoch_0003" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "epoch_0003" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_cli_train_then_evaluate_on_a_folder(kermany_train, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "--data",
            str(kermany_train),
            "--limit",
            "96",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--set",
            f"train.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
        ]
    )
    assert code == 0
    result = tmp_path / "eval" / "metrics.json"
    code = main(
        [
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(kermany_train),
            "--json",
            str(result),
            "--split",
            "val",
        ]
    )
    assert code == 2  # its own validation images: refused unless asked (issue 11 item 1)
    code = main(
        [
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(kermany_train),
            "--json",
            str(result),
            "--split",
            "val",
            "--allow-overlap",
        ]
    )
    assert code == 0
    metrics = json.loads(result.read_text())
    assert metrics["leakage"]["n_overlapping_images"] == metrics["n_images"]
    assert set(metrics["auroc"]) == {"NORMAL", "PNEUMONIA"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["n_images"] == sum(
        1 for line in (out / "split.csv").read_text().splitlines() if line.endswith(",val")
    )
    assert (tmp_path / "eval" / "metrics_roc.png").is_file()
    assert "not a medical device" in capsys.readouterr().out


def test_existing_run_is_not_overwritten(kermany_train, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code = main(["train", "--data", str(kermany_train), "--out", str(out), "--epochs", "1"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "config.json").read_text() == "{}"


def test_no_training_batch_of_one_image(kermany_train, tmp_path):
    """Issue 11 item 10: 17 training images in batches of 16 left a last batch of one, which
    train-mode BatchNorm refuses at 32 px (layer4 is 1x1): `cxr tune --limit 200 --image-size
    32` crashed. The lone image now joins the batch before it."""
    import numpy as np
    import torch

    from cxr.config import RunConfig
    from cxr.data import read_table
    from cxr.data.cache import build_cache
    from cxr.losses import build_loss
    from cxr.models import build_model
    from cxr.optim import Schedule, build_optimizer
    from cxr.runtime import batches, select_runtime
    from cxr.train import train_one_epoch

    cfg = _cfg(kermany_train, tmp_path)
    table = read_table(cfg.data)
    images = build_cache(
        table.subset(np.arange(0, 1700, 100)),
        cfg.preprocess.model_copy(update={"image_size": 32}),
        tmp_path / "cache",
        progress=False,
    )
    gen = torch.Generator().manual_seed(0)
    sizes = [len(y) for _, y in batches(images, 16, gen)]
    assert sizes == [17]  # 17 = 16 + 1: one batch, nothing left alone
    model = build_model(cfg.model, 2)
    optimizer = build_optimizer(model, cfg.train)
    run_cfg = RunConfig.model_validate(
        {**cfg.model_dump(), "train": {**cfg.train.model_dump(), "batch_size": 16}}
    )
    loss_fn = build_loss(cfg.train, "multiclass", images.table.labels)
    schedule = Schedule(optimizer, cfg.train, 1)
    row = train_one_epoch(
        model,
        images,
        loss_fn,
        optimizer,
        schedule,
        run_cfg,
        gen,
        select_runtime("cpu"),
        progress=False,
    )
    assert np.isfinite(row["train_loss"])

    from cxr.distributed import training_batches

    assert [s.stop - s.start for s in training_batches(33, 16)] == [16, 17]
    assert [s.stop - s.start for s in training_batches(34, 16)] == [16, 16, 2]


def _kermany_layout(kermany_train, root, n_train: int, n_val: int):
    """root/{train,val}/{NORMAL,PNEUMONIA}/ of links to real Kermany files (nothing copied)."""
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((kermany_train / cls).iterdir())
            start = 0 if split == "train" else 500  # val files are not train files
            (root / split / cls).mkdir(parents=True)
            for f in files[start : start + n]:
                (root / split / cls / f.name).symlink_to(f)
    return root


def test_a_small_official_val_folder_does_not_replace_val_fraction(kermany_train, tmp_path, capsys):
    """Issue 11 item 2: Kermany's official val/ (16 images) silently became the validation
    split. The default now carves val_fraction from train by patient (val/ joins the pool) and
    says so in config.json, model.json and on screen; --val-source official takes val/."""
    data = _kermany_layout(kermany_train, tmp_path / "chest_xray", 24, 2)
    common = [
        "train",
        "--data",
        str(data),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--val-fraction",
        "0.25",
        "--set",
        f"train.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
    ]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert "a patient-level split of the training images" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "default" / "config.json").read_text())
    info = json.loads((tmp_path / "default" / "model.json").read_text())
    assert cfg["data"]["val_source"] == "fraction"
    assert info["training_data"]["val_source"] == "fraction"
    assert info["training_data"]["n_val"] > 4  # ~a quarter of 52 images, not val/'s 4

    assert main([*common, "--out", str(tmp_path / "official"), "--val-source", "official"]) == 0
    assert "official validation split (4 images)" in capsys.readouterr().out
    info = json.loads((tmp_path / "official" / "model.json").read_text())
    assert info["training_data"]["val_source"] == "official"
    assert info["training_data"]["n_val"] == 4


def test_offline_imagenet_fails_before_any_work_and_leaves_no_run(
    kermany_train, tmp_path, monkeypatch, capsys
):
    """Issue 11 item 12: --pretrained imagenet offline failed only after reading, splitting and
    caching, and left config.json + split.csv so that a retry with the same --out was refused."""
    from torchvision.models import ResNet18_Weights

    import cxr.train as train_module

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the weights were checked")

    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(kermany_train),
        "--limit",
        "40",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--set",
        f"train.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
    ]
    with monkeypatch.context() as m:
        m.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
        m.setattr(train_module, "prepare_data", no_data)
        assert main([*args, "--pretrained", "imagenet"]) == 2
    assert "could not download ImageNet weights" in capsys.readouterr().err
    assert not out.exists()

    def crash(*args, **kwargs):  # a failure after the data was split, before any weights
        raise RuntimeError("out of memory")

    with monkeypatch.context() as m:
        m.setattr(train_module, "train_one_epoch", crash)
        with pytest.raises(RuntimeError):
            main(args)
    assert not out.exists()  # no config.json or split.csv left behind
    assert main(args) == 0  # the retry with the same --out runs
    assert (out / "model.safetensors").is_file()
