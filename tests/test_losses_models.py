"""Model factory, losses and optimisers/schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxr.config import ModelConfig, TrainConfig
from cxr.errors import ConfigError, OfflineError
from cxr.losses import build_loss, positive_weights
from cxr.models import build_model, load_backbone_file, probabilities
from cxr.optim import Schedule, build_optimizer


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_model_takes_one_channel_and_gives_one_output_per_finding(arch):
    model = build_model(ModelConfig(arch=arch), num_outputs=14).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 14)


def test_probabilities_per_task():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    assert torch.allclose(probabilities(logits, "multiclass").sum(1), torch.ones(1))
    assert torch.allclose(probabilities(logits, "multilabel"), torch.sigmoid(logits))


def test_imagenet_offline_gives_clear_error(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(OfflineError, match="model.pretrained=none"):
        build_model(ModelConfig(pretrained="imagenet"), 2)


def test_local_rgb_weights_seed_a_grey_model(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    rgb = resnet18(num_classes=1000)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    model = build_model(ModelConfig(pretrained=str(path)), 3)
    assert torch.allclose(model.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    assert model.fc.out_features == 3  # the 1000-class head was skipped, not forced in
    with pytest.raises(ConfigError, match="not found"):
        load_backbone_file(model, str(tmp_path / "missing.pt"))


def test_masked_bce_ignores_unknown_labels():
    loss = build_loss(TrainConfig(loss="bce"), "multilabel", np.zeros((1, 2)))
    logits = torch.tensor([[3.0, -3.0]])
    known = loss(logits, torch.tensor([[1.0, float("nan")]]))
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:, :1], torch.ones(1, 1))
    assert known.item() == pytest.approx(expected.item(), rel=1e-6)


def test_weighted_bce_and_focal():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    assert positive_weights(labels).tolist() == [3.0, 3.0]
    y = torch.tensor(labels)
    logits = torch.zeros(4, 2)
    plain = build_loss(TrainConfig(loss="bce"), "multilabel", labels)(logits, y)
    weighted = build_loss(TrainConfig(loss="weighted_bce"), "multilabel", labels)(logits, y)
    assert weighted > plain
    focal = build_loss(TrainConfig(loss="focal"), "multilabel", labels)
    easy = focal(torch.tensor([[5.0, -5.0]]), torch.tensor([[1.0, 0.0]]))
    hard = focal(torch.tensor([[-5.0, 5.0]]), torch.tensor([[1.0, 0.0]]))
    assert easy < 1e-4 < hard


def test_ce_with_label_smoothing_and_task_mismatch():
    y = torch.tensor([[0.0, 1.0]])
    sharp = build_loss(TrainConfig(loss="ce"), "multiclass", y.numpy())
    smooth = build_loss(TrainConfig(loss="ce", label_smoothing=0.2), "multiclass", y.numpy())
    logits = torch.tensor([[-8.0, 8.0]])
    assert smooth(logits, y) > sharp(logits, y)
    with pytest.raises(ConfigError, match="train.loss"):
        build_loss(TrainConfig(loss="ce"), "multilabel", y.numpy())


@pytest.mark.parametrize("name", ["bce", "weighted_bce", "focal"])
def test_label_smoothing_acts_on_every_multilabel_loss(name):
    """Issue 11 item 9: label_smoothing was silently ignored for bce, weighted_bce and focal."""
    labels = np.array([[1.0, 0.0], [0.0, float("nan")]], dtype=np.float32)
    y = torch.tensor(labels)
    sharp = build_loss(TrainConfig(loss=name), "multilabel", labels)
    smooth = build_loss(TrainConfig(loss=name, label_smoothing=0.2), "multilabel", labels)
    confident = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])  # right on every known label
    assert smooth(confident, y) > sharp(confident, y) + 1e-3  # over-confidence now costs
    if name != "focal":  # cross-entropy against 1 - eps/2 and eps/2, unknown label masked
        pos_weight = torch.as_tensor(positive_weights(labels)) if name == "weighted_bce" else None
        expected = nn.functional.binary_cross_entropy_with_logits(
            confident[[0, 0, 1], [0, 1, 0]],
            torch.tensor([0.9, 0.1, 0.1]),
            pos_weight=None if pos_weight is None else pos_weight[[0, 1, 0]],
        )
        assert smooth(confident, y).item() == pytest.approx(expected.item(), rel=1e-5)
    logits = torch.zeros(2, 2, requires_grad=True)
    for _ in range(300):  # the minimiser of smoothed BCE is p = 1 - eps/2, not p = 1
        loss = build_loss(TrainConfig(loss="bce", label_smoothing=0.2), "multilabel", labels)
        grad = torch.autograd.grad(loss(logits, y), logits)[0]
        logits = (logits - 5.0 * grad).detach().requires_grad_(True)
    assert torch.sigmoid(logits)[0, 0].item() == pytest.approx(0.9, abs=0.01)


def test_label_smoothing_acts_on_softmax_focal():
    y = torch.tensor([[0.0, 1.0]])
    sharp = build_loss(TrainConfig(loss="focal"), "multiclass", y.numpy())
    smooth = build_loss(TrainConfig(loss="focal", label_smoothing=0.2), "multiclass", y.numpy())
    logits = torch.tensor([[-1.0, 1.0]])
    assert smooth(logits, y) > sharp(logits, y)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "plateau", "none"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_and_schedule_steps(name, optimizer):
    model = nn.Linear(3, 1)
    cfg = TrainConfig(optimizer=optimizer, scheduler=name, epochs=3, lr=0.1, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    schedule = Schedule(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(3):
        for _ in range(4):
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
            schedule.after_step()
            lrs.append(opt.param_groups[0]["lr"])
        schedule.after_epoch(0.5)
    assert all(lr >= 0 for lr in lrs)
    if name == "cosine":
        assert lrs[0] < lrs[3] and lrs[-1] < lrs[3]  # warm-up, then decay
    if name == "none":
        assert set(lrs) == {0.1}
