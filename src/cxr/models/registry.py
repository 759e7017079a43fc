"""One interface for every backbone, and the registry of architectures by name.

Code outside this package asks a model for its pooled features, its head and the layers to
explain; it never reaches for `conv1`, `fc` or `layer4` (torchxrayvision's model interface).
Adding a backbone is one new file in this package that calls `register`, and its import in
`cxr.models.__init__`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from torchvision.models import WeightsEnum

from cxr.config import ModelConfig, PreprocessConfig
from cxr.errors import ConfigError, OfflineError
from cxr.preprocess import MEAN, STD


class Classifier(nn.Module):
    """A torchvision backbone with a one-channel stem and one logit per finding/class.

    The torchvision model's own children are registered on this module unchanged, so its state
    dict keys are torchvision's (a torchvision or torchxrayvision checkpoint loads by name).
    Subclasses say where the pooled features end and which layers Grad-CAM may look at.
    `forward(x)` is `head(pooled_features(x))`: one pass gives the logits and the features the
    OOD gate scores.
    """

    head_name = "fc"
    # The input scale the weights expect, (x - input_mean) / input_std on [0, 1] pixels: the
    # run's preprocess.mean / std, set by `build_model` (cxr's defaults until then).
    input_mean: float = MEAN
    input_std: float = STD

    def __init__(self, net: nn.Module):
        super().__init__()
        for name, child in net.named_children():
            self.add_module(name, child)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(N, 1, S, S) -> (N, F): everything before the last linear layer."""
        raise NotImplementedError

    def cam_layers(self) -> dict[str, nn.Module]:  # pragma: no cover - abstract
        """Grad-CAM target layers: "last" (the usual, coarsest) and "finer" (twice as fine)."""
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear:
        return _get(self, self.head_name)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def set_head(self, num_outputs: int) -> None:
        _set(self, self.head_name, nn.Linear(self.head.in_features, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled_features(x))

    def set_normalization(self, preprocess: PreprocessConfig) -> None:
        """Take the run's input contract, so every forward pass normalises as it was trained."""
        self.input_mean, self.input_std = float(preprocess.mean), float(preprocess.std)


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]  # torchvision constructor, called with weights=None
    weights: WeightsEnum  # its ImageNet weights
    adapter: type[Classifier]


ARCHITECTURES: dict[str, Architecture] = {}
# Models made of other models (`cxr ensemble`): built from the whole ModelConfig, never trained.
COMPOSITES: dict[str, Callable[[ModelConfig, int], Classifier]] = {}


def register(
    name: str, build: Callable[..., nn.Module], weights: WeightsEnum, adapter: type[Classifier]
) -> None:
    ARCHITECTURES[name] = Architecture(name, build, weights, adapter)


def register_composite(name: str, build: Callable[[ModelConfig, int], Classifier]) -> None:
    COMPOSITES[name] = build


def check_arch(name: str) -> Architecture:
    if name in COMPOSITES:
        raise ConfigError(
            f"model.arch: {name!r} models are made from finished runs (`cxr {name}`), not trained"
        )
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"model.arch: unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


def build_model(
    cfg: ModelConfig, num_outputs: int, preprocess: PreprocessConfig | None = None
) -> Classifier:
    """A Classifier taking (N, 1, S, S) normalised grey images, returning (N, num_outputs) logits.

    The head is linear logits for both tasks: sigmoid (multi-label) or softmax (single-label)
    is applied by the loss and by `probabilities`, so one model class serves both.
    `preprocess` gives the input normalisation (cxr's default when None).
    """
    model = _build(cfg, num_outputs)
    if preprocess is not None:
        model.set_normalization(preprocess)
    return model


def _build(cfg: ModelConfig, num_outputs: int) -> Classifier:
    if cfg.arch in COMPOSITES:
        return COMPOSITES[cfg.arch](cfg, num_outputs)
    arch = check_arch(cfg.arch)
    if num_outputs < 1:
        raise ConfigError(f"num_outputs must be >= 1, got {num_outputs}")
    net = imagenet_net(arch) if cfg.pretrained == "imagenet" else arch.build(weights=None)
    model = arch.adapter(net)
    _grey_stem(model)
    model.set_head(num_outputs)
    if cfg.pretrained not in ("none", "imagenet"):
        load_backbone_file(model, cfg.pretrained)
    return model


def check_pretrained(cfg: ModelConfig) -> None:
    """Before any data work: the starting weights can be had. ImageNet weights are read from the
    torch hub cache ($TORCH_HOME/hub/checkpoints) or downloaded into it (OfflineError when
    neither works); a weights file must exist."""
    if cfg.pretrained == "imagenet":
        weights = check_arch(cfg.arch).weights
        if not imagenet_cache_file(weights).is_file():
            imagenet_state_dict(weights)  # downloads into the cache, or says it is offline
    elif cfg.pretrained != "none" and not Path(cfg.pretrained).is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {cfg.pretrained}")


def _grey_stem(model: nn.Module) -> None:
    """The first convolution takes one channel; pretrained RGB filters are summed, which is what
    a grey image replicated to RGB would have seen, so ImageNet features carry over unchanged."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:  # pragma: no cover - every registered backbone starts with a convolution
        raise ConfigError(f"{type(model).__name__} has no convolution")
    name, conv = convs[0]
    grey = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    _set(model, name, grey)


def _get(root: nn.Module, dotted: str) -> nn.Module:
    return root.get_submodule(dotted)


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def imagenet_cache_file(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (or would keep) the weights: $TORCH_HOME/hub/checkpoints/NAME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def imagenet_net(arch: Architecture) -> nn.Module:
    """The torchvision model with its ImageNet weights, built by torchvision's own constructor
    (which also maps old checkpoint key names, as DenseNet's), from the hub cache when there."""
    try:
        return arch.build(weights=arch.weights)
    except OSError as exc:  # urllib/SSL/socket errors: the weights are neither cached nor reachable
        raise _offline(arch.weights, exc) from None


def imagenet_state_dict(weights: WeightsEnum) -> dict:
    """torchvision's ImageNet weights: from the torch hub cache when there, else downloaded."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - urllib/SSL/socket errors all mean "offline"
        raise _offline(weights, exc) from None


def _offline(weights: WeightsEnum, exc: Exception) -> OfflineError:
    return OfflineError(
        f"could not download ImageNet weights {weights} ({exc.__class__.__name__}: {exc}). "
        "Without internet, pass model.pretrained=none (train from scratch) or the path of a "
        "local .safetensors/.pth file with the same architecture (see README: pretrained "
        f"weights offline; the cache file would be {imagenet_cache_file(weights)})."
    )


def load_backbone_file(model: nn.Module, path: str) -> None:
    """Load weights from a local safetensors or .pth file (weights_only: never a pickle).

    Tensors whose shape does not fit (an RGB stem, a different head) are adapted or skipped,
    and the skipped names are reported, so an ImageNet or chest X-ray checkpoint can seed a model.
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
        want = own.get(name)
        if want is None:
            skipped.append(name)
        elif tensor.shape == want.shape:
            usable[name] = tensor
        elif tensor.ndim == 4 and tensor.shape[1] == 3 and want.shape[1] == 1:
            usable[name] = tensor.sum(dim=1, keepdim=True)  # an RGB stem, as _grey_stem does
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


def probabilities_numpy(logits: np.ndarray, task: str, temperature: float = 1.0) -> np.ndarray:
    """float64 probabilities from logits: sigmoid per finding or softmax over classes."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if task == "multilabel":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = sigmoid, without overflow for large |z|
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
