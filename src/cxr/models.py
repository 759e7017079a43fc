"""ResNet factory: torchvision ResNets with a one-channel stem and one output per finding/class."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from cxr.config import ModelConfig
from cxr.errors import ConfigError, OfflineError

# name -> (constructor, ImageNet weights enum); a registry instead of an if/elif chain.
ARCHITECTURES = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V2),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V2),
}


def build_model(cfg: ModelConfig, num_outputs: int) -> nn.Module:
    """A ResNet taking (N, 1, S, S) normalised grey images and returning (N, num_outputs) logits.

    The head is linear logits for both tasks: sigmoid (multi-label) or softmax (single-label)
    is applied by the loss and by `probabilities`, so one model class serves both.
    """
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {cfg.arch!r}")
    if num_outputs < 1:
        raise ConfigError(f"num_outputs must be >= 1, got {num_outputs}")
    constructor, weights = ARCHITECTURES[cfg.arch]
    model = constructor(weights=None)
    if cfg.pretrained == "imagenet":
        model.load_state_dict(_download_imagenet(weights))
    model.conv1 = _grey_stem(model.conv1)
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    if cfg.pretrained not in ("none", "imagenet"):
        load_backbone_file(model, cfg.pretrained)
    return model


def check_pretrained(cfg: ModelConfig) -> None:
    """Fail now, before any data is read, if the starting weights cannot be had: ImageNet
    weights are fetched into torch's cache (so `build_model` later reads a local file), a
    weights file must exist."""
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {cfg.arch!r}")
    if cfg.pretrained == "imagenet":
        _download_imagenet(ARCHITECTURES[cfg.arch][1])
    elif cfg.pretrained != "none" and not Path(cfg.pretrained).is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {cfg.pretrained}")


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, F) pooled layer4 of a torchvision ResNet: its forward pass up to, not including, fc,
    so `model.fc(pooled_features(model, x))` is `model(x)` (the OOD gate and the logits from
    one pass)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def _grey_stem(conv: nn.Conv2d) -> nn.Conv2d:
    """One input channel; pretrained RGB filters are summed, which is what a grey image
    replicated to RGB would have seen, so ImageNet features carry over unchanged."""
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    return grey


def _download_imagenet(weights: tvm.WeightsEnum) -> dict:
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - urllib/SSL/socket errors all mean "offline"
        raise OfflineError(
            f"could not download ImageNet weights {weights} ({exc.__class__.__name__}: {exc}). "
            "Without internet, pass model.pretrained=none (train from scratch) or the path of a "
            "local .safetensors/.pth file with the same architecture."
        ) from None


def load_backbone_file(model: nn.Module, path: str) -> None:
    """Load weights from a local safetensors or .pth file (weights_only: never a pickle).

    Tensors whose shape does not fit (an RGB stem, a different head) are adapted or skipped,
    and the skipped names are reported, so an ImageNet or CheXpert checkpoint can seed a model.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    usable, skipped = {}, []
    for name, tensor in state.items():
        if name not in own:
            skipped.append(name)
        elif name == "conv1.weight" and tensor.shape[1] == 3 and own[name].shape[1] == 1:
            usable[name] = tensor.sum(dim=1, keepdim=True)
        elif tensor.shape == own[name].shape:
            usable[name] = tensor
        else:
            skipped.append(name)
    if not usable:
        raise ConfigError(f"model.pretrained: no tensor in {file} fits {type(model).__name__}")
    model.load_state_dict(usable, strict=False)
    if skipped:
        print(f"pretrained: {len(usable)} tensors loaded from {file}, skipped {skipped[:5]}")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits to probabilities: sigmoid per finding, or softmax over classes."""
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)
