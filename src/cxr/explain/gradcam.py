"""Grad-CAM heatmaps for any finding, aligned with the original image, and the pointing game.

Heatmaps come from the `grad-cam` package (pytorch_grad_cam): Grad-CAM or Grad-CAM++ on the
layer the backbone names "last" (`Classifier.cam_layers`; layer4's last block on a ResNet), with
the target the finding's logit (one sigmoid per finding, or the class's
pre-softmax score). The package returns a map over the model's S x S input; we undo the pad /
crop / resize of preprocessing with `cxr.preprocess.heatmap_to_original`, so a heatmap lies on
the original pixels whatever the image's aspect ratio.

The maps' resolution is that layer's grid: S / 32 cells a side for every registered backbone
(3 x 3 at 96 px, 7 x 7 at 224 px), bilinearly upsampled; "finer" is S / 16. That is the nature of
Grad-CAM on a CNN, not a bug.

Thread safety: the package hooks the model's layers, and a hook on a shared model would also
fire on a concurrent `Predictor.predict` in another thread (a Flask server). So heatmaps are
computed on a private copy of the model, made once per model and guarded by a lock: predictions
never wait for an explanation, and explanations of one model run one at a time.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import nn

from cxr.errors import CxrError
from cxr.preprocess import Geometry, heatmap_to_original


class Explainable(Protocol):
    """What a heatmap needs of a loaded run (`cxr.inference.Predictor` is one)."""

    findings: list[str]
    model: nn.Module  # a cxr.models.Classifier

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]: ...

    def input_tensor(self, preprocessed: np.ndarray) -> torch.Tensor: ...


def _cam_classes() -> dict[str, type]:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


METHODS = ("gradcam", "gradcam++")
# Target layer: "last" (the default, the usual Grad-CAM layer: S / 32 cells a side) or "finer"
# (twice as fine, S / 16, less specific to the finding); on a ResNet they are layer4 and layer3,
# and those names are accepted too.
LAYERS = ("last", "finer")
_ALIASES = {"layer4": "last", "layer3": "finer"}
_TWINS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, threading.Lock, tuple]] = (
    weakref.WeakKeyDictionary()
)
_TWINS_LOCK = threading.Lock()


# ---------------------------------------------------------------- heatmaps


def heatmaps(
    predictor: Explainable,
    image: np.ndarray,
    findings: list[str] | None = None,
    method: str = "gradcam",
    *,
    layer: str = "last",
) -> dict[str, np.ndarray]:
    """Per finding, a float32 heatmap in [0, 1] with the shape of `image` (the decoded original).

    image: the intensity contract of `cxr.data.table` (float32 in [0, 1], 2-D). findings: names
    from `predictor.findings` (default: all). Each map is scaled so its maximum over the original
    image is 1 (0 everywhere when the model found no positive evidence).
    """
    pixels, geometry = predictor.prepare(image)
    model_maps = heatmap_for_preprocessed(predictor, pixels, findings, method, layer=layer)
    return {f: to_original(m, geometry) for f, m in model_maps.items()}


def heatmap_for_preprocessed(
    predictor: Explainable,
    pixels: np.ndarray,
    findings: list[str] | None = None,
    method: str = "gradcam",
    *,
    layer: str = "last",
) -> dict[str, np.ndarray]:
    """Per finding, a float32 (S, S) map in [0, 1] over the model's input (uint8 (S, S) pixels).

    For the report gallery, which has the cached preprocessed arrays at hand. One forward and
    one backward pass serve every finding: the input is repeated once per finding in a batch
    (the model is in eval mode, so rows do not interact).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = _cam_classes()
    if method not in classes:
        raise CxrError(f"unknown heatmap method {method!r}; expected one of {list(classes)}")
    index = finding_indices(predictor.findings, findings)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(
            f"pixels must be the uint8 (S, S) output of preprocessing, got {pixels.dtype} "
            f"{pixels.shape}"
        )
    x = predictor.input_tensor(pixels)
    batch = x.expand(len(index), *x.shape[1:]).contiguous()
    targets = [ClassifierOutputTarget(i) for i in index]
    layer = _ALIASES.get(layer, layer)
    if layer not in LAYERS:
        raise CxrError(f"unknown target layer {layer!r}; expected one of {list(LAYERS)}")
    with _private_copy(predictor.model) as model:
        target = model.cam_layers()[layer]
        # Gradients are needed at the target block's output only: the graph starts at that
        # block (its weights require grad, frozen in the original or not), so the backward pass
        # stops there instead of running through the whole network.
        model.requires_grad_(False)
        target.requires_grad_(True)
        cam = classes[method](model=model, target_layers=[target])
        try:
            with torch.enable_grad():  # also when the caller is inside torch.no_grad()
                maps = cam(input_tensor=batch, targets=targets)
        finally:
            cam.activations_and_grads.release()  # removes the hooks; no context manager: the
            # package's __exit__ swallows IndexError
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)
    return {predictor.findings[i]: np.clip(m, 0.0, 1.0) for i, m in zip(index, maps, strict=True)}


def to_original(model_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A model-space map -> float32 on the original image, max 1 there (all 0 stays 0)."""
    heat = np.clip(heatmap_to_original(model_map, geometry), 0.0, None)
    top = float(heat.max()) if heat.size else 0.0
    return (heat / top).astype(np.float32) if top > 0 else np.zeros_like(heat, dtype=np.float32)


def finding_indices(known: list[str], wanted: list[str] | None) -> list[int]:
    """Indices of `wanted` in `known` (all when None); an unknown name is a named error."""
    if wanted is None:
        return list(range(len(known)))
    if not wanted:
        raise CxrError("no finding asked for: pass at least one name or None for all")
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise CxrError(f"unknown finding(s) {unknown}; this model knows {known}")
    return [known.index(f) for f in wanted]


@contextmanager
def _private_copy(model: nn.Module) -> Iterator[nn.Module]:
    """The model's explanation twin (see the module docstring), held under its lock.

    The twin is rebuilt when the model's weights change in place (load_state_dict, an optimizer
    step: torch counts them in each tensor's version) or are replaced (moved to a device).
    """
    version = _weights_version(model)
    with _TWINS_LOCK:
        entry = _TWINS.get(model)
        if entry is None or entry[2] != version:
            twin = copy.deepcopy(model).eval()
            entry = (twin, threading.Lock(), version)
            _TWINS[model] = entry
    twin, lock, _ = entry
    with lock:
        yield twin


def _weights_version(model: nn.Module) -> tuple[int, int]:
    """Changes when a tensor is written in place (its version) or replaced (`.to(device)`)."""
    tensors = list(model.state_dict(keep_vars=True).values())
    return sum(t._version for t in tensors), sum(t.data_ptr() for t in tensors)


def feature_grid(model: nn.Module, image_size: int, layer: str = "last") -> int:
    """Side of the grid of the model's Grad-CAM `layer` for an S x S input (measured with one
    forward pass of a blank image, so it holds for every backbone)."""
    target = model.cam_layers()[_ALIASES.get(layer, layer)]
    seen = []
    hook = target.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-1]))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.zeros(1, 1, image_size, image_size, device=device))
            model.train(was_training)
    finally:
        hook.remove()
    return int(seen[0])


# ---------------------------------------------------------------- overlays


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """uint8 RGB (H, W, 3): the grey image with the heatmap in the JET colormap blended on top.

    image: float in [0, 1] or uint8, (H, W); heatmap: (H, W) in [0, 1].
    """
    image, heatmap = np.asarray(image), np.asarray(heatmap)
    if image.ndim != 2 or heatmap.shape != image.shape:
        raise ValueError(
            f"image must be 2-D and heatmap of the same shape, got {image.shape} and "
            f"{heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    grey = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    grey = np.clip(grey, 0.0, 1.0)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = colour[..., ::-1].astype(np.float32) / 255.0  # BGR -> RGB
    blended = (1 - alpha) * grey[..., None] + alpha * colour
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, heatmap: np.ndarray, alpha=0.4) -> Path:
    """Write `overlay(image, heatmap)` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay(image, heatmap, alpha)
    if not cv2.imwrite(str(path), rgb[..., ::-1]):
        raise CxrError(f"cannot write the overlay PNG: {path}")
    return path
