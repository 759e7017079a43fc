"""Training options for accuracy that transfers: augmentation presets, random erasing, mixup /
CutMix with soft targets, weight EMA and SWA (unit tests, then small real Kermany runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cxr.augment import augment_batch, mix_batch
from cxr.averaging import WeightAverages
from cxr.config import AUGMENT_PRESETS, AugmentConfig, TrainConfig, config_from_dict
from cxr.errors import ConfigError
from cxr.losses import build_loss
from cxr.train import train

_OFF = {
    "rotation_deg": 0.0,
    "translate": 0.0,
    "scale_min": 1.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": 0.0,
    "noise_std": 0.0,
    "blur_prob": 0.0,
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    g = _gen(123)
    base = torch.linspace(0.2, 0.8, 32)[None, None, :, None].expand(8, 1, 32, 32)
    return (base + 0.05 * torch.rand(8, 1, 32, 32, generator=g)).clamp(0, 1).contiguous()


# ------------------------------------------------------------------------- presets


def test_preset_sets_the_magnitudes_and_an_explicit_field_wins():
    heavy = AugmentConfig(preset="heavy").resolved()
    assert heavy.rotation_deg == AUGMENT_PRESETS["heavy"]["rotation_deg"]
    assert AugmentConfig().resolved().rotation_deg == 7.0  # medium: the long-standing default
    mixed = AugmentConfig(preset="heavy", rotation_deg=1.0).resolved()
    assert mixed.rotation_deg == 1.0 and mixed.gamma == AUGMENT_PRESETS["heavy"]["gamma"]
    # every preset names every magnitude, and light < medium < heavy in each
    for field in AUGMENT_PRESETS["medium"]:
        values = [AUGMENT_PRESETS[p][field] for p in ("light", "medium", "heavy")]
        values = [-v for v in values] if field == "scale_min" else values
        assert values == sorted(values), field
    with pytest.raises(ConfigError, match="augment.preset"):
        config_from_dict({"augment": {"preset": "extreme"}})


def test_heavier_presets_change_the_images_more(batch):
    change = {
        p: (augment_batch(batch, AugmentConfig(preset=p), _gen(0)) - batch).abs().mean().item()
        for p in ("light", "medium", "heavy")
    }
    assert change["light"] < change["medium"] < change["heavy"], change


# ------------------------------------------------------------------------- random erasing


def test_random_erasing_fills_one_rectangle_and_leaves_the_other_draws_alone(batch):
    plain = augment_batch(batch, AugmentConfig(**_OFF, strength=1.0), _gen(3))
    erased = augment_batch(batch, AugmentConfig(**_OFF, erase_prob=1.0), _gen(3))
    changed = (erased != plain)[:, 0]
    for i in range(len(batch)):
        rows = torch.nonzero(changed[i].any(dim=1)).flatten()
        cols = torch.nonzero(changed[i].any(dim=0)).flatten()
        assert len(rows) and len(cols), f"image {i} not erased"
        box = changed[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        area = box.numel() / changed[i].numel()
        # a filled rectangle (a noise pixel may equal the original by chance), of the asked area
        assert box.float().mean() > 0.95 and changed[i].sum() == box.sum()
        assert 0.01 <= area <= 0.25, area
    none = augment_batch(batch, AugmentConfig(**_OFF, erase_prob=0.0), _gen(3))
    assert torch.equal(none, plain)
    with pytest.raises(ConfigError, match="erase_area"):
        config_from_dict({"augment": {"erase_area": [0.3, 0.1]}})


# ------------------------------------------------------------------------- mixup / CutMix


def _one_hot(n: int, k: int = 2) -> torch.Tensor:
    return F.one_hot(torch.arange(n) % k, k).float()


def test_mixup_blends_images_and_labels_with_one_weight(batch):
    y = torch.eye(len(batch))  # one class per image: the label says who was mixed with whom
    x2, y2 = mix_batch(batch, y, AugmentConfig(mixup_alpha=0.4), _gen(1))
    assert torch.allclose(y2.sum(dim=1), torch.ones(len(batch)))
    lam = y2.diagonal()
    assert len(set(np.round(lam[lam < 1].numpy(), 6))) == 1  # one weight for the batch
    for i in range(len(batch)):
        others = torch.nonzero(y2[i] * (1 - y[i])).flatten()
        j = int(others[0]) if len(others) else i
        expected = lam[i] * batch[i] + (1 - lam[i]) * batch[j] if j != i else batch[i]
        assert torch.allclose(x2[i], expected, atol=1e-5), i


def test_cutmix_label_weights_are_the_pasted_areas(batch):
    y = torch.eye(len(batch))
    x2, y2 = mix_batch(batch, y, AugmentConfig(cutmix_alpha=1.0), _gen(2))
    own = (x2 == batch).float().mean(dim=(1, 2, 3))  # share of pixels kept from the image
    moved = [i for i in range(len(batch)) if y2[i, i] < 1]
    assert moved, "no box was pasted"
    for i in moved:
        assert abs(y2[i, i].item() - own[i].item()) < 0.02, (i, y2[i, i], own[i])
        j = int(torch.nonzero(y2[i] * (1 - y[i])).flatten()[0])
        box = x2[i] != batch[i]
        assert torch.equal(x2[i][box], batch[j][box])  # the box comes from the partner


def test_mixing_draws_one_number_whatever_the_config(batch):
    y = _one_hot(len(batch))
    for cfg in (
        AugmentConfig(mixup_alpha=0.2),
        AugmentConfig(cutmix_alpha=1.0, mix_prob=0.0),
        AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0),
    ):
        g, ref = _gen(9), _gen(9)
        mix_batch(batch, y, cfg, g)
        mix_batch(batch[:3], y[:3], cfg, g)
        torch.randint(0, 2**62, (2,), generator=ref)
        assert torch.equal(g.get_state(), ref.get_state())
    off = AugmentConfig()
    g = _gen(9)
    assert mix_batch(batch, y, off, g) == (batch, y)
    assert torch.equal(g.get_state(), _gen(9).get_state())  # off: nothing drawn


def test_losses_take_soft_targets():
    logits = torch.randn(6, 2)
    a, b = _one_hot(6), _one_hot(6).flip(1)
    soft = 0.3 * a + 0.7 * b
    ce = build_loss(TrainConfig(), "multiclass", a.numpy())
    mixed = 0.3 * ce(logits, a) + 0.7 * ce(logits, b)
    assert torch.allclose(ce(logits, soft), mixed, atol=1e-6)
    assert torch.allclose(ce(logits, a), F.cross_entropy(logits, a.argmax(dim=1)))
    bce = build_loss(TrainConfig(), "multilabel", a.numpy())
    assert torch.allclose(bce(logits, soft), 0.3 * bce(logits, a) + 0.7 * bce(logits, b))


# ------------------------------------------------------------------------- EMA and SWA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_ema_is_the_exponential_average_of_the_steps():
    model = _net()
    model(torch.rand(2, 1, 8, 8))
    avg = WeightAverages(model, TrainConfig(ema_decay=0.5))
    expected = None  # AveragedModel: the first update copies the weights
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.rand(4, 1, 8, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
        avg.after_step(model, opt, epoch=1)
        now = [p.detach().clone() for p in model.parameters()]
        expected = (
            now
            if expected is None
            else [0.5 * e + 0.5 * p for e, p in zip(expected, now, strict=True)]
        )
    got = list(avg.evaluated(model).parameters())
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6)
    assert avg.evaluated(model) is not model
    assert WeightAverages(model, TrainConfig()).evaluated(model) is model  # off


def test_swa_averages_the_last_epochs_and_recomputes_batchnorm():
    from cxr.runtime import select_runtime

    model = _net()
    model(torch.rand(2, 1, 8, 8))
    cfg = TrainConfig(epochs=3, swa_epochs=2, swa_lr=0.05)
    avg = WeightAverages(model, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.after_step(model, opt, epoch)
        assert opt.param_groups[0]["lr"] == (0.05 if epoch >= 2 else 0.1)
        avg.after_epoch(model, epoch)
        if epoch >= 2:
            snapshots.append([p.detach().clone() for p in model.parameters()])
    pixels = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    swa = avg.swa_model(_Images(pixels), select_runtime("cpu"), batch_size=4)
    for i, p in enumerate(swa.parameters()):
        assert torch.allclose(p, (snapshots[0][i] + snapshots[1][i]) / 2, atol=1e-6)
    bn = swa[1]
    assert int(bn.num_batches_tracked) > 0 and not torch.allclose(bn.running_var, torch.ones(4))
    assert (
        WeightAverages(model, TrainConfig(swa_epochs=2)).swa_model(
            _Images(pixels), select_runtime("cpu"), 4
        )
        is None
    )  # no epoch averaged yet


class _Table:
    def __init__(self, n):
        self.labels = np.zeros((n, 2), dtype=np.float32)

    def __len__(self):
        return len(self.labels)


class _Images:
    """The two attributes of CachedImages that runtime.batches reads."""

    def __init__(self, pixels):
        self.pixels, self.table = pixels, _Table(len(pixels))


# ------------------------------------------------------------------------- real runs


def _real_run(kermany_train, root, augment: dict, train_cfg: dict):
    cfg = config_from_dict(
        {
            "data": {"path": str(kermany_train), "limit": 48, "val_fraction": 0.25},
            "preprocess": {"image_size": 32},
            "augment": augment,
            "train": {
                "epochs": 1,
                "batch_size": 12,
                "lr": 2e-3,
                "seed": 0,
                "cache_dir": str(root / "cache"),
                "early_stopping_patience": 0,
            }
            | train_cfg,
            "out_dir": str(root / "run"),
        }
    )
    return train(cfg, progress=False)


@pytest.mark.slow  # trains a model
def test_real_run_with_heavy_preset_erasing_mixup_and_ema(kermany_train, tmp_path):
    result = _real_run(
        kermany_train,
        tmp_path,
        {"preset": "heavy", "erase_prob": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
        {"ema_decay": 0.9, "epochs": 2},
    )
    run = result.run_dir
    info = json.loads((run / "model.json").read_text())
    assert "EMA" in info["weight_averaging"]
    saved = json.loads((run / "config.json").read_text())["augment"]
    assert saved["preset"] == "heavy" and saved["mixup_alpha"] == 0.4
    # the saved weights are the EMA's, not the last step's (which the checkpoint holds)
    final = load_file(str(run / "model.safetensors"))
    raw = load_file(str(run / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert any(not torch.equal(final[k], raw[k]) for k in final if final[k].is_floating_point())
    assert np.isfinite(result.history[-1]["train_loss"])
    assert result.best_val_auroc is not None


@pytest.mark.slow  # trains a model
def test_real_run_with_swa(kermany_train, tmp_path):
    result = _real_run(
        kermany_train,
        tmp_path,
        {"cutmix_alpha": 1.0},
        {"epochs": 2, "swa_epochs": 2, "swa_lr": 1e-3},
    )
    run = result.run_dir
    info = json.loads((run / "model.json").read_text())
    assert info["weight_averaging"] == "SWA over epochs 1-2 at lr 0.001"
    assert info["best_epoch"] == 2
    # the run's model is the average of the two epochs' weights (BatchNorm stats recomputed)
    final = load_file(str(run / "model.safetensors"))
    epochs = [
        load_file(str(run / "checkpoints" / f"epoch_000{e}" / "model.safetensors")) for e in (1, 2)
    ]
    name = "conv1.weight"
    assert torch.allclose(final[name], (epochs[0][name] + epochs[1][name]) / 2, atol=1e-6)
    assert [row["lr"] for row in result.history] == [1e-3, 1e-3]


@pytest.mark.slow  # trains a model
def test_resume_restores_the_averages_and_replays_the_mixing(kermany_train, tmp_path, monkeypatch):
    """Killed in epoch 3 and resumed: the same final (EMA + SWA) weights as an uninterrupted run,
    so the averages are checkpointed and mixup / erasing replay from the saved generator."""
    import cxr.train as train_module

    def cfg(out: str):
        return config_from_dict(
            {
                "data": {"path": str(kermany_train), "limit": 48, "val_fraction": 0.25},
                "preprocess": {"image_size": 32},
                "augment": {"erase_prob": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
                "train": {
                    "epochs": 3,
                    "batch_size": 12,
                    "lr": 2e-3,
                    "seed": 0,
                    "deterministic": True,
                    "cache_dir": str(tmp_path / "cache"),
                    "early_stopping_patience": 0,
                    "ema_decay": 0.9,
                    "swa_epochs": 2,
                },
                "out_dir": str(tmp_path / out),
            }
        )

    whole = train(cfg("whole"), progress=False)
    real_epoch = train_module.train_one_epoch
    calls = {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg("cut"), progress=False)
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)
    resumed = train(
        config_from_dict({"out_dir": str(tmp_path / "cut")}), resume=True, progress=False
    )
    a = load_file(str(whole.run_dir / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]
