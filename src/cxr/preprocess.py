"""The one preprocessing path: training, evaluation and serving all call `preprocess`.

float32 [0, 1] (H, W) under the intensity contract of `cxr.data.table` -> uint8 (S, S), in this
order, and for these reasons:

1. resize first, keeping the aspect ratio ("pad": fit the long side; "crop": fit the short side
   and centre-crop; "stretch": ignore it). CLAHE and the filters then cost the same for a
   2048 px DICOM as for a 224 px PNG, and their kernel sizes and tile counts mean the same thing
   at every source resolution. INTER_AREA when shrinking (it averages, so no aliasing), bilinear
   when enlarging.
2. CLAHE on the S x S image (pad mode: on the resized image *before* padding, so the black bars
   do not fill CLAHE's tiles and skew their histograms).
3. the optional filter (median, gaussian, bilateral or unsharp mask).
4. pad mode: pad the short side symmetrically with 0, last.

`Geometry` records what 1 and 4 did, so `heatmap_to_original` can put a model-space heatmap
(Grad-CAM) back onto the original image. The tensor helpers at the end turn the uint8 output
into the model's input; serving does
`model_input(torch.from_numpy(preprocess(img, cfg))[None], cfg)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxr.config import PreprocessConfig
from cxr.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where used: decode workers import this module without it
    import torch

# Bump when the pixels `preprocess` returns change for an unchanged config: it is part of the
# cache key, so old caches are rebuilt instead of silently reused.
PIPELINE_VERSION = 1

# The model sees (x / 255 - mean) / std with the run's preprocess.mean / std; cxr's own runs use
# MEAN / STD: a fixed, documented map of [0, 1] to about [-2, 2], not statistics of one data set,
# so a checkpoint means the same thing on every data source. An imported run keeps its library's
# (torchxrayvision: XRV_MEAN / XRV_STD, i.e. x / 255 * 2048 - 1024, in [-1024, 1024]).
MEAN = 0.5
STD = 0.25
XRV_MEAN = 0.5
XRV_STD = 1.0 / 2048.0

_HIST_BINS = 256  # CLAHE histogram bins (as OpenCV's 8-bit CLAHE)
_BILATERAL_SIGMA_COLOR = 20.0  # grey levels (of 255): steps larger than this are kept as edges
_UNSHARP_AMOUNT = 1.0  # out = image + amount * (image - blurred), as skimage's default


@dataclass(frozen=True)
class Geometry:
    """Where the original image went in the (S, S) output; all sizes are (rows, cols).

    original_size: the decoded image's (H, W).
    resized_size: (h, w) after the resize of step 1; `scale` is resized / original per axis.
    crop_offset: (top, left) of the centre crop inside the resized image ("crop" only).
    pad_offset: (top, left) of the resized image inside the output ("pad" only).
    output_size: S.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    pad_offset: tuple[int, int]
    output_size: int

    @property
    def scale(self) -> tuple[float, float]:
        """(rows, cols) scale factors of the resize, exactly as cv2.resize applied them."""
        (h, w), (rh, rw) = self.original_size, self.resized_size
        return rh / h, rw / w


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """float32 [0, 1] (H, W) -> uint8 (S, S), S = cfg.image_size; see the module docstring."""
    return preprocess_with_geometry(image, cfg)[0]


def preprocess_with_geometry(
    image: np.ndarray, cfg: PreprocessConfig
) -> tuple[np.ndarray, Geometry]:
    """`preprocess`, plus the Geometry that maps the output back onto the original image."""
    image = _check_image(image)
    check_config(cfg)
    geometry = plan_geometry(image.shape, cfg)
    (rh, rw), (ct, cl), s = geometry.resized_size, geometry.crop_offset, geometry.output_size

    shrinking = rh <= image.shape[0] and rw <= image.shape[1]
    if (rh, rw) != image.shape:
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (rw, rh), interpolation=interpolation)
    if cfg.resize == "crop":
        image = image[ct : ct + s, cl : cl + s]
    image = np.clip(image, 0.0, 1.0)

    if cfg.clahe:
        out = clahe(image, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    else:
        out = _to_uint8(image * 255)
    out = apply_filter(out, cfg.filter, cfg.filter_size)

    if cfg.resize == "pad":
        (pt, pl) = geometry.pad_offset
        out = cv2.copyMakeBorder(
            out, pt, s - rh - pt, pl, s - rw - pl, cv2.BORDER_CONSTANT, value=0
        )
    return np.ascontiguousarray(out), geometry


def plan_geometry(shape: tuple[int, int], cfg: PreprocessConfig) -> Geometry:
    """The Geometry `preprocess` will use for an image of this (H, W), without any pixels."""
    h, w = int(shape[0]), int(shape[1])
    s = cfg.image_size
    if cfg.resize == "stretch":
        return Geometry((h, w), (s, s), (0, 0), (0, 0), s)
    if cfg.resize == "pad":
        factor = s / max(h, w)
    else:  # crop
        factor = s / min(h, w)
    rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
    if cfg.resize == "pad":
        rh, rw = min(rh, s), min(rw, s)
        return Geometry((h, w), (rh, rw), (0, 0), ((s - rh) // 2, (s - rw) // 2), s)
    rh, rw = max(rh, s), max(rw, s)
    return Geometry((h, w), (rh, rw), ((rh - s) // 2, (rw - s) // 2), (0, 0), s)


def check_config(cfg: PreprocessConfig) -> None:
    """Combinations the field types cannot express: kernel sizes that must be odd."""
    if cfg.filter in ("median", "gaussian") and cfg.filter_size % 2 == 0:
        raise ConfigError(
            f"preprocess.filter_size must be odd for the {cfg.filter} filter, got {cfg.filter_size}"
        )


def clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation: float [0, 1] (H, W) -> uint8 (H, W).

    OpenCV's algorithm, step for step (tile layout, clip limit in units of the mean bin count,
    excess redistribution, bilinear interpolation between tile centres), with one difference:
    each tile's mapping is read at the pixel's *fractional* grey level (linear interpolation
    between the two neighbouring histogram bins), so float input keeps its precision.

    Why not cv2.createCLAHE on uint16 data: OpenCV's 16-bit CLAHE uses 65536 bins and floors the
    clip limit at one count per bin, which on a 224 px image (28 x 28 px tiles) makes the
    effect depend on how many distinct levels the image has. Measured on the shared data at
    clip 2, grid 8, 224 px: it raised the mean 16 x 16 local standard deviation of Kermany
    images (8-bit, ~250 levels) by only 10% (nearly a no-op) but of resampled NIH images
    (~10,000 levels) by 57-89% (close to full equalisation), so one config would have meant
    different contrast for different sources. 8-bit OpenCV CLAHE gives 37-65% on both; this
    function matches it (to one grey level on 8-bit input, see the tests) while keeping the
    sub-level precision of float input.
    """
    h, w = image.shape
    g = int(tile_grid)
    level = image.astype(np.float32) * np.float32(_HIST_BINS - 1)
    bins = np.rint(level).astype(np.uint8)

    # Tiles: as OpenCV, when either side is not a multiple of the grid, both sides are padded
    # (bottom/right, by reflection, for the histograms only) by `g - side % g`, which is a whole
    # extra tile on a side that was a multiple: OpenCV's quirk, kept so results match it.
    padded = bins
    if h % g or w % g:
        padded = cv2.copyMakeBorder(bins, 0, g - h % g, 0, g - w % g, cv2.BORDER_REFLECT_101)
    th, tw = padded.shape[0] // g, padded.shape[1] // g
    tiles = padded.reshape(g, th, g, tw).transpose(0, 2, 1, 3).reshape(g * g, th * tw)
    offsets = (np.arange(g * g, dtype=np.int64) * _HIST_BINS)[:, None]
    hist = np.bincount((tiles + offsets).ravel(), minlength=g * g * _HIST_BINS)
    hist = hist.reshape(g * g, _HIST_BINS)

    # Clip each bin at clip_limit x the mean bin count, spread the excess evenly (the remainder
    # one count each over evenly spaced bins), exactly as OpenCV does.
    area = th * tw
    limit = max(int(clip_limit * area / _HIST_BINS), 1)
    excess = np.maximum(hist - limit, 0).sum(axis=1)
    hist = np.minimum(hist, limit) + (excess // _HIST_BINS)[:, None]
    residual = excess % _HIST_BINS
    step = np.maximum(_HIST_BINS // np.maximum(residual, 1), 1)
    index = np.arange(_HIST_BINS)
    hist += ((index % step[:, None] == 0) & (index // step[:, None] < residual[:, None])).astype(
        hist.dtype
    )

    # Per-tile mapping (CDF scaled to 0..255), one extra entry so bin 255 can interpolate.
    lut = np.cumsum(hist, axis=1).astype(np.float32) * np.float32((_HIST_BINS - 1) / area)
    lut = np.concatenate([lut, lut[:, -1:]], axis=1).ravel()

    # Bilinear weights between the four nearest tile centres, OpenCV's convention.
    ty1, ty2, wy = _tile_weights(h, th, g)
    tx1, tx2, wx = _tile_weights(w, tw, g)
    low = np.minimum(np.floor(level), _HIST_BINS - 1)
    frac = level - low
    low = low.astype(np.int64)

    def mapped(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        base = ((ty[:, None] * g + tx[None, :]) * (_HIST_BINS + 1)) + low
        lo = lut[base]
        return lo + frac * (lut[base + 1] - lo)

    top = mapped(ty1, tx1) * (1 - wx) + mapped(ty1, tx2) * wx
    bottom = mapped(ty2, tx1) * (1 - wx) + mapped(ty2, tx2) * wx
    wy = wy[:, None]
    return _to_uint8(top * (1 - wy) + bottom * wy)


def _tile_weights(n: int, tile: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.arange(n, dtype=np.float32) * np.float32(1.0 / tile) - np.float32(0.5)
    first = np.floor(pos)
    weight = pos - first
    first = first.astype(np.int64)
    return np.maximum(first, 0), np.minimum(first + 1, g - 1), weight


def apply_filter(image: np.ndarray, name: str, size: int) -> np.ndarray:
    """The optional denoising / sharpening step, on uint8 (S, S); returns uint8."""
    if name == "none":
        return image
    if name == "median":  # removes salt-and-pepper noise, keeps edges; size must be odd
        return cv2.medianBlur(image, size)
    if name == "gaussian":  # kernel size; OpenCV derives sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8
        return cv2.GaussianBlur(image, (size, size), 0)
    if name == "bilateral":  # smooths flat regions, keeps steps larger than the colour sigma
        return cv2.bilateralFilter(image, size, _BILATERAL_SIGMA_COLOR, float(size))
    if name == "unsharp":
        # skimage.filters.unsharp_mask's formula (image + amount * (image - gaussian(sigma))),
        # written with cv2.GaussianBlur: ~10x faster on uint8, and no hidden dtype rescaling.
        # `size` is the Gaussian sigma in pixels.
        unit = image.astype(np.float32)
        blurred = cv2.GaussianBlur(unit, (0, 0), float(size))
        return _to_uint8(unit + _UNSHARP_AMOUNT * (unit - blurred))
    raise ConfigError(f"preprocess.filter: unknown filter {name!r}")


def heatmap_to_original(heatmap: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A model-space heatmap (k, k) -> float32 (H, W) aligned with the original image.

    k is usually S (Grad-CAM upsampled to the input), but any square size works (a 7 x 7 map
    covers the same S x S canvas). Undoes pad, crop and resize with one affine warp, using
    cv2.resize's pixel-centre convention; for "crop", original pixels outside the crop get 0.
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1] or heatmap.size == 0:
        raise ValueError(f"heatmap must be a square 2-D (S, S) array, got shape {heatmap.shape}")
    if not (np.issubdtype(heatmap.dtype, np.floating) or np.issubdtype(heatmap.dtype, np.integer)):
        raise ValueError(f"heatmap must be a float or integer array, got dtype {heatmap.dtype}")
    heat = heatmap.astype(np.float32)
    k, s = heat.shape[0], geometry.output_size
    (h, w), (sy, sx) = geometry.original_size, geometry.scale
    (ct, cl), (pt, pl) = geometry.crop_offset, geometry.pad_offset
    r = k / s  # heatmap pixels per model pixel

    def axis_map(scale: float, crop: int, pad: int) -> tuple[float, float]:
        # original index i -> resized (i + 0.5) * scale - 0.5 -> model (- crop + pad)
        # -> heatmap (m + 0.5) * r - 0.5; all affine: a * i + b.
        return scale * r, ((0.5 * scale - 0.5 - crop + pad) + 0.5) * r - 0.5

    ay, by = axis_map(sy, ct, pt)
    ax, bx = axis_map(sx, cl, pl)
    matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]], dtype=np.float64)
    out = cv2.warpAffine(
        heat,
        matrix,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if geometry.crop_offset != (0, 0):
        # Pixels whose centre maps outside the heatmap were never seen by the model.
        rows = np.abs(ay * np.arange(h) + by - (k - 1) / 2) <= k / 2
        cols = np.abs(ax * np.arange(w) + bx - (k - 1) / 2) <= k / 2
        out *= rows[:, None] & cols[None, :]
    return out


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) or (N, 1, S, S) -> float32 (N, 1, S, S) in [0, 1], on batch's device."""
    import torch

    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8:
        got = batch.dtype if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a torch.uint8 tensor of preprocessed images, got {got}")
    if batch.ndim == 3:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ValueError(f"batch must be (N, S, S) or (N, 1, S, S), got {tuple(batch.shape)}")
    return batch.to(torch.float32).div_(255.0)


def normalize(x: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """[0, 1] -> model scale: (x - mean) / std (the run's preprocess.mean / std)."""
    return (x - mean) / std


def model_input(batch_uint8: torch.Tensor, cfg: PreprocessConfig | None = None) -> torch.Tensor:
    """What the model eats, from `preprocess` output: normalize(to_unit(batch)) with cfg's
    mean / std (cxr's defaults when cfg is None)."""
    if cfg is None:
        return normalize(to_unit(batch_uint8))
    return normalize(to_unit(batch_uint8), cfg.mean, cfg.std)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (H, W) array, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be float in [0, 1] (see cxr.data.table), got dtype {image.dtype}"
        )
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError("image has NaN or infinite values; expected floats in [0, 1]")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
