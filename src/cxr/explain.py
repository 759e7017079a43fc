"""Grad-CAM heatmaps for any finding, aligned with the original image, and the pointing game.

Heatmaps come from the `grad-cam` package (pytorch_grad_cam): Grad-CAM or Grad-CAM++ on the last
block of layer4, with the target the finding's logit (one sigmoid per finding, or the class's
pre-softmax score). The package returns a map over the model's S x S input; we undo the pad /
crop / resize of preprocessing with `cxr.preprocess.heatmap_to_original`, so a heatmap lies on
the original pixels whatever the image's aspect ratio.

The maps' resolution is the layer4 grid: S / 32 cells a side (3 x 3 at 96 px, 7 x 7 at 224 px),
bilinearly upsampled. That is the nature of Grad-CAM on a ResNet, not a bug.

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
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import nn

from cxr.errors import CxrError
from cxr.preprocess import Geometry, heatmap_to_original

if TYPE_CHECKING:
    from cxr.inference import Predictor


def _cam_classes() -> dict[str, type]:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


METHODS = ("gradcam", "gradcam++")
# Target block: layer4 (the default, the usual Grad-CAM layer: S / 32 cells a side) or layer3
# (twice as fine, S / 16, less specific to the finding).
LAYERS = ("layer4", "layer3")
_TWINS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, threading.Lock, tuple]] = (
    weakref.WeakKeyDictionary()
)
_TWINS_LOCK = threading.Lock()


# ---------------------------------------------------------------- heatmaps


def heatmaps(
    predictor: Predictor,
    image: np.ndarray,
    findings: list[str] | None = None,
    method: str = "gradcam",
    *,
    layer: str = "layer4",
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
    predictor: Predictor,
    pixels: np.ndarray,
    findings: list[str] | None = None,
    method: str = "gradcam",
    *,
    layer: str = "layer4",
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
    if layer not in LAYERS:
        raise CxrError(f"unknown target layer {layer!r}; expected one of {list(LAYERS)}")
    with _private_copy(predictor.model) as model:
        target = getattr(model, layer)[-1]
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


def feature_grid(image_size: int, layer: str = "layer4") -> int:
    """Side of a torchvision ResNet's layer grid for an S x S input: halvings, rounded up."""
    n = int(image_size)
    # conv1, maxpool, layer2, layer3, layer4: each stride 2, padded
    for _ in range(5 if layer == "layer4" else 4):
        n = -(-n // 2)
    return n


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


# ---------------------------------------------------------------- pointing game


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> bool:
    """Whether the heatmap's maximum lies in the mask dilated by `tolerance_px` pixels.

    A flat map (no maximum, e.g. all zero) is a miss.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != mask.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {mask.shape} differ in shape")
    if not heat.size or float(heat.max()) <= float(heat.min()):
        return False
    region = dilate(mask, tolerance_px)
    return bool(region.flat[int(np.argmax(heat))])


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass that lies inside the (undilated) mask; 0 for a 0 map."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = heat.sum()
    return float(heat[mask].sum() / total) if total > 0 else 0.0


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """The mask grown by a disk of `radius_px` pixels (0: unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_px <= 0:
        return mask
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1,) * 2)
    return cv2.dilate(mask.astype(np.uint8), disk) > 0


def same_side(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the heatmap has more mass in the image half (left / right) holding more mask.

    A check a centre-biased map cannot pass for a one-sided lesion (effusion, pneumothorax).
    """
    w = mask.shape[1]
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    lesion_right = mask[:, w // 2 :].sum() > mask[:, : w // 2].sum()
    left, right = heat[:, : w // 2].sum(), heat[:, w - w // 2 :].sum()
    return bool(right > left) if lesion_right else bool(left > right)


def pointing_game(
    predictor: Predictor,
    root: str | Path,
    keys: list[str],
    finding: str,
    method: str = "gradcam",
    layer: str = "layer4",
    tolerance: float = 0.03,
    random_draws: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Does the heatmap point at the planted lesion? On SYNTHETIC phantoms with known masks.

    Over the images of `keys` that have `finding` planted (a mask in `root`/masks), per map:
    hit_rate: share whose heatmap maximum lies inside the lesion mask dilated by
        `tolerance` x the image's long side (3%: 4 px at 128 px, 8 px at 256 px), the usual
        allowance of the pointing game for a map that is coarse by construction; a flat map
        is a miss;
    mass_inside: mean share of heatmap mass inside the undilated mask;
    side_rate: share whose heatmap mass leans to the lesion's half of the image (`same_side`);
    random_*: the same for random maps: uniform noise on the same grid as the heatmap (S / 32 a
        side for layer4), put on the image exactly as Grad-CAM is (bilinear, pad removed),
        `random_draws` per image, seeded;
    centre_*: a map peaked at the image centre: a pointing game a central lesion lets a
        constant map win (centre_side_rate is 0: a symmetric map leans nowhere);
    mask_area: mean share of the image the mask covers (the mass a uniform map would score).
    """
    from cxr.data.image_io import decode_image
    from cxr.data.synthetic import load_masks

    root = Path(root)
    rng = np.random.default_rng(seed)
    grid = feature_grid(predictor.run.config.preprocess.image_size, layer)
    scores: dict[str, list[np.ndarray]] = {"": [], "random_": [], "centre_": []}
    areas, radii = [], []
    iterator = keys
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(keys, desc=f"pointing game {finding}", unit="img", leave=False)
    for key in iterator:
        masks = load_masks(root, key)
        if finding not in masks:
            continue
        path = Path(key) if Path(key).is_file() else root / "images" / Path(key).name
        image = decode_image(path)
        mask = masks[finding]
        if mask.shape != image.shape:
            mask = cv2.resize(mask.astype(np.uint8), image.shape[::-1], cv2.INTER_NEAREST) > 0
        radius = max(1, round(tolerance * max(image.shape)))
        pixels, geometry = predictor.prepare(image)
        maps = heatmap_for_preprocessed(predictor, pixels, [finding], method, layer=layer)

        def score(heat: np.ndarray, mask=mask, radius=radius) -> np.ndarray:
            hit = pointing_hit(heat, mask, radius)
            return np.array([hit, mass_inside(heat, mask), same_side(heat, mask)], np.float64)

        randoms = [
            score(to_original(rng.random((grid, grid), dtype=np.float32), geometry))
            for _ in range(random_draws)
        ]
        scores[""].append(score(to_original(maps[finding], geometry)))
        scores["random_"].append(np.mean(randoms, axis=0))
        scores["centre_"].append(score(to_original(_centre_map(grid), geometry)))
        areas.append(float(mask.mean()))
        radii.append(radius)
    if not areas:
        raise CxrError(f"no image among the {len(keys)} given has a {finding} mask in {root}")
    out = {"finding": finding, "method": method, "layer": layer, "n_images": len(areas)}
    for prefix, rows in scores.items():
        mean = np.mean(rows, axis=0)
        out |= {f"{prefix}hit_rate": float(mean[0]), f"{prefix}mass_inside": float(mean[1]),
                f"{prefix}side_rate": float(mean[2])}  # fmt: skip
    out |= {"mask_area": float(np.mean(areas)), "tolerance_px": int(np.median(radii)), "grid": grid}
    return out


def _centre_map(grid: int) -> np.ndarray:
    """A map on the layer4 grid that peaks at its centre."""
    centre = (grid - 1) / 2
    yy, xx = np.mgrid[0:grid, 0:grid]
    return (1.0 / (1.0 + (yy - centre) ** 2 + (xx - centre) ** 2)).astype(np.float32)


def format_pointing_table(results: list[dict]) -> str:
    """Pointing-game results as an aligned text table, one row per finding (and method)."""
    head = (
        f"{'finding':<14}{'method':<11}{'n':>4} | {'hit':>6}{'random':>7}{'centre':>7} | "
        f"{'mass':>6}{'random':>7}{'mask':>6} | {'side':>6}{'random':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['finding']:<14}{r['method']:<11}{r['n_images']:>4} | {r['hit_rate']:>6.2f}"
            f"{r['random_hit_rate']:>7.2f}{r['centre_hit_rate']:>7.2f} | {r['mass_inside']:>6.2f}"
            f"{r['random_mass_inside']:>7.2f}{r['mask_area']:>6.2f} | {r['side_rate']:>6.2f}"
            f"{r['random_side_rate']:>7.2f}"
        )
    return "\n".join(lines)
